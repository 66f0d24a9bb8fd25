"""Helpers shared by the evaluation samplers: sharding, per-prompt seeds, atomic writes, GenEval
sample-folder layout, pipeline loading.

Seeds are a function of the *global* prompt index and the sample number only, so a run sharded over
any number of processes (or resumed) produces the same images as a single-process run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "shard_indices", "process_rank", "sample_seeds", "save_png_atomic", "write_text_atomic",
    "geneval_prompt_dir", "geneval_prompt_complete", "write_geneval_prompt", "make_grid", "load_pipeline",
    "resolve_device_dtype", "read_jsonl", "load_eval_config",
]


def process_rank(device_id: int = -1, num_devices: int = -1) -> tuple[int, int]:
    """(rank, world size). Explicit ``device_id``/``num_devices`` (the official CLI keys, for one
    background process per GPU) win; otherwise accelerate's ``PartialState`` (``accelerate launch``),
    otherwise a single process."""
    if num_devices is not None and num_devices > 0:
        if not 0 <= device_id < num_devices:
            raise ValueError(f"device_id must be in [0, {num_devices}) when num_devices is given, got {device_id}")
        return device_id, num_devices
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1  # plain single process: no need to touch torch.distributed
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes == world:
        return state.process_index, state.num_processes
    # torchrun on a machine without an accelerator: PartialState stays single-process unless told cpu=True,
    # but sharding only needs the launcher's rank variables (no process group is used here)
    return int(os.environ.get("RANK", "0")), world


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """Contiguous split of ``range(n)`` into ``world`` parts like ``numpy.array_split`` (the first
    ``n % world`` parts get one extra item, as in the reference scripts); returns part ``rank``."""
    return [int(i) for i in np.array_split(np.arange(n), world)[rank]]


def sample_seeds(base_seed: int, index: int, n_samples: int) -> list[int]:
    """Seeds of the ``n_samples`` images of global prompt ``index`` (independent of sharding)."""
    return [base_seed + index * n_samples + k for k in range(n_samples)]


def save_png_atomic(img: Image.Image, path: str | Path) -> None:
    """Write via a temporary name then rename, so a killed run never leaves a truncated PNG that the
    resume logic would count as done."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_jsonl(path: str | Path) -> list[dict]:
    rows = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: bad JSON line ({e})") from e
    return rows


# ---- GenEval layout: <outdir>/<00000>/metadata.jsonl + samples/<00000>.png ----------------------
def geneval_prompt_dir(outdir: str | Path, index: int) -> Path:
    return Path(outdir) / f"{index:05d}"


def geneval_prompt_complete(outdir: str | Path, index: int, n_samples: int) -> bool:
    """A prompt is done when its metadata and all ``n_samples`` sample files exist (metadata is
    written last, so its presence alone already implies the samples; both are checked anyway)."""
    d = geneval_prompt_dir(outdir, index)
    return (d / "metadata.jsonl").is_file() and all(
        (d / "samples" / f"{k:05d}.png").is_file() for k in range(n_samples))


