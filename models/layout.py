"""Per-position index tensors for a (chunk of a) sequence: which visual item owns each position.

Built once per forward from `modality_positions` and reused by the embedding scatter, the adaLN gather and
the label placement. Overlapping slots: the later slot wins (spec Q8), exactly as a sequential writer would.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class VisualLayout:
    """All tensors are (B, q_len) for the chunk q_offset .. q_offset+q_len-1.

    item:   visual item index i*M+j of the owning slot (modulation / labels / block content), -1 if none
    local:  position inside the owning block (0 = time slot, k = visual token k-1)
    emb_item, emb_local: the same for the input embedding (differs only with the Q9 BOS quirk)
    """

    item: torch.Tensor
    local: torch.Tensor
    emb_item: torch.Tensor
    emb_local: torch.Tensor

    @property
    def owned(self) -> torch.Tensor:
        return self.item >= 0

    @property
    def mod_index(self) -> torch.Tensor:
        """0 outside blocks, item+1 inside (index into a table whose row 0 holds the defaults)."""
        return self.item + 1

    @property
    def visual_token(self) -> torch.Tensor:
        """True at block positions that carry a visual token (time slot excluded)."""
        return (self.item >= 0) & (self.local > 0)


def _owner(cover: torch.Tensor, off: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cover (B, M, q) -> (item (B, q) or -1, local (B, q))."""
    b, m, _ = cover.shape
    slot = torch.arange(m, device=cover.device)[None, :, None]
    owner = torch.where(cover, slot, torch.full_like(slot, -1)).amax(dim=1) if m > 0 else \
        torch.full((b, pos.numel()), -1, dtype=torch.long, device=cover.device)
    has = owner >= 0
    oc = owner.clamp(min=0)
    item = torch.arange(b, device=cover.device)[:, None] * m + oc
    local = pos[None] - off.gather(1, oc) if m > 0 else torch.zeros_like(owner)
    return torch.where(has, item, -1), torch.where(has, local, 0)


def build_layout(modality_positions: torch.Tensor, q_len: int, q_offset: int = 0,
                 bos_overwrite_quirk: bool = False) -> VisualLayout:
    """modality_positions (B, M, 2) long, absolute (offset, length) incl. the time slot."""
    mp = modality_positions
    off, ln = mp[..., 0], mp[..., 1]
    pos = torch.arange(q_offset, q_offset + q_len, device=mp.device)
    cover = (pos >= off[..., None]) & (pos < (off + ln)[..., None])                 # (B, M, q)
    item, local = _owner(cover, off, pos)
    if bos_overwrite_quirk:
        # reference: a zero-length slot still writes its time token at `offset` (position 0 for (0, 0))
        cover_e = cover | ((ln == 0)[..., None] & (pos == off[..., None]))
        emb_item, emb_local = _owner(cover_e, off, pos)
    else:
        emb_item, emb_local = item, local
    return VisualLayout(item, local, emb_item, emb_local)


def gather_slots(table: torch.Tensor, item: torch.Tensor, local: torch.Tensor, validate: bool = True) -> torch.Tensor:
    """table (N, S, D) per-item block content, item/local (B, q) -> (B, q, D); rows with item < 0 get zeros
    (callers mask them). One gather, no loops. ``validate=False`` skips the block-length check (a host-device
    sync) when the caller already checked the slots on the host (`check_block_lengths`)."""
    n, s, d = table.shape
    if n == 0:
        return table.new_zeros(*item.shape, d)
    if validate and bool((local >= s).any()):
        raise ValueError(f"a visual block is longer than its item: block position {int(local.max())} "
                         f">= 1 + {s - 1} tokens")
    flat = item.clamp(min=0) * s + local
    return table.reshape(n * s, d)[flat]


def check_block_lengths(modality_positions: torch.Tensor, tokens_per_item: int) -> bool:
    """Host-side check that no block (time slot + tokens) is longer than its item; True if it could be checked
    without touching an accelerator (positions on the CPU), False otherwise (callers then validate on device)."""
    if modality_positions.numel() == 0:
        return True
    if modality_positions.device.type != "cpu":
        return False
    longest = int(modality_positions[..., 1].max())
    if longest - 1 > tokens_per_item:
        raise ValueError(f"a visual block is longer than its item: {longest} positions > 1 + {tokens_per_item} tokens")
    return True
