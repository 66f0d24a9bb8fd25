"""Encode a dataset once with the Wan2.1 VAE into a sharded latent cache (``datasets/latent_cache.py``).

    python scripts/cache_latents.py data.annotation=train.jsonl output.dir=cache/t2i_432 \\
        vae.source=/ckpt/Wan2.1_VAE.pth data.resolution=432
    python scripts/cache_latents.py config=my_cache.yaml          # same keys in YAML

The annotation is jsonl with ``{"path": ..., "prompt": ...}`` per line (``data.kind=video`` for video files or
frame folders). Images are preprocessed exactly like the image-text loader (``datasets.transforms``: reference RGB
rules, shorter side -> resolution, centre crop; ``data.preprocess=pad`` for the understanding letterbox);
videos are sampled uniformly to ``data.num_frames`` (1 + 4k) and centre-cropped per frame.

Resumable: shard ``i`` holds records ``[i*S, (i+1)*S)``; completed shards are skipped on a rerun, a shard that was
being written when the run died is redone. Bad samples (missing, corrupt, too small, ...) are counted, logged and
listed in ``bad.jsonl``; they never stop the run. ``run(cfg)`` is the importable entry point (returns a summary).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # run as a plain script from anywhere
    sys.path.insert(0, str(_ROOT))

import torch  # noqa: E402

from utils.config import load_config, to_plain  # noqa: E402

logger = logging.getLogger("cache_latents")

DEFAULT_CONFIG: dict[str, Any] = {
    "data": {
        "annotation": None,  # jsonl with {"path", "prompt"} per line (required)
        "root": None,  # folder that relative paths are resolved against (default: the annotation's folder)
        "kind": "image",  # image | video
        "resolution": 432,  # square output size in pixels (multiple of 16)
        "num_frames": 17,  # videos only: 1 + 4k
        "preprocess": "crop",  # crop (generation) | pad (understanding letterbox)
        "min_size": None,  # [min_height, min_width] filter for images (e.g. [256, 256] for stage 1)
        "limit": None,  # only the first N records (debugging)
    },
    "vae": {
        "source": "random",  # random | path to Wan2.1_VAE.pth | diffusers folder | hub id
        "config": "configs/vae/tiny.json",  # for source=random
        "seed": 0,  # for source=random
        "dtype": "float32",  # VAE weights: float32 | bfloat16
        "autocast": None,  # null | bfloat16 (official: fp32 weights under bf16 autocast, GPU)
    },
    "output": {
        "dir": None,  # cache directory (required)
        "shard_size": 256,  # samples per shard file
        "dtype": "float32",  # storage: float32 (bit-exact) | bfloat16 | float16
        "overwrite": False,  # wipe an existing cache in output.dir instead of resuming
    },
    "batch_size": 8,
    "workers": 2,  # threads decoding/preprocessing images
    "device": "auto",  # auto | cpu | cuda | cuda:1 ...
    "max_shards": None,  # stop after writing this many shards in this run (testing / chunked jobs)
    "progress": True,
}

USAGE = __doc__
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_records(path: Path, limit: int | None = None) -> list[dict[str, Any] | None]:
    """Annotation lines in order; a malformed line becomes ``None`` (kept so shard boundaries stay stable)."""
    out: list[dict[str, Any] | None] = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            out.append(rec if isinstance(rec, dict) and isinstance(rec.get("path"), str) else None)
        except json.JSONDecodeError:
            out.append(None)
        if limit is not None and len(out) >= limit:
            break
    return out


def build_vae(v: Any, device: torch.device):
    from models.vae import WanVAE

    dtype = _DTYPES[str(v.dtype)]
    autocast = _DTYPES[str(v.autocast)] if v.get("autocast") else None
    if str(v.source) == "random":
        cfg_path = Path(str(v.config))
        if not cfg_path.is_absolute() and not cfg_path.exists():
            cfg_path = _ROOT / cfg_path
        return WanVAE.from_config(cfg_path, seed=int(v.seed), dtype=dtype, device=device, autocast_dtype=autocast)
    return WanVAE.load(str(v.source), dtype=dtype, device=device, autocast_dtype=autocast)


def _load_pixels(path: Path, d: Any) -> torch.Tensor:
    """One sample as pixels in [-1, 1]: (3, R, R) for images, (3, F, R, R) for videos."""
    res = int(d.resolution)
    if d.kind == "image":
        from datasets.transforms import load_image, preprocess_image

        min_size = tuple(d.min_size) if d.get("min_size") else None
        return preprocess_image(load_image(path, min_size=min_size), res, str(d.preprocess))
    from PIL import Image

    from datasets.transforms import frames_to_tensor, resize_and_pad, resize_center_crop
    from utils.media import read_video_frames

    frames = read_video_frames(path, int(d.num_frames), "uniform")
    op = resize_center_crop if d.preprocess == "crop" else resize_and_pad
    import numpy as np

    return frames_to_tensor(np.stack([np.asarray(op(Image.fromarray(f), res)) for f in frames]))


class _BadRecord(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _reason(err: BaseException) -> str:
    reason = getattr(err, "reason", None)
    if isinstance(reason, str):
        return reason
    try:
        from datasets.transforms import reason_of

        return reason_of(err)
    except ImportError:  # pragma: no cover - transforms always present in this repo
        return type(err).__name__


def run(cfg: Any) -> dict[str, Any]:
    """Encode (or finish encoding) the cache described by ``cfg``; returns a summary dict."""
    from datasets.latent_cache import LatentCacheWriter
    from models.vae import check_num_frames, check_resolution

    d, o = cfg.data, cfg.output
    if not d.annotation or not o.dir:
        raise SystemExit("data.annotation and output.dir are required (see --help)")
    if d.kind not in ("image", "video"):
        raise SystemExit(f"data.kind must be image or video, got {d.kind!r}")
    check_resolution(int(d.resolution), int(d.resolution))
    if d.kind == "video":
        check_num_frames(int(d.num_frames))
    ann = Path(str(d.annotation))
    root = Path(str(d.root)) if d.get("root") else ann.parent
    records = read_records(ann, d.get("limit"))
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    vae = build_vae(cfg.vae, device)
    meta = {
        "vae": vae.identity(),
        "kind": str(d.kind),
        "resolution": int(d.resolution),
        "num_frames": int(d.num_frames) if d.kind == "video" else None,
        "preprocess": str(d.preprocess),
        "min_size": list(d.min_size) if d.get("min_size") else None,
        "dtype": str(o.dtype),
        "shard_size": int(o.shard_size),
        "annotation": str(ann),
        "annotation_sha256": _sha256(ann),
        "num_records": len(records),
    }
    writer = LatentCacheWriter(o.dir, meta, overwrite=bool(o.overwrite))
    size = int(o.shard_size)
    num_shards = (len(records) + size - 1) // size
    done = writer.completed_shards()
    todo = [s for s in range(num_shards) if s not in done]
    logger.info("%d records -> %d shards; %d already done, %d to encode (VAE %s)",
                len(records), num_shards, len(done), len(todo), vae.identity()["fingerprint"])

    from tqdm import tqdm

    already = sum(min(size, len(records) - s * size) for s in done if s < num_shards)
    bar = tqdm(total=len(records), initial=already, desc="caching latents", unit="sample",
               disable=not cfg.get("progress", True))
    n_good = n_bad = shards_written = 0
    bad_reasons: dict[str, int] = {}
    t0 = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=max(1, int(cfg.workers)))
    seen: set[str] = set()
    for s in range(num_shards):  # keys of finished shards count as seen (duplicate detection across shards)
        if s in done:
            seen.update(r["path"] for r in records[s * size:(s + 1) * size] if r is not None)
    try:
        for shard in todo:
            if cfg.get("max_shards") is not None and shards_written >= int(cfg.max_shards):
                break
            lo, hi = shard * size, min((shard + 1) * size, len(records))
            entries, means, logvars, bad = [], [], [], []

            def load(i: int) -> tuple[int, torch.Tensor | None, BaseException | None]:
                rec = records[i]
                try:
                    if rec is None:
                        raise _BadRecord("malformed_record", "malformed annotation line (needs a string 'path')")
                    return i, _load_pixels(root / rec["path"], d), None
                except Exception as e:  # noqa: BLE001 - every bad sample is counted, never fatal
                    return i, None, e

            for b0 in range(lo, hi, int(cfg.batch_size)):
                idx = range(b0, min(b0 + int(cfg.batch_size), hi))
                batch_ids, batch_pix = [], []
                for i, pix, err in pool.map(load, idx):
                    rec = records[i]
                    key = rec["path"] if rec is not None else None
                    if err is None and key in seen:
                        err = _BadRecord("duplicate", "duplicate path (first occurrence kept)")
                    if err is not None:
                        reason = _reason(err)
                        bad.append({"id": i, "key": key, "reason": reason, "error": str(err)[:300]})
                        bad_reasons[reason] = bad_reasons.get(reason, 0) + 1
                        logger.warning("skipping record %d (%s): %s: %s", i, key, reason, str(err)[:200])
                        continue
                    seen.add(key)
                    batch_ids.append(i)
                    batch_pix.append(pix)
                if batch_pix:
                    mean, logvar = vae.encode_posterior(torch.stack(batch_pix).to(device))
                    means.append(mean.cpu())
                    logvars.append(logvar.cpu())
                    for i in batch_ids:
                        rec = records[i]
                        entries.append({"id": i, "key": rec["path"], "caption": rec.get("prompt"),
                                        "source": str(root / rec["path"]), "kind": str(d.kind)})
                bar.update(len(idx))
                bar.set_postfix(bad=n_bad + len(bad))
            writer.write_shard(
                shard,
                entries,
                torch.cat(means) if means else None,
                torch.cat(logvars) if logvars else None,
                bad=bad,
                records=(lo, hi),
            )
            shards_written += 1
            n_good += len(entries)
            n_bad += len(bad)
    finally:
        pool.shutdown()
        bar.close()
    elapsed = time.perf_counter() - t0
    summary = {
        "dir": str(o.dir),
        "records": len(records),
        "shards_total": num_shards,
        "shards_skipped": len(done),
        "shards_written": shards_written,
        "complete": len(writer.completed_shards()) == num_shards,
        "encoded": n_good,
        "bad": n_bad,
        "bad_reasons": bad_reasons,
        "seconds": round(elapsed, 3),
        "vae": vae.identity(),
    }
    logger.info("cache summary: %s", json.dumps(summary))
    return summary


def _merge_yaml_over_defaults(argv: list[str]) -> tuple[list[str], Any]:
    """``config=x.yaml`` only needs the keys it changes: merge it over DEFAULT_CONFIG (overrides still checked)."""
    from omegaconf import OmegaConf

    from utils.config import load_yaml

    base = OmegaConf.create(DEFAULT_CONFIG)
    rest = []
    for arg in argv:
        if arg.startswith("config="):
            base = OmegaConf.merge(base, load_yaml(arg.split("=", 1)[1]))
        else:
            rest.append(arg)
    return rest, base


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_config(*_merge_yaml_over_defaults(list(sys.argv[1:] if argv is None else argv)), usage=USAGE)
    summary = run(cfg)
    print(json.dumps({k: v for k, v in summary.items() if k != "vae"}, indent=None))
    (Path(str(cfg.output.dir)) / "last_run.json").write_text(
        json.dumps({"config": to_plain(cfg), "summary": summary}, indent=2) + "\n"
    )
    return summary


if __name__ == "__main__":
    main()
