"""Show-o2: Qwen2 backbone + dual-path visual embedding + flow head (spec §1-§5).

Module and parameter names mirror the official `Showo2Qwen2_5`, so official state dicts load 1:1.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache, Qwen2Config, Qwen2ForCausalLM

from .attention import flex_block_mask, omni_attention_mask
from .config import Showo2Config
from .flow_head import FinalLayer, ModulatedAttentionBlock, TimestepEmbedder
from .layout import VisualLayout, build_layout, check_block_lengths, gather_slots
from .losses import flow_loss, ntp_loss, tokens_to_velocity, velocity_to_tokens
from .norms import RMSNorm
from .rope import RotaryEmbedding, bf16_round, default_inv_freq, flow_head_inv_freq
from .semantic import PatchEmbed, PositionTable, build_semantic_encoder

_QWEN_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta",
              "rope_scaling", "tie_word_embeddings", "use_sliding_window", "sliding_window", "max_window_layers",
              "attention_dropout", "initializer_range")


def build_qwen2_config(cfg: Showo2Config) -> Qwen2Config:
    """Qwen2 config with `llm_vocab_size` rows (the official resize) and sdpa attention."""
    kw = {k: v for k, v in cfg.qwen2.items() if k in _QWEN_KEYS}
    kw["vocab_size"] = cfg.llm_vocab_size
    kw["use_sliding_window"] = False
    qc = Qwen2Config(**kw)
    qc._attn_implementation = cfg.attn_implementation
    return qc


@dataclass
class Showo2Output:
    """logits (B, Lk, V) | None; v_tokens (B, L, p*p*C) | None; losses are 0-d tensors or None."""

    logits: torch.Tensor | None = None
    v_tokens: torch.Tensor | None = None
    loss_ntp: torch.Tensor | None = None
    loss_flow: torch.Tensor | None = None
    past_key_values: Any = None
    flow_past_key_values: Any = None
    hidden: torch.Tensor | None = None


class Showo2Model(nn.Module, PyTorchModelHubMixin, library_name="showo2-reimpl"):
    """Unified multimodal model. See docs/interfaces.md for the call contract."""

    def __init__(self, config: Showo2Config | dict) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = Showo2Config.from_dict(config)
        self.config = config
        c = config
        h, ds, df, p, ch = c.hidden_size, c.clip_latent_dim, c.flow_hidden_size, c.patch_size, c.image_latent_dim
        # registration order = official state-dict order
        self.showo = Qwen2ForCausalLM(build_qwen2_config(c))
        self.image_embedder_und = PatchEmbed(p, ch, ds)
        self.image_embedder_gen = PatchEmbed(p, ch, h)
        self.position_embedding = nn.Embedding(c.num_positions, ds)
        self.und_trans = build_semantic_encoder(c.siglip)
        self.fusion_proj = nn.Sequential(RMSNorm(ds + h, eps=1e-6), nn.Linear(ds + h, h), nn.GELU(), nn.Linear(h, h))
        self.time_embed = TimestepEmbedder(df, c.flow_head.get("timestep_frequency_dim", 256),
                                           scale=c.timestep_scale)
        if h != df:
            self.diff_proj = nn.Sequential(nn.Linear(h, df), nn.GELU(), nn.Linear(df, df))
            self.time_embed_proj = nn.Linear(df, h)
        else:
            self.diff_proj = None
            self.time_embed_proj = None
        self.diffusion_head_a = nn.ModuleList(ModulatedAttentionBlock(c.flow_head, k)
                                              for k in range(c.num_diffusion_layers))
        self.diffusion_head_b = FinalLayer(df, c.patch_dim, eps=c.flow_head.get("final_norm_eps", 1e-6))
        # fp32 frequency tables kept outside the module tree so dtype casts never touch them
        qh = c.qwen2.get("head_dim") or c.hidden_size // c.qwen2["num_attention_heads"]
        with torch.device("cpu"):   # real values even when the model is built on the meta device
            self._rope_tables = {"llm": default_inv_freq(qh, c.qwen2["rope_theta"]),
                                 "flow": flow_head_inv_freq(c.flow_head)}
        self.flow_rotary = RotaryEmbedding(self._rope_tables["flow"].clone())
        self._pos_table = PositionTable()
        self.attention_backend = "sdpa"
        self._init_weights()
        self._refresh_rope()
        if c.gradient_checkpointing:
            self.gradient_checkpointing_enable()

    # ------------------------------------------------------------------------------------------------
    # construction helpers

    def _init_weights(self) -> None:
        """Reference init for the Show-o2-specific parts (spec §1.2); backbones keep their own init."""
        if any(p.is_meta for p in self.parameters()):
            return
        for pe in (self.image_embedder_und, self.image_embedder_gen):
            w = pe.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.zeros_(pe.proj.bias)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        for blk in self.diffusion_head_a:
            nn.init.zeros_(blk.adaLN_modulation[1].weight)
            nn.init.zeros_(blk.adaLN_modulation[1].bias)
        for lin in (self.diffusion_head_b.adaLN_modulation[1], self.diffusion_head_b.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def _refresh_rope(self) -> None:
        """Keep RoPE tables fp32; with `rope_bf16_parity` and a bf16 model use bf16-rounded ones (spec Q1)."""
        emb = self.showo.model.embed_tokens.weight
        parity = self.config.rope_bf16_parity and emb.dtype == torch.bfloat16
        rot = self.showo.model.rotary_emb
        for module, key in ((rot, "llm"), (self.flow_rotary, "flow")):
            if module.inv_freq.is_meta:
                continue
            table = self._rope_tables[key]
            table = bf16_round(table) if parity else table
            module.inv_freq = table.to(module.inv_freq.device)
            if hasattr(module, "original_inv_freq"):
                module.original_inv_freq = table.to(module.inv_freq.device)

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self._refresh_rope()
        return self

    def set_attention_backend(self, backend: str) -> None:
        """"sdpa" (default; dense bool masks, training) or "flex" (inference only: the default mask becomes a
        flex-attention BlockMask for the LLM and the flow head; SigLIP keeps sdpa). Custom `attention_mask`
        arguments must then be BlockMasks too (see `attention.flex_block_mask`)."""
        if backend not in ("sdpa", "flex"):
            raise ValueError(f"unknown attention backend {backend!r}")
        self.showo.set_attn_implementation("flex_attention" if backend == "flex" else "sdpa")
        self.attention_backend = backend

    def gradient_checkpointing_enable(self) -> None:
        """Recompute LLM layers, SigLIP layers and flow-head blocks in backward."""
        self.showo.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        for layer in self.und_trans.layers:   # transformers' GradientCheckpointingLayer protocol
            layer._gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=False)
            layer.gradient_checkpointing = True
        self.config.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.showo.gradient_checkpointing_disable()
        for layer in self.und_trans.layers:
            layer.gradient_checkpointing = False
        self.config.gradient_checkpointing = False

    def tie_weights(self) -> None:
        """Re-tie lm_head to embed_tokens for tied configs (after assign-style loading)."""
        if self.showo.config.tie_word_embeddings:
            self.showo.lm_head.weight = self.showo.model.embed_tokens.weight

    @property
    def dtype(self) -> torch.dtype:
        return self.showo.model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.showo.model.embed_tokens.weight.device

    # ------------------------------------------------------------------------------------------------
    # building blocks

    def encode_visual(self, latents: torch.Tensor, pool_to: tuple[int, int] | None = None) -> torch.Tensor:
        """Fused visual tokens. (N, C, h, w) -> (N, n, H); (N, C, T, h, w) -> (N, T*n, H), frame-major.

        pool_to=(ph, pw): bilinearly resize every frame's token grid (video understanding, spec Q12:
        27x27 -> 14x14), giving (N, T*ph*pw, H).
        """
        x = latents.to(self.image_embedder_gen.proj.weight.dtype)
        n_items = x.shape[0]
        if x.dim() == 5:   # frames are encoded independently (no temporal mixing before the LLM)
            x = x.permute(0, 2, 1, 3, 4).reshape(-1, *x.shape[1:2], *x.shape[3:])
        p = self.config.patch_size
        gh, gw = x.shape[-2] // p, x.shape[-1] // p
        und = self.image_embedder_und(x) + self._pos_table(self.position_embedding.weight, gh, gw)
        und = self.und_trans(inputs_embeds=und).last_hidden_state
        gen = self.image_embedder_gen(x)
        fused = self.fusion_proj(torch.cat([und, gen], dim=-1))
        if pool_to is not None and tuple(pool_to) != (gh, gw):
            grid = fused.transpose(1, 2).reshape(fused.shape[0], -1, gh, gw)
            grid = F.interpolate(grid, size=tuple(pool_to), mode="bilinear", align_corners=False)
            fused = grid.flatten(2).transpose(1, 2)
        return fused.reshape(n_items, -1, fused.shape[-1])

    def _encode_needed(self, latents: torch.Tensor, layout: VisualLayout,
                       pool_to: tuple[int, int] | None) -> torch.Tensor:
        """`encode_visual` for the items whose visual tokens land in this chunk only (padding-slot dummies and
        blocks outside the chunk are skipped); the rest of the (N, n, H) table stays zero (never read)."""
        sel = (layout.emb_item >= 0) & (layout.emb_local > 0)
        need = torch.zeros(latents.shape[0], dtype=torch.bool, device=latents.device)
        need[layout.emb_item[sel]] = True
        if bool(need.all()):
            return self.encode_visual(latents, pool_to)
        idx = need.nonzero().squeeze(1)
        if idx.numel() == 0:
            return latents.new_zeros(latents.shape[0], 0, self.config.hidden_size, dtype=self.dtype)
        part = self.encode_visual(latents[idx], pool_to)
        return part.new_zeros(latents.shape[0], *part.shape[1:]).index_copy(0, idx, part)

    def embed_time(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t (N,) -> (t_emb (N, D_f) for adaLN, time token (N, H) for the LLM input)."""
        t_emb = self.time_embed(t.reshape(-1))
        tok = self.time_embed_proj(t_emb) if self.time_embed_proj is not None else t_emb
        return t_emb, tok

    def scatter_visual(self, embeds: torch.Tensor, layout: VisualLayout, time_tokens: torch.Tensor,
                       visual: torch.Tensor, validate: bool = True) -> torch.Tensor:
        """Write time tokens and visual tokens into their block positions. embeds (B, L, H) -> (B, L, H)."""
        table = torch.cat([time_tokens[:, None].to(embeds.dtype), visual.to(embeds.dtype)], dim=1)  # (N, 1+n, H)
        placed = gather_slots(table, layout.emb_item, layout.emb_local, validate)
        return torch.where((layout.emb_item >= 0)[..., None], placed, embeds)

    def run_flow_head(self, hidden: torch.Tensor, t_emb: torch.Tensor, mod_index: torch.Tensor,
                      position_ids: torch.Tensor, mask: torch.Tensor, cache=None) -> torch.Tensor:
        """hidden (B, L, H) post-norm LLM states -> velocity tokens (B, L, p*p*C)."""
        y = self.diff_proj(hidden) if self.diff_proj is not None else hidden
        cos, sin = self.flow_rotary(y, position_ids)       # shared by every block
        use_ckpt = self.config.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for blk in self.diffusion_head_a:
            if use_ckpt and cache is None:
                y = checkpoint(blk, y, t_emb, mod_index, cos, sin, mask, None, use_reentrant=False)
            else:
                y = blk(y, t_emb, mod_index, cos, sin, mask, cache)
        return self.diffusion_head_b(y, t_emb, mod_index)

    def lm_logits(self, hidden: torch.Tensor, logits_to_keep: int | torch.Tensor | None = None) -> torch.Tensor:
        """Logits at all positions (None), the last k positions (int) or given positions ((B, P) long)."""
        if logits_to_keep is None:
            h = hidden
        elif isinstance(logits_to_keep, int):
            h = hidden[:, -logits_to_keep:]
        else:
            idx = logits_to_keep.to(hidden.device)
            h = hidden.gather(1, idx[..., None].expand(*idx.shape, hidden.shape[-1]))
        return self.showo.lm_head(h)

    # ------------------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        image_latents: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
        modality_positions: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        text_labels: torch.Tensor | None = None,
        image_labels: torch.Tensor | None = None,
        image_masks: torch.Tensor | None = None,
        past_key_values: Any = None,
        flow_past_key_values: Any = None,
        use_cache: bool = False,
        position_offset: int | None = None,
        compute_logits: bool = True,
        compute_flow: bool = True,
        logits_to_keep: int | torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        update_cache: bool = True,
        visual_pool: tuple[int, int] | None = None,
        position_ids: torch.Tensor | None = None,
        visual_tokens: torch.Tensor | None = None,
    ) -> Showo2Output:
        """One pass over a sequence (or a chunk of it after cached positions).

        input_ids (B, L) or inputs_embeds (B, L, H); image_latents (N, C, [T,] h, w) with N = B*M items ordered
        row-major over slots, t (N,); modality_positions (B, M, 2) absolute (offset, length incl. time slot).
        attention_mask: bool (B, 1, L, L_kv), default = omni mask of the chunk.
        position_offset: absolute position of the chunk's first token; default = cached length (0 without cache).
        use_cache: return/extend transformers DynamicCaches for the LLM and the flow head.
        update_cache=False: the caches are cropped back after the pass (read-only prefix caching).
        logits_to_keep: None = all positions, int k = last k, (B, P) long = those positions.
        text_labels (B, L) unshifted -> loss_ntp (0 if nothing supervised); image_labels: velocity targets in
        latent layout (like image_latents) -> loss_flow over `image_masks` (B, L) block positions, time slots
        excluded (all visual-token positions when image_masks is None).
        visual_pool: per-frame token-grid pooling for understanding inputs (see `encode_visual`).
        position_ids: (B, L) RoPE positions overriding `position_offset + arange(L)` (e.g. left-padded batches:
        give real tokens their unpadded positions and mask the pad keys, see `attention.mask_key_padding`).
        visual_tokens: (N, n*T, H) precomputed `encode_visual(image_latents)`, used instead of encoding latents
        (CFG halves share one encoding).
        """
        if inputs_embeds is None:
            inputs_embeds = self.showo.model.embed_tokens(input_ids)
        bsz, q_len = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        flow_past_len = flow_past_key_values.get_seq_length() if flow_past_key_values is not None else 0
        if position_offset is None:
            position_offset = past_len
        kv_len = past_len + q_len

        layout = None
        host_positions = modality_positions   # validated on the host (no device sync) when they live there
        if modality_positions is not None:
            modality_positions = modality_positions.to(device)
            layout = build_layout(modality_positions, q_len, position_offset, self.config.bos_overwrite_quirk)

        df = self.config.flow_hidden_size
        t_emb = inputs_embeds.new_zeros(0, df)
        if image_latents is not None or visual_tokens is not None:
            if t is None or layout is None:
                raise ValueError("image_latents / visual_tokens need t and modality_positions")
            t_emb, time_tok = self.embed_time(t.to(device))
            if visual_tokens is not None:   # precomputed `encode_visual` output (e.g. shared by CFG halves)
                visual = visual_tokens.to(device)
            else:
                visual = self._encode_needed(image_latents.to(device), layout, visual_pool)
            # an empty table means no visual token of this chunk needs one (see `_encode_needed`)
            checked = visual.shape[1] == 0 or check_block_lengths(host_positions, visual.shape[1])
            inputs_embeds = self.scatter_visual(inputs_embeds, layout, time_tok, visual, validate=not checked)

        mask = attention_mask
        if mask is None and self.attention_backend == "flex":
            if torch.is_grad_enabled() and self.training:
                raise RuntimeError("the flex attention backend is for inference; use sdpa for training")
            mp = modality_positions if modality_positions is not None else \
                torch.zeros(bsz, 0, 2, dtype=torch.long, device=device)
            mask = flex_block_mask(mp, q_len, kv_len, position_offset, device)
        elif mask is None:
            mask = omni_attention_mask(modality_positions, q_len, kv_len, position_offset, device,
                                       batch_size=bsz).expand(bsz, 1, q_len, kv_len)
        if position_ids is None:
            position_ids = torch.arange(position_offset, position_offset + q_len, device=device)[None]
        else:
            position_ids = position_ids.to(device)

        llm_out = self.showo.model(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=position_ids,
                                   past_key_values=past_key_values, use_cache=use_cache or past_key_values is not None)
        hidden = llm_out.last_hidden_state
        out = Showo2Output(hidden=hidden, past_key_values=llm_out.past_key_values)

        if compute_logits:
            out.logits = self.lm_logits(hidden, logits_to_keep)
        if text_labels is not None:
            out.loss_ntp = self._ntp_loss(hidden, text_labels.to(device))

        if compute_flow:
            if use_cache and flow_past_key_values is None:
                flow_past_key_values = DynamicCache()
            if flow_past_key_values is not None and flow_past_len != past_len:
                raise ValueError(f"flow cache length {flow_past_len} != LLM cache length {past_len}")
            mod_index = layout.mod_index if layout is not None else \
                torch.zeros(bsz, q_len, dtype=torch.long, device=device)
            rows = None
            if image_labels is not None and flow_past_key_values is None:
                # training: rows without flow-loss positions (captioning / understanding) need no flow head
                need = self._flow_selection(layout, image_masks).any(dim=1)
                rows = None if bool(need.all()) else need.nonzero().squeeze(1)
            if rows is None:
                out.v_tokens = self.run_flow_head(hidden, t_emb, mod_index, position_ids, mask,
                                                  flow_past_key_values)
            else:
                pos = position_ids[rows] if position_ids.shape[0] == bsz and bsz > 1 else position_ids
                part = self.run_flow_head(hidden[rows], t_emb, mod_index[rows], pos, mask[rows], None)
                out.v_tokens = part.new_zeros(bsz, *part.shape[1:]).index_copy(0, rows, part)
            out.flow_past_key_values = flow_past_key_values
            if image_labels is not None:
                out.loss_flow = self._flow_loss(out.v_tokens, image_labels.to(device), layout, image_masks,
                                                host_positions)

        if not update_cache:   # read-only use: drop what this chunk appended
            for cache, old in ((past_key_values, past_len), (flow_past_key_values, flow_past_len)):
                if cache is not None and cache.get_seq_length() > old:
                    cache.crop(old - cache.get_seq_length())
        return out

    def _ntp_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Shifted CE computed only on supervised positions (logits for the rest are never formed)."""
        tgt = labels[:, 1:]
        sel = tgt != -100
        logits = self.showo.lm_head(hidden[:, :-1][sel])
        return ntp_loss(logits, tgt[sel], shift=False)

    def _flow_loss(self, v_tokens: torch.Tensor, image_labels: torch.Tensor, layout: VisualLayout | None,
                   image_masks: torch.Tensor | None, host_positions: torch.Tensor | None = None) -> torch.Tensor:
        if layout is None:
            raise ValueError("image_labels need modality_positions")
        tok = velocity_to_tokens(image_labels, self.config.patch_size).to(v_tokens.dtype)     # (N, n, D)
        table = torch.cat([tok.new_zeros(tok.shape[0], 1, tok.shape[-1]), tok], dim=1)      # time slot: no label
        # training batches carry CPU positions: check them there, not with a device sync every step
        checked = host_positions is not None and check_block_lengths(host_positions, tok.shape[1])
        labels = gather_slots(table, layout.item, layout.local, validate=not checked)
        return flow_loss(v_tokens, labels, self._flow_selection(layout, image_masks))

    @staticmethod
    def _flow_selection(layout: VisualLayout | None, image_masks: torch.Tensor | None) -> torch.Tensor:
        """(B, L) bool: positions that carry flow loss (visual tokens of blocks, time slots excluded)."""
        if layout is None:
            raise ValueError("image_labels need modality_positions")
        sel = layout.visual_token
        if image_masks is not None:
            sel = sel & image_masks.to(sel.device).bool()
        return sel

    # ------------------------------------------------------------------------------------------------

    def extract_velocity(self, v_tokens: torch.Tensor, modality_positions: torch.Tensor,
                         latent_shape: tuple[int, ...] | torch.Size, first_frame_as_cond: bool = False,
                         position_offset: int = 0) -> torch.Tensor:
        """Velocity per non-empty slot, row-major over (row, slot) (no early stop at padding slots).

        v_tokens (B, L, p*p*C) covering positions position_offset.., latent_shape = one item's shape
        (C, h, w) or (C, T, h, w). -> (K, *latent_shape). Raw-reshape un-patchify (spec §4.6).
        `first_frame_as_cond`: zero the velocity of latent frame 0 (image-to-video).
        """
        shape = tuple(int(s) for s in latent_shape)
        p = self.config.patch_size
        n_tok = 1
        for s in shape[1:]:
            n_tok *= s
        n_tok //= p * p
        mp = modality_positions.to(v_tokens.device)
        rows, slots = torch.nonzero(mp[..., 1] > 0, as_tuple=True)
        start = mp[rows, slots, 0] + 1 - position_offset
        pos = start[:, None] + torch.arange(n_tok, device=v_tokens.device)[None]
        tokens = v_tokens[rows[:, None], pos]                                # (K, n_tok, D)
        vel = tokens_to_velocity(tokens, shape, p)
        if first_frame_as_cond and len(shape) == 4:
            vel = torch.cat([torch.zeros_like(vel[:, :, :1]), vel[:, :, 1:]], dim=2)
        return vel

    @classmethod
    def from_official(cls, path_or_hub_id: str, **kwargs) -> Showo2Model:
        """Load a released Show-o2 checkpoint (folder or Hub id); see `checkpoints.load_official_checkpoint`."""
        from .checkpoints import load_official_checkpoint
        return load_official_checkpoint(path_or_hub_id, **kwargs)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())
