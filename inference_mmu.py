"""Image / video understanding:
``python inference_mmu.py [config=configs/inference/mmu.yaml] images="a.png|b.jpg" videos=clip.mp4 questions="q1|q2"``

Every question is asked about every image / video (and once without media when neither is given).
Answers are printed and saved to ``<outdir>/answers.json`` with the effective settings.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from generation.cli import build_pipeline, run_entry_point, split_list, write_json

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "inference" / "mmu.yaml"
USAGE = __doc__
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def expand_images(items: list[str]) -> list[str]:
    """Files as given; folders -> their image files (by suffix, case-insensitive, sorted)."""
    from generation.pipeline import InputError

    out: list[str] = []
    for it in items:
        p = Path(it)
        if p.is_dir():
            files = sorted(str(f) for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InputError(f"no image files in folder {p}")
            out += files
        elif p.is_file():
            out.append(str(p))
        else:
            raise InputError(f"image not found: {p}")
    return out


def main(argv: list[str]) -> int:
    from generation.pipeline import InputError
    from utils.config import load_config, to_plain

    cfg = load_config(argv, DEFAULT_CONFIG, USAGE)
    questions = split_list(cfg.questions)
    if not questions:
        raise InputError("no question given (questions=\"...\")")
    images = expand_images(split_list(cfg.images))
    videos = split_list(cfg.videos)
    for v in videos:
        if not Path(v).exists():
            raise InputError(f"video not found: {v}")
    pipe = build_pipeline(cfg, resolution=int(cfg.resolution), vae_sample=bool(cfg.vae_sample))
    common = dict(max_new_tokens=int(cfg.max_new_tokens), temperature=float(cfg.temperature),
                  top_k=cfg.top_k, top_p=cfg.top_p, layout=str(cfg.layout), batch_size=int(cfg.batch_size),
                  official_mask_offset=cfg.official_mask_offset)
    records = []
    t0 = time.time()
    if images or not videos:
        media = images or [None]
        pairs = [(m, q) for m in media for q in questions]
        answers = pipe.understand([m for m, _ in pairs], [q for _, q in pairs], preprocess=cfg.preprocess,
                                  seeds=[int(cfg.seed) + i for i in range(len(pairs))], **common)
        records += [{"image": m, "question": q, "answer": a} for (m, q), a in zip(pairs, answers)]
    if videos:
        pairs = [(v, q) for v in videos for q in questions]
        answers = pipe.understand_video([v for v, _ in pairs], [q for _, q in pairs], num_frames=int(cfg.num_frames),
                                        video_mode=str(cfg.video_mode),
                                        seeds=[int(cfg.seed) + i for i in range(len(pairs))], **common)
        records += [{"video": v, "question": q, "answer": a} for (v, q), a in zip(pairs, answers)]
    elapsed = time.time() - t0
    for r in records:
        src = r.get("image") or r.get("video") or "(text only)"
        print(f"[{src}] Q: {r['question']}\nA: {r['answer']}\n")
    out = Path(cfg.outdir)
    write_json({"answers": records, "seconds_total": round(elapsed, 3), "settings": to_plain(cfg)},
               out / "answers.json")
    print(f"saved {len(records)} answers to {out / 'answers.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
