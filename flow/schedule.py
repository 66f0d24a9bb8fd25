"""Time sampling, the linear path, velocity targets and the inference time grid.

Convention (as in the released Show-o2 weights): x_t = t * x1 + (1 - t) * x0 with x1 the clean
normalised latent and x0 ~ N(0, I); the model predicts u = x1 - x0; t = 1 is clean data.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "resolution_shift",
    "shift_time",
    "sample_train_timesteps",
    "interpolate",
    "velocity_target",
    "inference_time_grid",
]


def resolution_shift(seq_len: int, base_len: int = 256, max_len: int = 4096, base_mu: float = 0.5, max_mu: float = 1.15) -> float:
    """Training shift factor k = exp(mu), mu linear in the visual token count (time slot included).

    432x432 -> seq_len 730 -> k ~ 1.786; 512 -> 1025 -> ~1.878; 1024 -> 4097 -> ~3.159.
    """
    mu = base_mu + (max_mu - base_mu) * (seq_len - base_len) / (max_len - base_len)
    return math.exp(mu)


def shift_time(t: Tensor, shift: float) -> Tensor:
    """Shift t towards noise: with s = 1 - t, s' = k s / (1 + (k - 1) s); t = 1 stays 1."""
    s = 1.0 - t
    s = shift * s / (1.0 + (shift - 1.0) * s)
    return 1.0 - s


def sample_train_timesteps(
    n: int,
    seq_len: int | None,
    *,
    t_min: Tensor | float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    shift: float | None = None,
) -> Tensor:
    """Logit-normal(0, 1) times in [t_min, 1], shifted for ``seq_len`` visual tokens (None: no shift).

    ``shift`` overrides the resolution-derived factor with a fixed one (k > 1 moves times towards noise).

    ``t_min`` may be a per-item tensor: understanding items use t_min = 1 and therefore stay clean.
    Returns float32 (n,) on ``device``; drawn on the generator's device (CPU by default) so runs are
    reproducible across accelerators.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.randn(n, generator=generator, device=gen_device, dtype=torch.float32)
    t_min = torch.as_tensor(t_min, dtype=torch.float32, device=gen_device)
    t = torch.sigmoid(u) * (1.0 - t_min) + t_min
    if shift is not None:
        t = shift_time(t, float(shift))
    elif seq_len is not None:
        t = shift_time(t, resolution_shift(seq_len))
    return t.to(device)


def _expand_like(t: Tensor, x: Tensor) -> Tensor:
    return t.to(x.dtype).reshape(t.shape[0], *([1] * (x.ndim - 1)))


def interpolate(x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
    """x_t = t x1 + (1 - t) x0 with one t per item (leading dim)."""
    tt = _expand_like(t, x1)
    return tt * x1 + (1.0 - tt) * x0


def velocity_target(x0: Tensor, x1: Tensor) -> Tensor:
    return x1 - x0


def inference_time_grid(num_points: int, shift: float = 3.0, device: torch.device | str = "cpu") -> Tensor:
    """Official sampling grid: ``num_points`` points of linspace(0, 1) warped by t / (t + s - s t).

    ``num_points`` counts grid points, so Euler makes ``num_points - 1`` model evaluations.
    """
    if num_points < 2:
        raise ValueError(f"num_points must be >= 2 (got {num_points}); it counts grid points, not steps")
    t = torch.linspace(0.0, 1.0, num_points, dtype=torch.float32, device=device)
    if shift:
        t = t / (t + shift - shift * t)
    return t
