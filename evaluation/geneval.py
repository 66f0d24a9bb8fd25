"""GenEval sampling: write images in exactly the layout the external GenEval evaluator reads.

Layout (reference-inference section 5.1)::

    <outdir>/<00000>/metadata.jsonl      the prompt's metadata object, one JSON object, no trailing newline
    <outdir>/<00000>/samples/00000.png   n_samples RGB images per prompt (five-digit names)
    <outdir>/<00000>/grid.png            optional (save_grid=true)

Defaults follow the official protocol: rewritten prompts, 4 images per prompt, guidance 7.5,
100 time-grid points (99 Euler steps), 432 px. Every key can be overridden on the command line.

Sharding: the global prompt list is split into contiguous parts (``numpy.array_split``, like the
reference) over the processes of ``accelerate launch`` (or explicit ``device_id``/``num_devices``
for one background process per GPU). Seeds depend only on the global prompt index and the sample
number, so the images do not depend on the number of processes. A prompt whose metadata and sample
files all exist is skipped (resume).

    accelerate launch -m evaluation.geneval model_path=CKPT outdir=geneval_samples
    python -m evaluation.geneval --help
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation.common import (
    geneval_prompt_complete,
    read_jsonl,
    sample_prompt_shard,
    write_geneval_prompt,
)

__all__ = ["DEFAULTS", "load_geneval_prompts", "sample_geneval", "main"]

DEFAULTS: dict[str, Any] = {
    "model_path": "",            # checkpoint for generation.pipeline.Showo2Pipeline.from_pretrained
    "vae_path": "",
    "tokenizer_path": "",
    "device": "auto",            # auto: this process's accelerate device (cuda:k), else cpu
    "dtype": "auto",             # auto: bfloat16 off-CPU (as the reference), float32 on CPU
    "outdir": "outputs/geneval_samples",
    "validation_prompts_file": "prompts/geneval_meta_data_rewritten.jsonl",
    "n_samples": 4,              # images per prompt (GenEval protocol: 4)
    "batch_size": 4,             # images per text_to_image call (whole prompts are kept together)
    "guidance_scale": 7.5,
    "num_inference_steps": 100,  # time-grid points (n - 1 model evaluations, reference quirk Q9)
    "sampler": "euler",
    "resolution": 432,
    "seed": 0,                   # image k of prompt i uses seed + i * n_samples + k
    "save_grid": False,
    "device_id": -1,             # explicit shard (one background process per GPU); -1 = accelerate
    "num_devices": -1,
    "max_prompts": -1,           # only the first N prompts (smoke tests); -1 = all
}

USAGE = """usage: [accelerate launch -m] python -m evaluation.geneval model_path=CKPT [outdir=DIR] [key=value ...]
Samples GenEval images in the evaluator layout (<outdir>/<00000>/metadata.jsonl + samples/00000.png).
Resumable: finished prompts are skipped. Score with the external GenEval tools (evaluation/README.md)."""


def load_geneval_prompts(path: str | Path) -> list[dict[str, Any]]:
    """GenEval metadata jsonl: one object per line with at least ``prompt`` (and ``tag``/``include``)."""
    rows = read_jsonl(path)
    for i, r in enumerate(rows):
        if "prompt" not in r:
            raise ValueError(f"{path}: line {i + 1} has no 'prompt'")
    return rows


def sample_geneval(cfg: dict[str, Any], pipe: Any = None) -> list[int]:
    """Sample this process's share of prompts; returns the global indices it wrote (skips completed ones)."""
    prompts = load_geneval_prompts(cfg["validation_prompts_file"])
    if cfg["max_prompts"] and cfg["max_prompts"] > 0:
        prompts = prompts[: cfg["max_prompts"]]
    n, outdir = int(cfg["n_samples"]), Path(cfg["outdir"])

    def write(i: int, images: list) -> None:
        write_geneval_prompt(outdir, i, prompts[i], images, save_grid=bool(cfg["save_grid"]))

    return sample_prompt_shard(cfg, prompts, pipe, tag="geneval", write=write,
                               is_done=lambda i: geneval_prompt_complete(outdir, i, n))


def main(argv: Sequence[str] | None = None, pipe: Any = None) -> list[int]:
    from evaluation.common import run_sampler_cli

    return run_sampler_cli(argv, DEFAULTS, USAGE, sample_geneval, pipe)

if __name__ == "__main__":
    main(sys.argv[1:])