def make_grid(images: Sequence[Image.Image], cols: int, rows: int | None = None,
              tile: int | None = None) -> Image.Image:
    """Row-major grid on a white RGB canvas (image i at row i // cols, column i % cols)."""
    if not images:
        raise ValueError("no images for the grid")
    tile = tile or images[0].size[0]
    rows = rows or -(-len(images) // cols)
    if len(images) > rows * cols:
        raise ValueError(f"{len(images)} images do not fit a {rows}x{cols} grid")
    canvas = Image.new("RGB", (cols * tile, rows * tile), (255, 255, 255))
    for i, im in enumerate(images):
        if im.size != (tile, tile):
            im = im.resize((tile, tile), Image.BICUBIC)
        canvas.paste(im.convert("RGB"), ((i % cols) * tile, (i // cols) * tile))
    return canvas


def write_geneval_prompt(outdir: str | Path, index: int, metadata: dict[str, Any], images: Sequence[Image.Image],
                         save_grid: bool = False) -> Path:
    """Write one prompt's folder in the GenEval evaluator layout; metadata last (the "done" marker)."""
    d = geneval_prompt_dir(outdir, index)
    for k, im in enumerate(images):
        save_png_atomic(im.convert("RGB"), d / "samples" / f"{k:05d}.png")
    if save_grid:
        save_png_atomic(make_grid(images, cols=min(len(images), 4)), d / "grid.png")
    # GenEval reads this with json.load: a single JSON object, no trailing newline
    write_text_atomic(d / "metadata.jsonl", json.dumps(metadata))
    return d


# ---- pipeline ------------------------------------------------------------------------------------
def resolve_device_dtype(device: str = "auto", dtype: str = "auto") -> tuple[str, Any]:
    """``auto`` -> the accelerate process device (cuda/mps/xpu...) or cpu; bf16 off-CPU, fp32 on CPU."""
    import torch

    if device == "auto":
        try:
            from accelerate import PartialState

            device = str(PartialState().device)
        except Exception:
            device = "cpu"
    if dtype == "auto":
        tdtype = torch.float32 if device == "cpu" else torch.bfloat16
    else:
        tdtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        if not isinstance(tdtype, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}")
    return device, tdtype


def load_pipeline(model_path: str, vae_path: str | None = None, tokenizer_path: str | None = None,
                  device: str = "auto", dtype: str = "auto") -> Any:
    """Load ``generation.pipeline.Showo2Pipeline`` (imported lazily: the samplers' tests use fakes)."""
    if not model_path:
        raise ValueError("model_path= is required to generate (or pass images=/answers= to score existing outputs)")
    from generation.pipeline import Showo2Pipeline  # type: ignore[import-not-found]

    dev, tdtype = resolve_device_dtype(device, dtype)
    return Showo2Pipeline.from_pretrained(model_path, vae_path=vae_path or None, tokenizer_path=tokenizer_path or None,
                                          device=dev, dtype=tdtype)


def load_eval_config(argv: Sequence[str] | None, defaults: dict[str, Any], usage: str) -> Any:
    """``utils.config.load_config`` with the script's defaults *under* an optional ``config=FILE.yaml``
    (so a YAML may set only some keys; keys unknown to the script fail, naming the key)."""
    import sys

    from omegaconf import OmegaConf

    from utils.config import ConfigError, load_config, load_yaml

    argv = list(sys.argv[1:] if argv is None else argv)
    base = OmegaConf.create(dict(defaults))
    rest = []
    for a in argv:
        if a.startswith("config="):
            y = load_yaml(a.split("=", 1)[1])
            unknown = sorted(set(y.keys()) - set(defaults))
            if unknown:
                raise ConfigError(f"unknown config key(s) {unknown} in {a.split('=', 1)[1]}")
            base = OmegaConf.merge(base, y)
        else:
            rest.append(a)
    return load_config(rest, base, usage)


def run_sampler_cli(argv: Sequence[str] | None, defaults: dict[str, Any], usage: str,
                    sample_fn: Callable[[dict[str, Any], Any], list[int]], pipe: Any = None) -> list[int]:
    """Shared ``main`` of the benchmark samplers: config, output folder, the effective settings saved *next to*
    (not inside) the output folder (the external scorers treat every entry inside as a sample), then sampling."""
    from utils.config import save_config, to_plain

    cfg = load_eval_config(argv, defaults, usage)
    Path(cfg.outdir).mkdir(parents=True, exist_ok=True)
    rank, _ = process_rank(cfg.device_id, cfg.num_devices)
    if rank == 0:
        save_config(cfg, Path(cfg.outdir).with_name(Path(cfg.outdir).name + "_config.yaml"))
    return sample_fn(to_plain(cfg), pipe)


def sample_prompt_shard(cfg: dict[str, Any], prompts: list[dict[str, Any]], pipe: Any, *, tag: str,
                        is_done: Callable[[int], bool], write: Callable[[int, list[Image.Image]], None]) -> list[int]:
    """The benchmark sampling loop shared by GenEval and DPG: this process's contiguous share of ``prompts``,
    prompts already done skipped (resume), ``n_samples`` images per prompt seeded by the global index (results do
    not depend on sharding or batching), whole prompts per pipeline call so each output completes at once.
    Returns the global indices written."""
    import time

    rank, world = process_rank(cfg["device_id"], cfg["num_devices"])
    mine = shard_indices(len(prompts), rank, world)
    todo = [i for i in mine if not is_done(i)]
    print(f"[{tag}] rank {rank}/{world}: {len(mine)} prompts, {len(mine) - len(todo)} already done", flush=True)
    if not todo:
        return []
    if pipe is None:
        pipe = load_pipeline(cfg["model_path"], cfg["vae_path"], cfg["tokenizer_path"], cfg["device"], cfg["dtype"])
    n = int(cfg["n_samples"])
    per_call = max(1, int(cfg["batch_size"]) // n)
    done: list[int] = []
    t0 = time.time()
    for s in range(0, len(todo), per_call):
        idx = todo[s:s + per_call]
        texts = [prompts[i]["prompt"] for i in idx for _ in range(n)]
        seeds = [x for i in idx for x in sample_seeds(int(cfg["seed"]), i, n)]
        images = pipe.text_to_image(texts, guidance_scale=float(cfg["guidance_scale"]),
                                    num_steps=int(cfg["num_inference_steps"]), sampler=cfg["sampler"], seeds=seeds,
                                    batch_size=int(cfg["batch_size"]), resolution=int(cfg["resolution"]),
                                    progress=False)
        if len(images) != len(texts):
            raise RuntimeError(f"pipeline returned {len(images)} images for {len(texts)} prompts")
        for j, i in enumerate(idx):
            write(i, images[j * n:(j + 1) * n])
            done.append(i)
        print(f"[{tag}] rank {rank}: {len(done)}/{len(todo)} prompts ({time.time() - t0:.0f}s)", flush=True)
    return done
