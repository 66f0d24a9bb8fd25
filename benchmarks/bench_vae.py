"""Wan2.1 VAE encode/decode throughput through ``models.vae.WanVAE`` (random weights; speed does not depend on them).

Models: ``tiny`` (configs/vae/tiny.json), ``demo`` (configs/vae/demo.json), ``full`` (``AutoencoderKLWan()``
defaults = the real Wan2.1 VAE architecture, 127 M parameters). For each model, times ``encode_posterior`` and
``decode`` of a batch of ``--batch`` images of ``--size`` pixels (``--frames`` > 1: videos), median of ``--repeats``
after one warm-up, plus peak memory. Prints a table and writes JSON (default ``outputs/bench_vae_<device>.json``).

    python -m benchmarks.bench_vae --models tiny demo full --size 432 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import device_name, machine_info, measure_peak_memory, resolve_device, resolve_dtype, time_fn
from models.vae import DEMO_CONFIG_PATH, TINY_CONFIG_PATH, WanVAE

MODELS = {"tiny": TINY_CONFIG_PATH, "demo": DEMO_CONFIG_PATH, "full": None}


def build(name: str, device: torch.device, dtype: torch.dtype, tiling: str) -> WanVAE:
    tiling_arg: bool | str = {"auto": "auto", "on": True, "off": False}[tiling]
    if MODELS[name] is None:
        return WanVAE.from_config({}, seed=0, dtype=dtype, device=device, tiling=tiling_arg)  # constructor defaults
    return WanVAE.from_config(MODELS[name], seed=0, dtype=dtype, device=device, tiling=tiling_arg)


def _cpu_timed(fn, store: list[float]):
    """Wrap ``fn`` to record process CPU seconds per call (less sensitive than wall time to other tenants)."""

    def wrapped():
        t0 = time.process_time()
        out = fn()
        store.append(time.process_time() - t0)
        return out

    return wrapped


def bench_one(name: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    vae = build(name, device, dtype, args.tiling)
    params = sum(p.numel() for p in vae.parameters())
    shape = (args.batch, 3, args.size, args.size) if args.frames == 1 else (
        args.batch, 3, args.frames, args.size, args.size)
    pixels = (torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    cpu_enc: list[float] = []
    cpu_dec: list[float] = []
    with measure_peak_memory(device) as mem_enc:
        t_enc = time_fn(_cpu_timed(lambda: vae.encode_posterior(pixels), cpu_enc), device,
                        repeats=args.repeats, warmup=args.warmup)
    latents = vae.encode(pixels, sample=False)
    with measure_peak_memory(device) as mem_dec:
        t_dec = time_fn(_cpu_timed(lambda: vae.decode(latents), cpu_dec), device,
                        repeats=args.repeats, warmup=args.warmup)
    cpu_enc, cpu_dec = cpu_enc[args.warmup:], cpu_dec[args.warmup:]
    n = args.batch
    return {
        "model": name,
        "params_m": round(params / 1e6, 2),
        "input": list(shape),
        "latent": list(latents.shape),
        "dtype": str(dtype).replace("torch.", ""),
        "tiling": args.tiling,
        "encode_s": t_enc.median,
        "decode_s": t_dec.median,
        "encode_items_per_s": n / t_enc.median,
        "decode_items_per_s": n / t_dec.median,
        "encode_cpu_s": sorted(cpu_enc)[len(cpu_enc) // 2],
        "decode_cpu_s": sorted(cpu_dec)[len(cpu_dec) // 2],
        "encode_samples_s": t_enc.samples,
        "decode_samples_s": t_dec.samples,
        "encode_peak_mem": mem_enc.to_dict(),
        "decode_peak_mem": mem_dec.to_dict(),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["tiny", "full"], choices=sorted(MODELS))
    p.add_argument("--size", type=int, default=432)
    p.add_argument("--frames", type=int, default=1)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--device", default="auto")
    p.add_argument("--tiling", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    torch.set_grad_enabled(False)
    rows = [bench_one(m, args, device, dtype) for m in args.models]
    hdr = (f"{'model':6} {'params':>8} {'input':>16} {'enc wall s':>10} {'dec wall s':>10} {'enc cpu s':>9} "
           f"{'dec cpu s':>9} {'enc/s':>6} {'dec/s':>6} {'peak MB':>8}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        peak = max(r["encode_peak_mem"]["delta_bytes"], r["decode_peak_mem"]["delta_bytes"]) / 2**20
        print(f"{r['model']:6} {r['params_m']:7.1f}M {'x'.join(map(str, r['input'])):>16} {r['encode_s']:10.2f} "
              f"{r['decode_s']:10.2f} {r['encode_cpu_s']:9.2f} {r['decode_cpu_s']:9.2f} "
              f"{r['encode_items_per_s']:6.3f} {r['decode_items_per_s']:6.3f} {peak:8.0f}")
    out = Path(args.out or f"outputs/bench_vae_{device_name(device)}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine_info(device), "args": vars(args), "results": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()
