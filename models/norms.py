"""Normalisation layers with the reference numerics (spec §1.3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """y = w * cast_in(x_f32 * rsqrt(mean(x_f32^2) + eps)); the weight product stays in the input dtype.

    x: (..., D) -> (..., D).
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm evaluated in float32 and cast back (the reference SigLIP behaviour); same keys as nn.LayerNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation x * (1 + scale) + shift, computed in fp32 and cast back to x's dtype."""
    return (x.float() * (1 + scale.float()) + shift.float()).to(x.dtype)
