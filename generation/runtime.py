"""Low-level helpers shared by the generation loops: batching of ragged prefixes, masks, caches.

Everything that touches ``Showo2Model`` internals or cache objects goes through this module, so
that the loops in ``image.py`` / ``text.py`` / ``interleaved.py`` stay independent of how the model
implements its caches.

Batching ragged prefixes. Rows of different length are **left-padded** to a common length P: the
pads sit in front, are masked out as keys (and attend only to themselves, so no attention row is
empty), and each row's real tokens get the RoPE positions they would have alone (0, 1, ...; per-row
``position_ids``). So a left-padded row computes the same function as the row alone (equal up to
float rounding of the batched kernels), while all rows share one cache length, which is what a
KV-cached decoder / denoiser needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "LeftPadded",
    "left_pad",
    "prefix_mask",
    "chunk_mask",
    "crop_cache",
    "repeat_cache_rows",
    "model_device",
    "model_dtype",
    "model_patch_size",
    "last_logits",
]


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def model_patch_size(model: torch.nn.Module) -> int:
    """The model's latent patch size (2 for every released Show-o2; 2 for models without a config)."""
    return int(getattr(getattr(model, "config", None), "patch_size", 2))


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The compute dtype of the model (dtype of its first floating parameter)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


@dataclass
class LeftPadded:
    """A batch of left-padded id rows.

    input_ids: (B, P) long; key_valid: (B, P) bool (False on the left pads);
    pad_lens: (B,) long number of pads in front of each row.
    modality_positions: (B, M, 2) long, shifted by ``pad_lens`` (padding slots stay (0, 0)).
    mask_positions: (B, M, 2) long, the blocks handed to the attention mask (usually identical to
    ``modality_positions``; differs for the official understanding layout, quirk Q2).
    """

    input_ids: Tensor
    key_valid: Tensor
    pad_lens: Tensor
    modality_positions: Tensor
    mask_positions: Tensor

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def position_ids(self) -> Tensor:
        """(B, P) RoPE positions: each row's real tokens at 0, 1, ... (pads clamped to 0, never attended)."""
        ar = torch.arange(self.length, device=self.input_ids.device)[None]
        return (ar - self.pad_lens[:, None]).clamp(min=0)

    def chunk_position_ids(self, start: int, q_len: int) -> Tensor:
        """(B, q_len) positions of ``q_len`` tokens appended ``start`` positions after the padded prefix."""
        ar = torch.arange(q_len, device=self.input_ids.device)[None]
        return (self.length - self.pad_lens)[:, None] + start + ar


def _shift_blocks(blocks: Tensor, shift: int) -> Tensor:
    """Add ``shift`` to the offsets of real blocks ((0, 0) padding slots stay (0, 0))."""
    out = blocks.clone()
    real = out[:, 1] > 0
    out[real, 0] += shift
    return out


