"""Visual input side: patch embeddings, SigLIP position table with the interpolation rule, semantic layers."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import SiglipVisionConfig
from transformers.models.siglip.modeling_siglip import SiglipEncoder

from .norms import FP32LayerNorm


class PatchEmbed(nn.Module):
    """Conv2d(C -> D, kernel = stride = p) + row-major flatten. (N, C, h, w) -> (N, (h/p)*(w/p), D)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def build_semantic_encoder(siglip_cfg: dict) -> SiglipEncoder:
    """SigLIP vision encoder minus its last layer, with fp32 LayerNorms (keys `layers.{s}.*` unchanged)."""
    cfg = SiglipVisionConfig(**{**siglip_cfg, "num_hidden_layers": int(siglip_cfg["num_hidden_layers"]) - 1})
    cfg._attn_implementation = "sdpa"
    enc = SiglipEncoder(cfg)
    for layer in enc.layers:
        for name in ("layer_norm1", "layer_norm2"):
            old: nn.LayerNorm = getattr(layer, name)
            new = FP32LayerNorm(old.normalized_shape, eps=old.eps, device=old.weight.device, dtype=old.weight.dtype)
            setattr(layer, name, new)
    return enc


class PositionTable:
    """SigLIP position embedding for a (gh, gw) token grid (spec §2.5, rule Q4 as a strict superset).

    The sqrt(P) x sqrt(P) table is added as is when the grid equals it, otherwise bicubically resized
    (align_corners=False, no antialias, in the parameter dtype). Results are cached per (grid, dtype, device)
    while the weight needs no gradient, so inference pays the interpolation once.
    """

    def __init__(self) -> None:
        self._cache: dict = {}

    def __call__(self, weight: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
        """weight: (P, D) -> (gh*gw, D)."""
        side = math.isqrt(weight.shape[0])
        if (gh, gw) == (side, side):
            return weight
        needs_grad = torch.is_grad_enabled() and weight.requires_grad
        key = (gh, gw, weight.dtype, weight.device, weight.data_ptr(), weight._version)
        if not needs_grad and key in self._cache:
            return self._cache[key]
        grid = weight.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        out = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
        out = out.permute(0, 2, 3, 1).reshape(gh * gw, -1)
        if not needs_grad:
            self._cache = {key: out.detach()}   # keep one entry: grids rarely change within a run
        return out
