"""The machine's practical matmul limit, measured in the same process as the model benchmarks.

Achieved FLOP/s of a training step is only meaningful next to what this machine can do on its best-case
kernel (large square GEMMs) *at the same moment*: on a shared CPU the available throughput moves with the
load of other processes, so we measure it in the same run rather than quoting a datasheet number.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

from benchmarks.common import time_fn

__all__ = ["matmul_flops", "default_sizes"]


def default_sizes(device: torch.device) -> list[int]:
    """Square sizes big enough to saturate the device but quick to run (CPU: seconds in total)."""
    if device.type == "cuda":
        return [4096, 8192]
    return [1024, 2048]


def matmul_flops(
    device: torch.device,
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16),
    sizes: list[int] | None = None,
    repeats: int = 3,
    warmup: int = 1,
) -> dict[str, Any]:
    """Median FLOP/s of ``a @ b`` for square (n, n) operands per dtype and size; ``best`` per dtype is the max.

    FLOPs of one (n, n) @ (n, n) product = 2 n^3 (one multiply and one add per MAC). On CPU the same is also
    reported per second of process CPU time (``best_flops_per_cpu_s``), the robust reference on a shared machine.
    """
    sizes = sizes or default_sizes(device)
    out: dict[str, Any] = {}
    gen = torch.Generator(device="cpu").manual_seed(0)
    for dtype in dtypes:
        per_size: dict[str, float] = {}
        per_cpu: dict[str, float] = {}
        for n in sizes:
            a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
            b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
            c = torch.empty(n, n, device=device, dtype=dtype)
            # Several products per timed call on fast devices so that launch overhead does not dominate.
            inner = 10 if device.type == "cuda" else 1

            def run(a: torch.Tensor = a, b: torch.Tensor = b, c: torch.Tensor = c, inner: int = inner) -> None:
                for _ in range(inner):
                    torch.matmul(a, b, out=c)

            t = time_fn(run, device, repeats=repeats, warmup=warmup)
            per_size[str(n)] = 2.0 * n**3 * inner / t.median
            cpu = statistics.median(t.cpu_samples)
            if device.type == "cpu" and cpu > 0:
                per_cpu[str(n)] = 2.0 * n**3 * inner / cpu
            del a, b, c
        name = str(dtype).replace("torch.", "")
        out[name] = {"flops_per_s_by_size": per_size, "best_flops_per_s": max(per_size.values())}
        if per_cpu:
            # FLOPs per second of process CPU time: robust to other tenants taking cores away (see common.time_fn)
            out[name]["flops_per_cpu_s_by_size"] = per_cpu
            out[name]["best_flops_per_cpu_s"] = max(per_cpu.values())
    return out
