"""Attention kernel study on the training layout: SDPA with the dense omni mask vs flex attention with its block mask.

The omni mask (causal + bidirectional visual blocks) allows only ~60-67 % of the (query, key) pairs of a training row,
but SDPA with a dense boolean mask computes all of them. Flex attention with ``models.attention.flex_block_mask``
skips fully masked tiles. This section times one LLM-shaped attention call (the model's heads / head dim, the rows of
the ``train`` micro-batch) both ways: forward everywhere, forward + backward where flex supports it (CUDA; CPU flex
has no backward in torch 2.13, see environment notes §4). Flex is timed compiled (eager flex materialises the score
matrix and is only a correctness reference).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import Timing, time_fn
from benchmarks.presets import Workload

__all__ = ["bench_attention"]


def bench_attention(cfg: Any, wl: Workload, device: torch.device, dtype: torch.dtype, *, repeats: int, warmup: int,
                    seed: int = 0) -> dict[str, Any]:
    from torch.nn.attention.flex_attention import flex_attention

    from benchmarks.bench_train import build_train_batch
    from models.attention import flex_block_mask, omni_attention_mask

    tb = build_train_batch(cfg, wl, device, seed)
    mp = tb.inputs["modality_positions"]
    b, length = tb.inputs["input_ids"].shape
    heads = int(cfg.qwen2["num_attention_heads"])
    hd = int(cfg.qwen2.get("head_dim") or cfg.hidden_size // heads)
    g = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v = (torch.randn(b, heads, length, hd, generator=g).to(device=device, dtype=dtype) for _ in range(3))
    dense = omni_attention_mask(mp, length).to(device)
    block = flex_block_mask(mp, length, device=device)
    sparsity = float(block.sparsity()) if hasattr(block, "sparsity") else None  # percent of skipped tiles
    flex = torch.compile(flex_attention, dynamic=False)
    backward = device.type == "cuda"

    def run_sdpa() -> None:
        qq, kk, vv = (x.detach().requires_grad_(backward) for x in (q, k, v))
        out = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=dense)
        if backward:
            out.sum().backward()

    def run_flex() -> None:
        qq, kk, vv = (x.detach().requires_grad_(backward) for x in (q, k, v))
        with torch.set_grad_enabled(backward):
            out = flex(qq, kk, vv, block_mask=block)
        if backward:
            out.sum().backward()

    # correctness first (forward): flex with the block mask == SDPA with the dense mask
    with torch.no_grad():
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=dense)
        got = flex(q, k, v, block_mask=block)
    max_diff = float((ref.float() - got.float()).abs().max())
    timings = {"sdpa_dense_mask": Timing(), "flex_block_mask": Timing()}
    fns = {"sdpa_dense_mask": run_sdpa, "flex_block_mask": run_flex}
    for r in range(max(1, warmup) + repeats):   # round-robin; the first flex call compiles
        for name, fn in fns.items():
            t = time_fn(fn, device, repeats=1, warmup=0)
            if r >= max(1, warmup):
                timings[name].samples += t.samples
                timings[name].cpu_samples += t.cpu_samples
    return {
        "shape": [int(b), heads, int(length), hd],
        "dtype": str(dtype).replace("torch.", ""),
        "backward": backward,
        "block_sparsity_percent": sparsity,
        "max_abs_diff_vs_sdpa": max_diff,
        "times": {k: t.to_dict() for k, t in timings.items()},
        "flex_speedup": timings["sdpa_dense_mask"].median / timings["flex_block_mask"].median,
    }
