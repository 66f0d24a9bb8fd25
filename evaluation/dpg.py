"""DPG-Bench sampling: one 2x2 grid PNG per prompt, named ``<prompt_file_name>.png``.

Layout (reference-inference section 5.2): ``<outdir>/<prompt_file_name>.png``, a white RGB canvas of
2 x 2 tiles of ``resolution`` pixels (row-major: image i at row i // 2, column i % 2); at most 4
images per prompt (fewer leave white tiles), because the external scorer crops 4 tiles.

Defaults: ``prompts/dpg_bench_meta_data.json``, 4 images per prompt, guidance 10, 50 time-grid
points (49 Euler steps), 432 px. Sharding, per-prompt seeds and resume as in ``evaluation.geneval``
(a prompt is done when its grid PNG exists).

    accelerate launch -m evaluation.dpg model_path=CKPT outdir=dpg_samples
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation.common import make_grid, sample_prompt_shard, save_png_atomic

__all__ = ["DEFAULTS", "load_dpg_prompts", "sample_dpg", "main"]

DEFAULTS: dict[str, Any] = {
    "model_path": "",
    "vae_path": "",
    "tokenizer_path": "",
    "device": "auto",
    "dtype": "auto",
    "outdir": "outputs/dpg_samples",
    "validation_prompts_file": "prompts/dpg_bench_meta_data.json",
    "n_samples": 4,              # tiles per grid (the DPG scorer expects 4)
    "batch_size": 4,             # images per text_to_image call (whole prompts are kept together)
    "guidance_scale": 10.0,
    "num_inference_steps": 50,   # time-grid points (n - 1 model evaluations)
    "sampler": "euler",
    "resolution": 432,           # tile size; pass the same value to the scorer (dist_eval.sh DIR 432)
    "seed": 0,
    "device_id": -1,
    "num_devices": -1,
    "max_prompts": -1,
}

USAGE = """usage: [accelerate launch -m] python -m evaluation.dpg model_path=CKPT [outdir=DIR] [key=value ...]
Samples DPG-Bench 2x2 grids (<outdir>/<prompt_file_name>.png). Resumable. Scoring: evaluation/README.md."""

GRID = 2


def load_dpg_prompts(path: str | Path) -> list[dict[str, Any]]:
    """DPG metadata: a JSON list of ``{"prompt", "prompt_file_name"}``."""
    rows = json.loads(Path(path).read_text())
    names = set()
    for i, r in enumerate(rows):
        if "prompt" not in r or "prompt_file_name" not in r:
            raise ValueError(f"{path}: item {i} lacks 'prompt' or 'prompt_file_name'")
        if r["prompt_file_name"] in names:
            raise ValueError(f"{path}: duplicate prompt_file_name {r['prompt_file_name']!r}")
        names.add(r["prompt_file_name"])
    return rows


def grid_path(outdir: str | Path, item: dict[str, Any]) -> Path:
    return Path(outdir) / f"{item['prompt_file_name']}.png"


def sample_dpg(cfg: dict[str, Any], pipe: Any = None) -> list[int]:
    """Sample this process's share of prompts; returns the global indices it wrote."""
    n = int(cfg["n_samples"])
    if not 1 <= n <= GRID * GRID:
        raise ValueError(f"n_samples must be 1..{GRID * GRID} for the 2x2 DPG grid, got {n}")
    prompts = load_dpg_prompts(cfg["validation_prompts_file"])
    if cfg["max_prompts"] and cfg["max_prompts"] > 0:
        prompts = prompts[: cfg["max_prompts"]]
    outdir, res = Path(cfg["outdir"]), int(cfg["resolution"])

    def write(i: int, images: list) -> None:
        save_png_atomic(make_grid(images, cols=GRID, rows=GRID, tile=res), grid_path(outdir, prompts[i]))

    return sample_prompt_shard(cfg, prompts, pipe, tag="dpg", write=write,
                               is_done=lambda i: grid_path(outdir, prompts[i]).is_file())


def main(argv: Sequence[str] | None = None, pipe: Any = None) -> list[int]:
    from evaluation.common import run_sampler_cli

    return run_sampler_cli(argv, DEFAULTS, USAGE, sample_dpg, pipe)

if __name__ == "__main__":
    main(sys.argv[1:])
