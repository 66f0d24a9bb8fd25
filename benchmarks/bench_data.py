"""Loading throughput of the image-text loader (samples/s) on generated data.

Generates ``--n`` JPEG/PNG images of ``--src`` pixels (random content, so decoding is real work) and a
jsonl, builds a small demo tokenizer, then times ``ImageTextDataset`` (decode -> RGB -> resize + centre
crop -> [-1, 1] -> sequence layout) through a ``DataLoader`` for each worker count. Prints a table and
writes JSON (default ``outputs/bench_data.json``).

    python -m benchmarks.bench_data --n 256 --res 432 --workers 0 2 --batch 8
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from benchmarks.common import machine_info
from datasets.base import Collator
from datasets.image_text import ImageTextDataset
from datasets.sequence import RESOLUTION_PRESETS, SequenceBuilder
from datasets.tokenizer import build_demo_tokenizer, load_tokenizer

CAPTIONS = [
    "The image features a red circle above a blue square on a white background.",
    "Two green triangles to the left of a yellow star, drawn in a flat style.",
    "A photo of a small dog running across a grassy field in the afternoon sun.",
]


def make_data(root: Path, n: int, src: int, fmt: str, seed: int = 0) -> Path:
    """``n`` random images (``src`` x ~1.25*src) + jsonl in ``root``."""
    rng = np.random.default_rng(seed)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        # smooth random content (upsampled noise) so codecs behave like on photos, not on white noise
        small = rng.integers(0, 255, (src // 16, src * 5 // 64, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((src * 5 // 4, src), Image.BILINEAR)
        path = img_dir / f"{i:06d}.{fmt}"
        img.save(path, quality=90) if fmt == "jpg" else img.save(path)
        lines.append(json.dumps({"path": str(path), "prompt": CAPTIONS[i % len(CAPTIONS)]}))
    jl = root / "pairs.jsonl"
    jl.write_text("\n".join(lines) + "\n")
    return jl


def run(n: int, res: int, src: int, workers: list[int], batch: int, fmt: str, epochs: int,
        fast: tuple[bool, ...] = (False,)) -> dict[str, Any]:
    preset = RESOLUTION_PRESETS.get(res)
    max_len = preset.max_seq_len if preset else 1024
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        jl = make_data(root, n, src, fmt)
        gen_s = time.perf_counter() - t0
        tok, sp = load_tokenizer(build_demo_tokenizer(CAPTIONS * 20, root / "tok", 486))
        builder = SequenceBuilder(sp, tokenizer=tok, max_seq_len=max_len)
        for w, f in [(w, f) for f in fast for w in workers]:
            ds = ImageTextDataset(jl, builder, resolution=res, cond_dropout_prob=0.1, fast_jpeg_decode=f)
            dl = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=w, collate_fn=Collator(sp.pad),
                            drop_last=True, persistent_workers=w > 0)
            next(iter(dl))  # warm-up: worker start, tokenizer, first decode
            count, t = 0, time.perf_counter()
            for _ in range(epochs):
                for b in dl:
                    count += b["input_ids"].shape[0]
            dt = time.perf_counter() - t
            rows.append({"workers": w, "fast_jpeg_decode": f, "samples": count, "seconds": round(dt, 3),
                         "samples_per_s": round(count / dt, 1), "batch": batch})
    return {"benchmark": "image_text_loader", "n_images": n, "src_px": [src * 5 // 4, src], "resolution": res,
            "format": fmt, "max_seq_len": max_len, "data_gen_s": round(gen_s, 2), "results": rows,
            "machine": machine_info(torch.device("cpu"))}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=128, help="images to generate")
    ap.add_argument("--res", type=int, default=432, help="training resolution")
    ap.add_argument("--src", type=int, default=512, help="source image height (width = 1.25x)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--format", choices=["jpg", "png"], default="jpg")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--fast", action="store_true", help="also time DCT-scaled JPEG decoding (not bit-exact)")
    ap.add_argument("--out", default="outputs/bench_data.json")
    a = ap.parse_args(argv)
    result = run(a.n, a.res, a.src, a.workers, a.batch, a.format, a.epochs, (False, True) if a.fast else (False,))
    print(f"image-text loader: {a.n} {a.format} images {result['src_px'][0]}x{result['src_px'][1]} -> {a.res}^2, "
          f"batch {a.batch}, cpu threads {result['machine']['cpu_threads']}, "
          f"load {result['machine'].get('loadavg_1m', float('nan')):.1f}")
    print(f"{'workers':>8} {'fast_jpeg':>10} {'samples':>8} {'seconds':>8} {'samples/s':>10}")
    for r in result["results"]:
        print(f"{r['workers']:>8} {str(r['fast_jpeg_decode']):>10} {r['samples']:>8} {r['seconds']:>8.2f} "
              f"{r['samples_per_s']:>10.1f}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
