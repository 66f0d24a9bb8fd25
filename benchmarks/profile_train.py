"""Where does a training step's time go? ``torch.profiler`` over one step of a benchmark preset.

    python benchmarks/profile_train.py preset=small threads=1 top=30

Prints the top operators by self time and a coarse breakdown (GEMMs, attention kernels, elementwise / norms,
copies and casts, optimizer, other), and writes the breakdown to ``outputs/bench/profile-<preset>-<device>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import device_name, resolve_device, resolve_dtype
from benchmarks.presets import model_config, workload_defaults, workload_for

DEFAULTS: dict[str, Any] = {"preset": "small", "device": "auto", "threads": None, "top": 30, "full_logits": True,
                            "warmup": 1, "seed": 0, "output_dir": "outputs/bench", "workload": workload_defaults()}

# aten op name -> category (first matching substring wins)
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("optimizer", ("_foreach", "adam", "Optimizer")),
    ("attention", ("scaled_dot_product", "flash_attention", "efficient_attention", "_softmax")),
    ("gemm", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear", "aten::matmul",
              "convolution", "aten::_convolution", "mkldnn_convolution")),
    ("embedding/gather", ("embedding", "index", "gather", "scatter", "where", "masked")),
    ("copy/cast", ("aten::copy_", "aten::to", "aten::_to_copy", "aten::contiguous", "aten::clone", "aten::cat",
                   "repeat_interleave", "aten::stack", "aten::expand")),
    ("elementwise/norm", ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::pow", "aten::rsqrt",
                          "aten::mean", "aten::sum", "silu", "gelu", "aten::tanh", "aten::exp", "aten::neg",
                          "layer_norm", "aten::sqrt", "aten::cos", "aten::sin", "aten::fill_", "aten::zero_",
                          "aten::zeros", "threshold", "_backward")),
]


def categorize(name: str) -> str:
    for cat, keys in CATEGORIES:
        if any(k in name for k in keys):
            return cat
    return "other"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.bench_train import build_train_batch, make_train_step
    from benchmarks.run import build_model
    from utils.config import load_config

    cfg = load_config(argv, default_config=DEFAULTS)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    wl = workload_for(str(cfg.preset), dict(cfg.workload))
    mcfg = model_config(str(cfg.preset))
    model = build_model(mcfg, device, resolve_dtype(wl.dtype), int(cfg.seed))
    model.train()
    tb = build_train_batch(mcfg, wl, device, int(cfg.seed))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    step = make_train_step(model, opt, tb.inputs, full_logits=bool(cfg.full_logits))
    for _ in range(max(1, int(cfg.warmup))):
        step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts, record_shapes=False) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    events = prof.key_averages()
    use_cuda = device.type == "cuda"
    total = 0.0
    by_cat: dict[str, float] = {}
    per_op: list[tuple[str, float, int]] = []
    for ev in events:
        t = (ev.self_device_time_total if use_cuda else ev.self_cpu_time_total) / 1e6
        total += t
        by_cat[categorize(ev.key)] = by_cat.get(categorize(ev.key), 0.0) + t
        per_op.append((ev.key, t, ev.count))
    per_op.sort(key=lambda x: -x[1])
    print(f"== profile: preset={cfg.preset} device={device} threads={torch.get_num_threads()} "
          f"self time total {total:.2f} s ==")
    for name, t, n in per_op[: int(cfg.top)]:
        print(f"{t:9.3f} s {t / total:6.1%} x{n:<6d} {name}  [{categorize(name)}]")
    print("-- by category --")
    for cat, t in sorted(by_cat.items(), key=lambda x: -x[1]):
        print(f"{cat:<18s} {t:8.3f} s {t / total:6.1%}")
    out = {"preset": str(cfg.preset), "device": str(device), "threads": torch.get_num_threads(),
           "total_self_s": total, "by_category_s": by_cat,
           "top_ops": [{"op": n, "self_s": t, "count": c} for n, t, c in per_op[:100]]}
    path = Path(cfg.output_dir) / f"profile-{cfg.preset}-{device_name(device)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
