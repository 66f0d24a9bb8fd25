"""Image and video generation (text-to-image, text-to-video, image-to-video) with prefix caching.

The rows to denoise come from the sequence builders of ``datasets/sequence.py`` (this module never
lays out tokens itself). Each row is a :class:`VisualRow`: its full id sequence, its visual blocks,
and the clean latents of any *context* blocks before the block being generated (mixed-modality
history). The **target block is the last block** of the row.

Two equivalent evaluation paths per denoising step:

* ``cached=True`` (default). Everything before the target block (text, ``<|vision_start|>`` or
  ``<|vid_start|>``, context images) does not depend on x or t: the mask is causal there and adaLN
  only modulates block positions. So the prefix is pushed once through the LLM **and** the flow head
  (KV caches of both), and every step runs only the N block positions (time slot + visual tokens)
  against the cached keys/values. Tokens after the block (``<|vision_end|>``, ``<|im_end|>``, pads)
  are dropped: under the causal mask they cannot influence the block (quirk Q22). Cond and uncond
  rows (CFG) share one cache batch; prompts of different lengths are left-padded
  (``generation.runtime``).
* ``cached=False``: the official way, the full right-padded sequence through the whole model at
  every step. Kept as the reference; tests check cached == uncached.

Classifier-free guidance: cond rows then uncond rows in one forward (official batch order),
``v = v_u + g (v_c - v_u)`` in the model dtype (Q8). ``guidance_scale == 0`` runs the cond rows
only, and all B results are kept (official bug Q11 fixed).

Image-to-video: ``first_frame`` (B, C, h, w) is the clean latent of the conditioning image; it
replaces latent frame 0 of the state and its velocity is zeroed (``first_frame_as_cond``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from flow.samplers import cfg_combine, sample_ode
from flow.schedule import inference_time_grid
from generation.runtime import (
    chunk_mask,
    crop_cache,
    left_pad,
    model_device,
    model_dtype,
    model_patch_size,
    prefix_mask,
)

__all__ = ["VisualRow", "generate_visual", "VisualDenoiser"]


@dataclass
class VisualRow:
    """One sequence holding the visual block to generate (its last block).

    input_ids: (L,) long, full row as built by ``datasets.sequence`` (trailing tokens allowed).
    modality_positions: (M, 2) long (offset, length incl. time slot); the last real slot is the target.
    context_latents: clean latents of the first M-1 blocks, each (C, [T,] h, w).
    context_t: t of each context block (default 1.0 = clean, the training convention).
    """

    input_ids: Tensor
    modality_positions: Tensor
    context_latents: list[Tensor] = field(default_factory=list)
    context_t: list[float] | None = None

    def __post_init__(self) -> None:
        self.modality_positions = self.modality_positions.reshape(-1, 2).long()
        real = self.modality_positions[:, 1] > 0
        self.modality_positions = self.modality_positions[real]
        if self.modality_positions.shape[0] == 0:
            raise ValueError("a VisualRow needs at least one visual block (the one to generate)")
        if len(self.context_latents) != self.modality_positions.shape[0] - 1:
            raise ValueError(f"row has {self.modality_positions.shape[0]} blocks but {len(self.context_latents)} "
                             "context latents (need one per block before the target)")
        if self.context_t is None:
            self.context_t = [1.0] * len(self.context_latents)

    @property
    def target(self) -> tuple[int, int]:
        off, ln = self.modality_positions[-1].tolist()
        return int(off), int(ln)

    def prefix(self) -> _Prefix:
        """Everything before the target block (what gets cached); blocks = context blocks only."""
        off, _ = self.target
        return _Prefix(self.input_ids[:off], self.modality_positions[:-1], self.context_latents,
                       list(self.context_t or []))


@dataclass
class _Prefix:
    input_ids: Tensor
    modality_positions: Tensor
    context_latents: list[Tensor]
    context_t: list[float]


def _velocity_from_tokens(v_tokens: Tensor, latent_shape: Sequence[int], patch: int) -> Tensor:
    """(R, n, p*p*C) head outputs of the visual tokens (time slot removed) -> (R, C, [T,] h, w)."""
    from models.losses import tokens_to_velocity

    return tokens_to_velocity(v_tokens, tuple(latent_shape), patch)


def _stack_items(rows_latents: list[list[Tensor]], rows_t: list[list[float]], M: int,
                 dummy: Tensor) -> tuple[Tensor, Tensor]:
    """Row-major visual items (i*M + j) with dummies for padding slots -> (R*M, ...), (R*M,)."""
    items: list[Tensor] = []
    ts: list[float] = []
    for lat, tt in zip(rows_latents, rows_t):
        for j in range(M):
            if j < len(lat):
                items.append(lat[j])
                ts.append(float(tt[j]))
            else:
                items.append(dummy)
                ts.append(1.0)
    return torch.stack(items), torch.tensor(ts, dtype=torch.float32)


class VisualDenoiser:
    """Velocity function over a batch of :class:`VisualRow` (cond rows, then uncond rows).

    ``__call__(x, t)`` takes the state x (B, C, [T,] h, w) float32 and a 0-d t, and returns the
    (guided) velocity (B, ...) in the model dtype. The prefix cache is built lazily on first call.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cond: Sequence[VisualRow],
        uncond: Sequence[VisualRow] | None,
        latent_shape: Sequence[int],
        *,
        guidance_scale: float,
        pad_id: int,
        cached: bool = True,
        first_frame: Tensor | None = None,
    ) -> None:
        self.model = model
        self.cond = list(cond)
        self.uncond = list(uncond) if (uncond is not None and guidance_scale != 0) else []
        if self.uncond and len(self.uncond) != len(self.cond):
            raise ValueError(f"{len(self.cond)} cond rows but {len(self.uncond)} uncond rows")
        self.rows = self.cond + self.uncond
        self.B = len(self.cond)
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.g = float(guidance_scale)
        self.pad_id = int(pad_id)
        self.cached = cached
        self.first_frame = first_frame
        self.device = model_device(model)
        self.dtype = model_dtype(model)
        self.patch = model_patch_size(model)
        lens = {r.target[1] for r in self.rows}
        if len(lens) != 1:
            raise ValueError(f"target blocks of different lengths in one batch: {sorted(lens)}")
        self.N = lens.pop()
        self._prefix_len: int | None = None
        self._cache = None
        self._flow_cache = None
        self._key_valid: Tensor | None = None
        self._block_pos: Tensor | None = None
        self.nfe = 0

    # ------------------------------------------------------------------ cached path
    def _prefill(self) -> None:
        prefixes = [r.prefix() for r in self.rows]
        batch = left_pad([p.input_ids for p in prefixes], self.pad_id,
                         modality_positions=[p.modality_positions for p in prefixes], device=self.device)
        mask = prefix_mask(batch)
        has_ctx = any(len(p.context_latents) for p in prefixes)
        kwargs: dict = {}
        if has_ctx:
            M = batch.modality_positions.shape[1]
            dummy = torch.zeros_like(next(p.context_latents[0] for p in prefixes if p.context_latents)).float()
            lat, ts = _stack_items([p.context_latents for p in prefixes], [p.context_t for p in prefixes], M, dummy)
            kwargs = dict(image_latents=lat.to(self.device), t=ts.to(self.device),
                          modality_positions=batch.modality_positions)
        out = self.model(
            batch.input_ids, attention_mask=mask, use_cache=True, compute_logits=False, compute_flow=True,
            position_ids=batch.position_ids, **kwargs,
        )
        self._cache, self._flow_cache = out.past_key_values, out.flow_past_key_values
        self._prefix_len = batch.length
        self._key_valid = batch.key_valid
        self._block_pos = batch.chunk_position_ids(0, self.N)

    def _forward_cached(self, x_rows: Tensor, t: Tensor) -> Tensor:
        if self._cache is None:
            self._prefill()
        P, N, R = self._prefix_len, self.N, len(self.rows)
        ids = torch.stack([r.input_ids[r.target[0]: r.target[0] + N] for r in self.rows]).to(self.device)
        mp = torch.tensor([[[P, N]]] * R, dtype=torch.long, device=self.device)  # absolute positions
        mask = chunk_mask(self._key_valid, N, bidirectional=True)
        # CFG rows repeat the same latents: run the visual encoder (26 SigLIP layers at full size) once
        vis = self.model.encode_visual(x_rows[: self.B])
        if self.uncond:
            vis = torch.cat([vis, vis])
        out = self.model(
            ids, visual_tokens=vis, t=t.expand(R).to(self.device), modality_positions=mp, attention_mask=mask,
            past_key_values=self._cache, flow_past_key_values=self._flow_cache, use_cache=True,
            position_offset=P, position_ids=self._block_pos, compute_logits=False, compute_flow=True,
        )
        # the step appended N positions to both caches: drop them so the next step sees the prefix only
        self._cache = crop_cache(self._cache, P)
        self._flow_cache = crop_cache(self._flow_cache, P)
        return _velocity_from_tokens(out.v_tokens[:, 1:N], self.latent_shape, self.patch)

    # ------------------------------------------------------------------ uncached (reference) path
    def _forward_full(self, x_rows: Tensor, t: Tensor) -> Tensor:
        R = len(self.rows)
        L = max(int(r.input_ids.numel()) for r in self.rows)
        ids = torch.full((R, L), self.pad_id, dtype=torch.long)
        M = max(int(r.modality_positions.shape[0]) for r in self.rows)
        mp = torch.zeros(R, M, 2, dtype=torch.long)
        lat_rows: list[list[Tensor]] = []
        t_rows: list[list[float]] = []
        tv = float(t)
        for i, r in enumerate(self.rows):
            ids[i, : r.input_ids.numel()] = r.input_ids  # right padding as officially (pads after the block)
            k = r.modality_positions.shape[0]
            mp[i, :k] = r.modality_positions
            lat_rows.append([c.float() for c in r.context_latents] + [x_rows[i].float()])
            t_rows.append(list(r.context_t) + [tv])
        lat, ts = _stack_items(lat_rows, t_rows, M, torch.zeros_like(x_rows[0].float()))
        ids, mp = ids.to(self.device), mp.to(self.device)
        from models.attention import omni_attention_mask

        mask = omni_attention_mask(mp, L)
        out = self.model(ids, image_latents=lat.to(self.device), t=ts.to(self.device), modality_positions=mp,
                         attention_mask=mask, compute_logits=False, compute_flow=True)
        tok = []
        for i, r in enumerate(self.rows):
            off, ln = r.target
            tok.append(out.v_tokens[i, off + 1: off + ln])
        return _velocity_from_tokens(torch.stack(tok), self.latent_shape, self.patch)

    # ------------------------------------------------------------------ velocity function
    @torch.no_grad()
    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if self.first_frame is not None:
            x = x.clone()
            x[:, :, 0] = self.first_frame.to(x)
        x_rows = torch.cat([x, x]) if self.uncond else x
        v = (self._forward_cached if self.cached else self._forward_full)(x_rows.to(self.device), t)
        self.nfe += 1
        if self.uncond:
            v = cfg_combine(v[: self.B], v[self.B:], self.g)  # model dtype, as officially (Q8)
        if self.first_frame is not None:
            v = v.clone()
            v[:, :, 0] = 0  # the conditioning frame stays fixed
        return v


