"""Velocity <-> token layout (raw-reshape, spec §4.6 / Q2) and the two training losses."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def velocity_to_tokens(u: torch.Tensor, patch: int) -> torch.Tensor:
    """Latent-layout velocity -> per-token targets by the raw reshape of the reference.

    u: (N, C, h, w) or (N, C, T, h, w) -> (N, T*(h/p)*(w/p), p*p*C). Token k holds the p*p consecutive raster
    positions p*p*k ... p*p*k+p*p-1 of the flattened (T,) h, w latent, channel fastest.
    """
    n, c = u.shape[:2]
    return u.reshape(n, c, -1).transpose(1, 2).reshape(n, -1, patch * patch * c)


def tokens_to_velocity(tokens: torch.Tensor, shape: Sequence[int], patch: int) -> torch.Tensor:
    """Inverse of `velocity_to_tokens`.

    tokens: (N, n_tok, p*p*C) (or (n_tok, p*p*C) for one item); shape: the per-item latent shape (C, h, w) or
    (C, T, h, w). -> (N, *shape) (or `shape` for one item).
    """
    single = tokens.dim() == 2
    if single:
        tokens = tokens[None]
    c = int(shape[0])
    if tokens.shape[-1] != patch * patch * c:
        raise ValueError(f"token width {tokens.shape[-1]} != p*p*C = {patch * patch * c}")
    out = tokens.reshape(tokens.shape[0], -1, c).transpose(1, 2).reshape(tokens.shape[0], *shape)
    return out[0] if single else out


def ntp_loss(logits: torch.Tensor, labels: torch.Tensor, nan_if_empty: bool = False,
             shift: bool = True) -> torch.Tensor:
    """Next-token cross-entropy, mean over non-ignored (-100) targets of the whole batch.

    logits (B, L, V) with unshifted labels (B, L) (shift=True), or already aligned (K, V) / (K,) (shift=False).
    With no supervised target the official code returns NaN (`nan_if_empty=True`); the default returns a
    zero that still carries the graph, so training steps never see NaN. Sync-free (no `.item()`).
    """
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    logits = logits.reshape(-1, logits.shape[-1])
    labels = labels.reshape(-1)
    total = F.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="sum")
    count = (labels != -100).sum()
    return total / (count if nan_if_empty else count.clamp(min=1))


def flow_loss(v_tokens: torch.Tensor, label_tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked MSE: single mean over every selected (position, value) element of the batch.

    v_tokens, label_tokens: (B, L, D); mask: (B, L) or (B, L, D), nonzero = selected. Empty mask -> 0.
    Time-slot positions must already be cleared from `mask` (the model does that).
    """
    m = mask.bool()
    if m.dim() == 2:
        m = m[..., None].expand_as(v_tokens)
    se = (v_tokens.float() - label_tokens.float()).pow(2) * m
    return se.sum() / m.sum().clamp(min=1)