def left_pad(
    rows: Sequence[Tensor],
    pad_id: int,
    *,
    modality_positions: Sequence[Tensor | None] | None = None,
    mask_positions: Sequence[Tensor | None] | None = None,
    device: torch.device | str | None = None,
) -> LeftPadded:
    """Left-pad 1-D id rows (L_i,) to the longest; shift their block lists (M_i, 2) accordingly.

    Block lists are padded with (0, 0) slots to the largest M (at least 1 slot, so the result is
    always (B, M, 2)).
    """
    if len(rows) == 0:
        raise ValueError("empty batch")
    device = device if device is not None else rows[0].device
    P = max(int(r.numel()) for r in rows)
    B = len(rows)
    ids = torch.full((B, P), pad_id, dtype=torch.long, device=device)
    valid = torch.zeros(B, P, dtype=torch.bool, device=device)
    pads = torch.zeros(B, dtype=torch.long, device=device)
    mp_list = list(modality_positions) if modality_positions is not None else [None] * B
    kp_list = list(mask_positions) if mask_positions is not None else mp_list
    M = max([1] + [int(m.shape[0]) for m in mp_list if m is not None])
    mp = torch.zeros(B, M, 2, dtype=torch.long, device=device)
    kp = torch.zeros(B, M, 2, dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        n = int(r.numel())
        p = P - n
        ids[i, p:] = r.to(device)
        valid[i, p:] = True
        pads[i] = p
        if mp_list[i] is not None and mp_list[i].numel():
            m = mp_list[i].to(device).long().reshape(-1, 2)
            mp[i, : m.shape[0]] = _shift_blocks(m, p)
        if kp_list[i] is not None and kp_list[i].numel():
            k = kp_list[i].to(device).long().reshape(-1, 2)
            kp[i, : k.shape[0]] = _shift_blocks(k, p)
    return LeftPadded(ids, valid, pads, mp, kp)


def prefix_mask(batch: LeftPadded) -> Tensor:
    """Mask for prefilling a left-padded batch: omni mask of its blocks, pad keys removed.

    Returns bool (B, 1, P, P). Every query keeps its diagonal, so pad rows are never empty.
    """
    from models.attention import mask_key_padding, omni_attention_mask

    P = batch.length
    m = omni_attention_mask(batch.mask_positions, P, P)
    return mask_key_padding(m, batch.key_valid)


def chunk_mask(key_valid: Tensor, q_len: int, *, bidirectional: bool) -> Tensor:
    """Mask for a chunk of ``q_len`` new positions appended after a cached prefix of P positions.

    key_valid: (B, P) validity of the cached keys. The chunk sees every valid cached key and, among
    its own positions, either all of them (``bidirectional``: one visual block) or the causal part
    (text decoding). Returns bool (B, 1, q_len, P + q_len).
    """
    from models.attention import mask_key_padding, omni_attention_mask

    B, P = key_valid.shape
    dev = key_valid.device
    if bidirectional:
        block = torch.tensor([[[P, q_len]]], dtype=torch.long, device=dev).expand(B, 1, 2)
        m = omni_attention_mask(block, q_len, P + q_len, q_offset=P)
    else:
        m = omni_attention_mask(None, q_len, P + q_len, q_offset=P, device=dev, batch_size=B)
    valid = torch.cat([key_valid, torch.ones(B, q_len, dtype=torch.bool, device=dev)], dim=1)
    return mask_key_padding(m, valid, q_offset=P)


def crop_cache(cache: Any, length: int) -> Any:
    """Drop everything after the first ``length`` positions of a KV cache (in place when possible).

    Supports transformers ``Cache`` objects (``.crop``) and legacy tuples of (k, v) per layer with
    k, v of shape (B, heads, L, d). Returns the cropped cache.
    Used instead of ``Showo2Model.forward(update_cache=False)``, whose ``crop(past_len)`` call passes an
    absolute length that transformers 5.x rejects (reported to the model engineer).
    """
    if cache is None:
        return None
    if hasattr(cache, "crop") and hasattr(cache, "get_seq_length"):
        extra = int(cache.get_seq_length()) - int(length)
        if extra > 0:
            # a negative argument means "remove that many" in every transformers version (4.x accepted an
            # absolute length too, 5.x rejects positive values)
            cache.crop(-extra)
        return cache
    if isinstance(cache, list | tuple):
        return type(cache)(crop_cache(c, length) if not isinstance(c, Tensor) else c[..., :length, :] for c in cache)
    raise TypeError(f"don't know how to crop a cache of type {type(cache).__name__}")


def repeat_cache_rows(cache: Any, index: Tensor) -> Any:
    """Select / repeat batch rows of a cache (``index`` (R,) long into the batch dimension)."""
    if cache is None:
        return None
    if hasattr(cache, "batch_select_indices") and hasattr(cache, "layers"):
        import copy

        new = copy.deepcopy(cache)
        new.batch_select_indices(index)
        return new
    if isinstance(cache, list | tuple):
        return type(cache)(repeat_cache_rows(c, index) if not isinstance(c, Tensor) else c.index_select(0, index) for c in cache)
    raise TypeError(f"don't know how to index a cache of type {type(cache).__name__}")


def last_logits(out: Any) -> Tensor:
    """Logits of the last position, float32 (B, V)."""
    return out.logits[:, -1].float()
