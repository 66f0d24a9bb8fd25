"""Text-to-video and image-to-video:
``python inference_video.py [config=configs/inference/video.yaml] model_path=... mode=t2v prompts="a|b"``
``python inference_video.py ... mode=i2v images="first.png" prompts="..."``

Writes ``<outdir>/<index>_<slug>.mp4`` (GIF when no mp4 encoder is available or ``format=gif``) and
``results.json``. In i2v mode the first latent frame is the encoded image (kept fixed).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from generation.cli import build_pipeline, read_lines, run_entry_point, split_list, write_json

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "inference" / "video.yaml"
USAGE = __doc__


def main(argv: list[str]) -> int:
    from generation.pipeline import InputError
    from inference_t2i import slug
    from utils.config import load_config, to_plain
    from utils.media import write_video

    cfg = load_config(argv, DEFAULT_CONFIG, USAGE)
    if cfg.mode not in ("t2v", "i2v"):
        raise InputError(f"mode must be t2v or i2v, got {cfg.mode!r}")
    prompts = split_list(cfg.prompts) if cfg.prompts is not None else (read_lines(cfg.prompts_file) if cfg.prompts_file else [])
    if not prompts:
        raise InputError("no prompts (give prompts=\"a|b\" or prompts_file=...)")
    images = split_list(cfg.images)
    if cfg.mode == "i2v":
        if len(images) == 1 and len(prompts) > 1:
            images = images * len(prompts)
        if len(images) != len(prompts):
            raise InputError(f"i2v needs one image per prompt: {len(images)} images, {len(prompts)} prompts")
        for im in images:
            if not Path(im).is_file():
                raise InputError(f"image not found: {im}")
    if cfg.format not in ("mp4", "gif"):
        raise InputError(f"format must be mp4 or gif, got {cfg.format!r}")
    pipe = build_pipeline(cfg, resolution=int(cfg.resolution), shift=float(cfg.shift), cached=bool(cfg.cached))
    seeds = [int(cfg.seed) + i for i in range(len(prompts))]
    kw = dict(guidance_scale=float(cfg.guidance_scale), num_steps=int(cfg.num_inference_steps),
              sampler=str(cfg.sampler), seeds=seeds, batch_size=int(cfg.batch_size),
              resolution=int(cfg.resolution), progress=bool(cfg.progress))
    t0 = time.time()
    if cfg.mode == "i2v":
        clips = pipe.image_to_video(images, prompts, int(cfg.num_frames), **kw)
    else:
        clips = pipe.text_to_video(prompts, int(cfg.num_frames), **kw)
    elapsed = time.time() - t0
    out = Path(cfg.outdir)
    files = []
    for i, (p, clip) in enumerate(zip(prompts, clips)):
        written = write_video(clip, out / f"{i:05d}_{slug(p)}.{cfg.format}", fps=float(cfg.fps))
        files.append(Path(written).name)
    write_json({"prompts": prompts, "images": images or None, "seeds": seeds, "files": files,
                "frames": int(clips[0].shape[0]), "seconds_total": round(elapsed, 3), "settings": to_plain(cfg)},
               out / "results.json")
    print(f"wrote {len(files)} clip(s) and results.json to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
