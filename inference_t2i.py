"""Text-to-image: ``python inference_t2i.py [config=configs/inference/t2i.yaml] prompts="a|b" key=value ...``

Writes one PNG per prompt (``<outdir>/<index>_<slug>.png``), ``grid.png`` and ``results.json``
(prompts, seeds, effective settings, timing). Bad input -> one-line error, exit code 2.
"""

from __future__ import annotations

import math
import re
import sys
import time
from pathlib import Path

from generation.cli import build_pipeline, read_lines, run_entry_point, split_list, write_json

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "inference" / "t2i.yaml"
USAGE = __doc__


def slug(text: str, n: int = 40) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:n]
    return s or "prompt"


def make_grid(images, cols: int):
    from PIL import Image

    cols = max(1, min(cols, len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), (255, 255, 255))
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid


def main(argv: list[str]) -> int:
    from generation.pipeline import InputError
    from utils.config import load_config, to_plain

    cfg = load_config(argv, DEFAULT_CONFIG, USAGE)
    prompts = split_list(cfg.prompts) if cfg.prompts is not None else read_lines(cfg.prompts_file)
    if not prompts:
        raise InputError("no prompts (give prompts=\"a|b\" or prompts_file=...)")
    if int(cfg.batch_size) < 1:
        raise InputError(f"batch_size must be >= 1, got {cfg.batch_size}")
    pipe = build_pipeline(cfg, resolution=int(cfg.resolution), shift=float(cfg.shift), cached=bool(cfg.cached),
                          noise_bf16_round=cfg.noise_bf16_round)
    seeds = [int(cfg.seed) + i for i in range(len(prompts))]
    t0 = time.time()
    images = pipe.text_to_image(prompts, guidance_scale=float(cfg.guidance_scale),
                                num_steps=int(cfg.num_inference_steps), sampler=str(cfg.sampler), seeds=seeds,
                                batch_size=int(cfg.batch_size), resolution=int(cfg.resolution),
                                progress=bool(cfg.progress))
    elapsed = time.time() - t0
    out = Path(cfg.outdir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i, (p, im) in enumerate(zip(prompts, images)):
        name = f"{i:05d}_{slug(p)}.png"
        im.save(out / name)
        files.append(name)
    make_grid(images, int(cfg.grid_cols or 4)).save(out / "grid.png")
    write_json({
        "prompts": prompts, "seeds": seeds, "files": files, "grid": "grid.png",
        "seconds_total": round(elapsed, 3), "seconds_per_image": round(elapsed / len(prompts), 3),
        "settings": to_plain(cfg),
    }, out / "results.json")
    print(f"wrote {len(images)} images, grid.png and results.json to {out} ({elapsed / len(prompts):.2f} s/image)")
    return 0


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
