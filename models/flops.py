"""Analytic FLOP count of Show-o2 from its config and the sequence layout.

Why analytic: the harness reports achieved FLOP/s (and model FLOP utilisation) for configs that cannot be run under
a counting mode cheaply (1.5B/7B on a GPU), and for planning (what a cache or a packing scheme saves) without running
anything. The count is tested against ``torch.utils.flop_counter.FlopCounterMode`` on the tiny model.

Conventions
-----------
* One multiply-accumulate = 2 FLOPs; only matmul-like work is counted (linear layers, patch convolutions, attention
  score and value products). Norms, activations, RoPE, softmax and the loss are O(L*H) and ignored, as
  ``FlopCounterMode`` does.
* Attention is counted **as executed**: a dense SDPA call with a boolean mask computes every (query, key) pair, so a
  row of ``q_len`` queries over ``kv_len`` keys costs ``2 * 2 * heads * head_dim * q_len * kv_len`` FLOPs whatever the
  mask (``useful_attention_fraction`` lets a caller report the causal/omni part separately).
* Training step = 3 x forward (backward = 2 x forward: gradient w.r.t. inputs and w.r.t. weights). This slightly
  over-counts layers whose input needs no gradient (the patch convolutions); the difference is < 1 % at any size.

The model structure follows docs (reference-architecture §1-§2): LLM (Qwen2, GQA, SwiGLU), SigLIP semantic layers
(26 of 27 for the official sizes), patch embeddings, fusion MLP, timestep embedder (+ projection to the LLM width),
flow head (``diff_proj``, adaLN blocks, final layer) and the LM head.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "ModelDims",
    "RowSpec",
    "VisualSpec",
    "Workload",
    "FlopCount",
    "forward_flops",
    "training_flops",
    "workload_from_batch",
    "count_flops_measured",
]


# ----------------------------------------------------------------------------------------------------------------
# Model sizes
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelDims:
    """Every size the FLOP count needs, read from a ``Showo2Config`` (or any object with the same fields)."""

    hidden: int                 # LLM width H
    llm_layers: int
    llm_heads: int
    llm_kv_heads: int
    llm_head_dim: int
    llm_intermediate: int
    vocab: int                  # LM-head rows (llm_vocab_size after the resize)
    sem_hidden: int             # SigLIP width D_s
    sem_layers: int             # semantic layers actually used (config layers - 1)
    sem_intermediate: int
    flow_hidden: int            # flow-head width D_f
    flow_layers: int
    flow_heads: int
    flow_kv_heads: int
    flow_head_dim: int
    flow_intermediate: int
    latent_channels: int        # C
    patch: int                  # p
    time_freq_dim: int = 256

    @property
    def has_diff_proj(self) -> bool:
        """``diff_proj`` / ``time_embed_proj`` exist only when the LLM and flow-head widths differ."""
        return self.hidden != self.flow_hidden

    @classmethod
    def from_config(cls, cfg: Any) -> ModelDims:
        """Accepts a ``models.config.Showo2Config`` (attribute access) or its ``to_dict()`` mapping."""
        get = (lambda k: cfg[k]) if isinstance(cfg, Mapping) else (lambda k: getattr(cfg, k))
        q, s, f = dict(get("qwen2")), dict(get("siglip")), dict(get("flow_head"))
        hidden = int(get("hidden_size"))
        heads = int(q["num_attention_heads"])
        return cls(
            hidden=hidden,
            llm_layers=int(q["num_hidden_layers"]),
            llm_heads=heads,
            llm_kv_heads=int(q.get("num_key_value_heads", heads)),
            llm_head_dim=int(q.get("head_dim") or hidden // heads),
            llm_intermediate=int(q["intermediate_size"]),
            vocab=int(get("llm_vocab_size")),
            sem_hidden=int(s["hidden_size"]),
            sem_layers=int(s["num_hidden_layers"]) - 1,  # Show-o2 drops SigLIP's last layer
            sem_intermediate=int(s["intermediate_size"]),
            flow_hidden=int(f["hidden_size"]),
            flow_layers=int(get("num_diffusion_layers")),
            flow_heads=int(f["num_attention_heads"]),
            flow_kv_heads=int(f.get("num_key_value_heads", f["num_attention_heads"])),
            flow_head_dim=int(f.get("head_dim") or int(f["hidden_size"]) // int(f["num_attention_heads"])),
            flow_intermediate=int(f["intermediate_size"]),
            latent_channels=int(get("image_latent_dim")),
            patch=int(get("patch_size")),
            time_freq_dim=int(f.get("timestep_frequency_dim", 256)),
        )

    # Per-token multiply-accumulates of the dense (non-attention) parts; handy for quick estimates and tests.
    def llm_layer_macs_per_token(self) -> int:
        h, qd, kvd = self.hidden, self.llm_heads * self.llm_head_dim, self.llm_kv_heads * self.llm_head_dim
        return h * qd + 2 * h * kvd + qd * h + 3 * h * self.llm_intermediate

    def flow_layer_macs_per_token(self) -> int:
        d, qd = self.flow_hidden, self.flow_heads * self.flow_head_dim
        kvd = self.flow_kv_heads * self.flow_head_dim
        return d * qd + 2 * d * kvd + qd * d + 3 * d * self.flow_intermediate

    def sem_layer_macs_per_token(self) -> int:
        ds = self.sem_hidden
        return 4 * ds * ds + 2 * ds * self.sem_intermediate


# ----------------------------------------------------------------------------------------------------------------
# Workload (what one forward computes)
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowSpec:
    """One sequence row of one forward.

    q_len: positions computed in this forward (the chunk after any cached prefix).
    kv_len: keys each query attends over (cached prefix + q_len); None = q_len.
    logits: positions whose LM-head logits are formed and trained (the loss path: supervised targets only).
    extra_logits: logits formed but outside the loss (``out.logits`` of a training call, decoding): forward only.
    flow: whether the flow head runs on this row (it then runs on all ``q_len`` positions).
    useful_attention_fraction: share of (query, key) pairs the mask allows; only used for the "useful" figure.
    """

    q_len: int
    kv_len: int | None = None
    logits: int = 0
    flow: bool = True
    useful_attention_fraction: float = 1.0
    extra_logits: int = 0

    @property
    def keys(self) -> int:
        return self.q_len if self.kv_len is None else self.kv_len


@dataclass(frozen=True)
class VisualSpec:
    """One visual item encoded by this forward: ``frames`` frames of ``tokens_per_frame`` tokens each.

    Frames go through the semantic layers independently (no temporal attention before the LLM).
    """

    tokens_per_frame: int
    frames: int = 1


@dataclass
class Workload:
    """Rows + visual items of one forward. ``time_items`` = number of t values embedded (default: one per item)."""

    rows: list[RowSpec]
    visuals: list[VisualSpec] = field(default_factory=list)
    time_items: int | None = None

    @property
    def num_time_items(self) -> int:
        return len(self.visuals) if self.time_items is None else self.time_items

    @property
    def tokens(self) -> int:
        """Positions computed by the LLM (rows x q_len summed): the "tokens" of tokens/s."""
        return sum(r.q_len for r in self.rows)

    @classmethod
    def uniform(cls, batch: int, q_len: int, *, kv_len: int | None = None, logits_per_row: int = 0,
                flow: bool = True, visual_tokens: int = 0, visuals_per_row: int = 1, frames: int = 1) -> Workload:
        """``batch`` identical rows (a padded batch) with ``visuals_per_row`` items of ``visual_tokens`` each."""
        rows = [RowSpec(q_len, kv_len, logits_per_row, flow) for _ in range(batch)]
        vis = [VisualSpec(visual_tokens, frames) for _ in range(batch * visuals_per_row)] if visual_tokens else []
        return cls(rows, vis)


@dataclass
class FlopCount:
    """FLOPs per component (forward unless ``training``); ``total`` sums them."""

    parts: dict[str, float]
    useful_attention: float = 0.0     # attention FLOPs on mask-allowed pairs only (forward units)
    training: bool = False
    forward_only: float = 0.0         # part of ``parts`` that has no backward (logits outside the loss)

    @property
    def total(self) -> float:
        return float(sum(self.parts.values()))

    @property
    def attention(self) -> float:
        return float(sum(v for k, v in self.parts.items() if k.endswith("attention")))

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "attention": self.attention, "useful_attention": self.useful_attention,
                "training": self.training, "forward_only": self.forward_only, "parts": dict(self.parts)}


def forward_flops(dims: ModelDims, work: Workload) -> FlopCount:
    """Forward FLOPs of one model call over ``work``."""
    d = dims
    parts: dict[str, float] = {k: 0.0 for k in (
        "patch_embed", "semantic_linear", "semantic_attention", "fusion", "time_embed",
        "llm_linear", "llm_attention", "lm_head",
        "flow_proj", "flow_linear", "flow_attention", "flow_adaln", "flow_final")}
    useful = 0.0
    p2c = d.patch * d.patch * d.latent_channels

    # --- visual encoder: both patch embeddings, semantic layers per frame, fusion MLP -------------------------
    for v in work.visuals:
        n = v.tokens_per_frame * v.frames
        parts["patch_embed"] += 2 * n * p2c * (d.sem_hidden + d.hidden)
        parts["semantic_linear"] += 2 * n * d.sem_layers * d.sem_layer_macs_per_token()
        # full bidirectional attention inside each frame: QK^T and PV, width = heads * head_dim = D_s
        parts["semantic_attention"] += 2 * 2 * d.sem_layers * v.frames * v.tokens_per_frame**2 * d.sem_hidden
        parts["fusion"] += 2 * n * ((d.sem_hidden + d.hidden) * d.hidden + d.hidden * d.hidden)

    # --- timestep embedding (per item): sinusoid -> MLP (-> projection to H for the time token) --------------
    ti = work.num_time_items
    if ti:
        macs = d.time_freq_dim * d.flow_hidden + d.flow_hidden * d.flow_hidden
        if d.has_diff_proj:
            macs += d.flow_hidden * d.hidden
        parts["time_embed"] += 2 * ti * macs

    any_flow = any(r.flow for r in work.rows)
    for r in work.rows:
        q, kv = r.q_len, r.keys
        # --- LLM ---------------------------------------------------------------------------------------------
        parts["llm_linear"] += 2 * q * d.llm_layers * d.llm_layer_macs_per_token()
        att = 2 * 2 * d.llm_layers * d.llm_heads * d.llm_head_dim * q * kv
        parts["llm_attention"] += att
        useful += att * r.useful_attention_fraction
        parts["lm_head"] += 2 * (r.logits + r.extra_logits) * d.hidden * d.vocab
        parts["lm_head_unused"] = parts.get("lm_head_unused", 0.0) + 2 * r.extra_logits * d.hidden * d.vocab
        # --- flow head ---------------------------------------------------------------------------------------
        if r.flow:
            if d.has_diff_proj:
                parts["flow_proj"] += 2 * q * (d.hidden * d.flow_hidden + d.flow_hidden * d.flow_hidden)
            parts["flow_linear"] += 2 * q * d.flow_layers * d.flow_layer_macs_per_token()
            att = 2 * 2 * d.flow_layers * d.flow_heads * d.flow_head_dim * q * kv
            parts["flow_attention"] += att
            useful += att * r.useful_attention_fraction
            parts["flow_final"] += 2 * q * d.flow_hidden * p2c
    if any_flow:
        # adaLN parameters are computed once per visual item and gathered per position (not per position)
        parts["flow_adaln"] += 2 * ti * d.flow_hidden * (6 * d.flow_layers + 2) * d.flow_hidden
    unused = parts.pop("lm_head_unused", 0.0)
    return FlopCount(parts, useful, training=False, forward_only=unused)


def training_flops(dims: ModelDims, work: Workload) -> FlopCount:
    """Forward + backward of one training step = 3 x forward (see module docstring), except logits formed outside
    the loss (``extra_logits``), which get no backward."""
    fwd = forward_flops(dims, work)
    parts = {k: 3.0 * v for k, v in fwd.parts.items()}
    parts["lm_head"] -= 2.0 * fwd.forward_only
    return FlopCount(parts, 3.0 * fwd.useful_attention, training=True, forward_only=fwd.forward_only)


# ----------------------------------------------------------------------------------------------------------------
# From a real batch
# ----------------------------------------------------------------------------------------------------------------


def _omni_fraction(modality_positions_row: torch.Tensor | None, length: int) -> float:
    """Share of (q, k) pairs the omni mask allows in one row: causal triangle + the upper halves of the blocks."""
    allowed = length * (length + 1) / 2
    if modality_positions_row is not None:
        for off, ln in modality_positions_row.tolist():
            if ln > 0:
                ln = min(ln, length - off)
                allowed += ln * (ln - 1) / 2
    return allowed / float(length * length)


def workload_from_batch(
    input_ids: torch.Tensor,
    *,
    modality_positions: torch.Tensor | None = None,
    image_latents: torch.Tensor | Sequence[int] | None = None,
    text_labels: torch.Tensor | None = None,
    patch: int = 2,
    compute_flow: bool = True,
    compute_logits: bool = True,
    logits_per_row: int | None = None,
    image_masks: torch.Tensor | None = None,
) -> Workload:
    """The workload of ``Showo2Model.forward`` on a training/inference batch, as the model computes it.

    * LLM over every position of every row (the batch is rectangular); flow head over every position of the rows
      that run it: all rows, except in a training call (``image_masks`` = the flow-loss mask passed with
      ``image_labels``), where rows without flow-loss positions skip it;
    * LM head: with ``text_labels`` the supervised next-token targets (the model's loss path forms logits only
      there), plus, when ``compute_logits``, ``logits_per_row`` positions per row (default: all) for ``out.logits``;
    * one visual item per latent (padding dummies included; they are encoded too).
    """
    b, length = int(input_ids.shape[0]), int(input_ids.shape[1])
    per_row = [0] * b
    if text_labels is not None:
        per_row = (text_labels[:, 1:] != -100).sum(dim=1).tolist()
    extra = (length if logits_per_row is None else logits_per_row) if compute_logits else 0
    flow_rows = [compute_flow] * b
    if compute_flow and image_masks is not None and modality_positions is not None:
        from models.layout import build_layout

        need = (build_layout(modality_positions, length).visual_token & image_masks.bool()).any(dim=1)
        if not bool(need.all()):
            flow_rows = need.tolist()
    rows = []
    for i in range(b):
        mp = modality_positions[i] if modality_positions is not None else None
        rows.append(RowSpec(length, None, int(per_row[i]), flow_rows[i], _omni_fraction(mp, length), extra))
    visuals: list[VisualSpec] = []
    if image_latents is not None:
        shape = tuple(image_latents.shape) if isinstance(image_latents, torch.Tensor) else tuple(image_latents)
        frames = shape[2] if len(shape) == 5 else 1
        per_frame = (shape[-2] // patch) * (shape[-1] // patch)
        visuals = [VisualSpec(per_frame, frames) for _ in range(shape[0])]
    return Workload(rows, visuals)


# ----------------------------------------------------------------------------------------------------------------
# Measured count (for tests and spot checks)
# ----------------------------------------------------------------------------------------------------------------


def _cpu_flash_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """``FlopCounterMode`` has no formula for the CPU flash-attention kernel (torch <= 2.13); same math as GPU's."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                                  **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def count_flops_measured(fn: Callable[[], Any]) -> tuple[float, dict[str, float]]:
    """Run ``fn`` under ``FlopCounterMode`` (with the CPU SDPA kernels registered) -> (total, per-op counts)."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    mapping: dict[Any, Any] = {}
    for name, fn_ in (("_scaled_dot_product_flash_attention_for_cpu", _cpu_flash_sdpa_flop),
                      ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_flash_sdpa_backward_flop)):
        op = getattr(aten, name, None)
        if op is not None:
            mapping[op] = fn_
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    per_op = {str(k): float(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return float(counter.get_total_flops()), per_op
