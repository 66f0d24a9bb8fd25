"""Mixed-modality story generation:
``python inference_mixed_modality.py [config=configs/inference/mixed_modality.yaml] model_path=... key=value``

The model writes text until it emits ``<|vision_start|>``; an image is generated in that slot; text
continues. Each story is saved as ``story<k>.md`` + ``story<k>.html`` (+ PNGs and a JSON record).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from generation.cli import build_pipeline, run_entry_point, write_json

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "inference" / "mixed_modality.yaml"
USAGE = __doc__


def main(argv: list[str]) -> int:
    from generation.pipeline import InputError
    from utils.config import load_config, to_plain

    cfg = load_config(argv, DEFAULT_CONFIG, USAGE)
    if int(cfg.num_stories) < 1:
        raise InputError(f"num_stories must be >= 1, got {cfg.num_stories}")
    pipe = build_pipeline(cfg, resolution=int(cfg.resolution), shift=float(cfg.shift))
    out = Path(cfg.outdir)
    summary = []
    for k in range(int(cfg.num_stories)):
        t0 = time.time()
        story = pipe.mixed_modality(
            str(cfg.prompt), rounds=int(cfg.rounds), max_new_tokens=int(cfg.max_new_tokens),
            temperature=float(cfg.temperature), top_k=cfg.top_k, top_p=cfg.top_p,
            guidance_scale=float(cfg.guidance_scale), later_guidance_scale=cfg.later_guidance_scale,
            num_steps=int(cfg.num_inference_steps), sampler=str(cfg.sampler), history_t=float(cfg.history_t),
            retokenize=bool(cfg.retokenize), seed=int(cfg.seed) + k, resolution=int(cfg.resolution))
        paths = story.save(out, stem=f"story{k}")
        summary.append({"story": k, "seed": int(cfg.seed) + k, "images": len(story.images),
                        "texts": len(story.texts), "finished": story.finished,
                        "markdown": paths["markdown"].name, "html": paths["html"].name,
                        "seconds": round(time.time() - t0, 3)})
        print(f"story {k}: {len(story.texts)} text segment(s), {len(story.images)} image(s) -> {paths['html']}")
    write_json({"stories": summary, "settings": to_plain(cfg)}, out / "results.json")
    return 0


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