@torch.no_grad()
def generate_visual(
    model: torch.nn.Module,
    cond: Sequence[VisualRow],
    uncond: Sequence[VisualRow] | None,
    noise: Tensor,
    *,
    guidance_scale: float = 5.0,
    num_steps: int = 50,
    shift: float = 3.0,
    sampler: str = "euler",
    pad_id: int,
    cached: bool = True,
    first_frame: Tensor | None = None,
    return_trajectory: bool = False,
    callback: Callable[[int, int], None] | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Denoise the target block of each cond row from ``noise`` (B, C, [T,] h, w) to clean latents.

    ``num_steps`` counts grid points (official ``num_inference_steps``, quirk Q9: Euler evaluates
    the model ``num_steps - 1`` times). Returns float32 latents (B, ...) (and the trajectory
    (num_steps, B, ...) if asked).
    """
    if len(cond) != noise.shape[0]:
        raise ValueError(f"{len(cond)} rows but noise for {noise.shape[0]}")
    x = noise.float().to(model_device(model))
    if first_frame is not None:
        x = x.clone()
        x[:, :, 0] = first_frame.to(x)
    fn = VisualDenoiser(model, cond, uncond, tuple(noise.shape[1:]), guidance_scale=guidance_scale,
                        pad_id=pad_id, cached=cached, first_frame=first_frame)
    grid = inference_time_grid(num_steps, shift)
    return sample_ode(fn, x, grid=grid, method=sampler, return_trajectory=return_trajectory, callback=callback)
