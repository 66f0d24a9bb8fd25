"""ODE samplers for flow matching (Euler as in the official code, Heun, midpoint) and CFG.

Convention (see ``flow/schedule.py``): t = 0 is pure noise, t = 1 is clean data, the model predicts
the velocity ``u = x1 - x0`` and sampling integrates ``dx/dt = v(x, t)`` from t = 0 to t = 1 on the
grid of ``inference_time_grid(num_points, shift)``.

``num_points`` counts **grid points** (official ``num_inference_steps``, quirk Q9): Euler makes
``num_points - 1`` model evaluations and never evaluates t = 1. Heun makes ``2 (num_points - 1)``
(its last corrector evaluates t = 1, which is a valid input to the model: clean data); midpoint
makes ``2 (num_points - 1)``.

Dtypes [parity]: the state and all time values are float32; the velocity returned by the model
(model dtype, e.g. bf16) is cast to float32 before each update. The CFG combination is done in the
model dtype (Q8), see :func:`cfg_combine`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from flow.schedule import inference_time_grid

__all__ = [
    "SAMPLERS",
    "VelocityFn",
    "cfg_combine",
    "make_noise",
    "num_model_evaluations",
    "sample_ode",
    "euler_step",
    "heun_step",
    "midpoint_step",
]

# velocity_fn(x, t) with x float32 (B, ...) and t a 0-d float32 tensor -> velocity (B, ...) in any dtype.
VelocityFn = Callable[[Tensor, Tensor], Tensor]


def cfg_combine(v_cond: Tensor, v_uncond: Tensor, guidance_scale: float) -> Tensor:
    """Classifier-free guidance ``v = v_u + g (v_c - v_u)``, computed in the inputs' dtype.

    The official code does this in the model dtype (bf16 in released runs, quirk Q8), so we do not
    upcast here; the sampler upcasts the result to float32 afterwards.
    """
    return v_uncond + guidance_scale * (v_cond - v_uncond)


def make_noise(
    shape: Sequence[int],
    seeds: Sequence[int] | None = None,
    *,
    generator: torch.Generator | None = None,
    noise_bf16_round: bool = False,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Initial noise x0 ~ N(0, I) of ``shape`` = (B, C, [T,] h, w), float32 on ``device``.

    Each item i gets its own CPU ``torch.Generator`` seeded with ``seeds[i]``, so an item's noise
    does not depend on its batch (batched == one-by-one, independent of sharding). A single
    ``generator`` (or the global CPU generator when both are None) draws the whole batch at once,
    as the official scripts do. Noise is drawn in float32 on the CPU (reproducible across devices);
    ``noise_bf16_round=True`` rounds it to bf16 and back, reproducing quirk Q7.
    """
    shape = tuple(int(s) for s in shape)
    if seeds is not None:
        if len(seeds) != shape[0]:
            raise ValueError(f"got {len(seeds)} seeds for a batch of {shape[0]}")
        items = []
        for s in seeds:
            g = torch.Generator(device="cpu").manual_seed(int(s))
            items.append(torch.randn(shape[1:], generator=g, dtype=torch.float32))
        x = torch.stack(items)
    else:
        x = torch.randn(shape, generator=generator, dtype=torch.float32)
    if noise_bf16_round:
        x = x.to(torch.bfloat16).to(torch.float32)
    return x.to(device)


def euler_step(fn: VelocityFn, x: Tensor, t0: Tensor, t1: Tensor) -> tuple[Tensor, int]:
    """x1 = x0 + (t1 - t0) v(x0, t0). Returns (new state, model evaluations)."""
    return x + (t1 - t0) * fn(x, t0).float(), 1


def heun_step(fn: VelocityFn, x: Tensor, t0: Tensor, t1: Tensor) -> tuple[Tensor, int]:
    """Heun (explicit trapezoid, 2nd order): predictor Euler, corrector averages both slopes."""
    dt = t1 - t0
    v0 = fn(x, t0).float()
    x_pred = x + dt * v0
    v1 = fn(x_pred, t1).float()
    return x + dt * 0.5 * (v0 + v1), 2


def midpoint_step(fn: VelocityFn, x: Tensor, t0: Tensor, t1: Tensor) -> tuple[Tensor, int]:
    """Explicit midpoint (2nd order): slope at the half step (torchdiffeq's ``midpoint``)."""
    dt = t1 - t0
    v0 = fn(x, t0).float()
    th = t0 + 0.5 * dt
    v_half = fn(x + 0.5 * dt * v0, th).float()
    return x + dt * v_half, 2


SAMPLERS: dict[str, Callable[[VelocityFn, Tensor, Tensor, Tensor], tuple[Tensor, int]]] = {
    "euler": euler_step,
    "heun": heun_step,
    "midpoint": midpoint_step,
}


def num_model_evaluations(method: str, num_points: int) -> int:
    """Velocity evaluations of ``method`` on a grid of ``num_points`` points."""
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler '{method}' (choose from {sorted(SAMPLERS)})")
    return (num_points - 1) * (1 if method == "euler" else 2)


def sample_ode(
    velocity_fn: VelocityFn,
    x: Tensor,
    *,
    num_points: int | None = None,
    shift: float = 3.0,
    grid: Tensor | None = None,
    method: str = "euler",
    return_trajectory: bool = False,
    callback: Callable[[int, int], None] | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Integrate ``dx/dt = velocity_fn(x, t)`` from noise ``x`` (t = grid[0]) to data (t = grid[-1]).

    Args:
        velocity_fn: ``(x float32 (B, ...), t 0-d float32) -> v (B, ...)``; cast to float32 here.
        x: start state (B, ...) (any float dtype; integrated in float32 as officially).
        num_points / shift: grid of :func:`flow.schedule.inference_time_grid` (ignored if ``grid``).
        grid: explicit increasing float32 time grid (K,).
        method: ``euler`` (official), ``heun`` or ``midpoint``.
        return_trajectory: also return all states (K, B, ...) (memory: K copies of x).
        callback: called as ``callback(step_index, num_steps)`` after each step (progress bars).
    Returns:
        final state (B, ...) float32, or ``(final, trajectory)``.
    """
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler '{method}' (choose from {sorted(SAMPLERS)})")
    if grid is None:
        if num_points is None:
            raise ValueError("give num_points or grid")
        grid = inference_time_grid(num_points, shift)
    grid = grid.to(device=x.device, dtype=torch.float32)
    step = SAMPLERS[method]
    x = x.float()
    traj = [x] if return_trajectory else None
    n = grid.numel() - 1
    for k in range(n):
        x, _ = step(velocity_fn, x, grid[k], grid[k + 1])
        if traj is not None:
            traj.append(x)
        if callback is not None:
            callback(k, n)
    if traj is not None:
        return x, torch.stack(traj)
    return x
