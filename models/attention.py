"""Omni-attention masks: causal everywhere, bidirectional inside each visual block (spec §3.3).

allowed(b, q, k) <=> k <= q, or some slot (o, l) of row b has o <= q < o+l and o <= k < o+l.
For k > q the second condition reduces to k < max{o+l : o <= q < o+l}, so one (B, Lq) "block end" table
describes the whole mask (also what the flex-attention mask_mod reads).
"""
from __future__ import annotations

import torch


def block_end(modality_positions: torch.Tensor, q_len: int, q_offset: int = 0,
              device: torch.device | str | None = None) -> torch.Tensor:
    """Largest end (o+l) of the slots containing each query position, 0 if none. -> (B, q_len) long."""
    mp = modality_positions.to(device if device is not None else modality_positions.device)
    off, ln = mp[..., 0], mp[..., 1]                                       # (B, M)
    q = torch.arange(q_offset, q_offset + q_len, device=mp.device)        # absolute positions
    inside = (q >= off[..., None]) & (q < (off + ln)[..., None])          # (B, M, q_len); len 0 -> never
    ends = torch.where(inside, (off + ln)[..., None], torch.zeros_like(off)[..., None])
    return ends.amax(dim=1) if ends.shape[1] > 0 else torch.zeros(mp.shape[0], q_len, dtype=torch.long,
                                                                        device=mp.device)


def omni_attention_mask(modality_positions: torch.Tensor | None, q_len: int, kv_len: int | None = None,
                        q_offset: int = 0, device: torch.device | str | None = None,
                        batch_size: int | None = None) -> torch.Tensor:
    """Bool mask (B, 1, q_len, kv_len), True = may attend.

    modality_positions: (B, M, 2) long (offset, length) per slot, absolute positions; (0, 0) slots ignored.
    q_len / q_offset: the query chunk covers absolute positions q_offset .. q_offset+q_len-1.
    kv_len: number of key positions (cached + new), default q_offset + q_len; keys are 0 .. kv_len-1.
    With modality_positions None the mask is pure causal with batch dimension `batch_size` (default 1).
    """
    kv_len = q_offset + q_len if kv_len is None else kv_len
    if device is None:
        device = modality_positions.device if modality_positions is not None else "cpu"
    q = torch.arange(q_offset, q_offset + q_len, device=device)
    k = torch.arange(kv_len, device=device)
    causal = k[None, :] <= q[:, None]                                      # (q_len, kv_len)
    if modality_positions is None:
        return causal[None, None].expand(batch_size or 1, 1, q_len, kv_len)
    end = block_end(modality_positions, q_len, q_offset, device)          # (B, q_len)
    mask = causal[None] | (k[None, None, :] < end[:, :, None])
    return mask[:, None]


def mask_key_padding(mask: torch.Tensor, key_valid: torch.Tensor, q_offset: int = 0) -> torch.Tensor:
    """Forbid attending to padding keys. mask (B, 1, Lq, Lkv) bool, key_valid (B, Lkv) bool (True = real).

    The diagonal stays allowed so padding queries never have an empty row (their outputs are junk, unused).
    """
    q_len, kv_len = mask.shape[-2:]
    q = torch.arange(q_offset, q_offset + q_len, device=mask.device)
    diag = q[:, None] == torch.arange(kv_len, device=mask.device)[None, :]
    return (mask & key_valid[:, None, None, :].to(mask.device)) | diag


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool mask -> additive float mask (0 / finfo.min), for eager attention backends."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def flex_block_mask(modality_positions: torch.Tensor, q_len: int, kv_len: int | None = None, q_offset: int = 0,
                    device: torch.device | str | None = None):
    """The omni mask as a flex-attention BlockMask (forward/inference use; CPU flex has no backward).

    Same semantics and arguments as `omni_attention_mask`; heads are broadcast.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    kv_len = q_offset + q_len if kv_len is None else kv_len
    device = device if device is not None else modality_positions.device
    end = block_end(modality_positions, q_len, q_offset, device)          # (B, q_len)

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx + q_offset) | (kv_idx < end[b, q_idx])

    return create_block_mask(mask_mod, B=end.shape[0], H=None, Q_LEN=q_len, KV_LEN=kv_len, device=device)
