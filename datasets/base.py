"""Shared loader machinery: robust map-style dataset base, annotation readers, sample validation,
latent-cache adapter and the batch collate used by every loader.

A loader item is a dict::

    {"sequence": SequenceSample,            # datasets.sequence
     "pixels": [Tensor] | None,             # one per sequence slot: (3,H,W) image / (3,T,H,W) video, [-1,1]
     "latents": [Tensor] | None,            # instead of pixels when a latent cache is used: posterior
     "latent_logvars": [Tensor] | None,     #   mean (normalised) + raw log-variance, or plain latents
     "data_type": str, "text": str,         # official data_type ("t2i", "mmu", "interleaved_data", ...)
     "bad": {reason: n}, "index": int}      # reasons skipped to produce it, index actually served

``collate_samples`` turns a list of items into the batch dict of ``datasets.sequence.collate`` plus,
with N = B*M visual items in slot order ``i*M + j`` (padding slots hold a zero dummy):
``pixels`` (N, 3, [T,] H, W), or ``latent_mean`` + ``latent_logvar`` (cached posterior; the trainer
draws the sample), or ``latents``; a key is present only when the batch has that media. Always:
``t_min`` (N,) float (1 = clean item: understanding or dummy; 0 = generated), ``visual_valid`` /
``visual_generate`` (N,) bool, ``cond_frames`` (N,) long, ``bad_samples`` {reason: n}, ``texts``.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from datasets.sequence import SampleError, SequenceSample, collate
from datasets.transforms import BadSampleCounter, TooManyBadSamples, fetch_robust

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# annotation files
# --------------------------------------------------------------------------------------------

def read_jsonl(path: str | Path, required: Sequence[str], counter: BadSampleCounter) -> list[dict[str, Any]]:
    """Parse a JSON-lines file; empty / malformed lines and records missing ``required`` keys are
    skipped and counted (the reference aborts start-up instead). Raises ``TooManyBadSamples`` naming
    the file if too many lines are bad, ``FileNotFoundError`` if it does not exist."""
    rows: list[dict[str, Any]] = []
    lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    for no, line in enumerate(lines, 1):
        if not line.strip():
            counter.record("empty_line", f"{path}:{no}")
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            counter.record("malformed_json", f"{path}:{no}", err)
            continue
        if not isinstance(rec, dict) or any(k not in rec for k in required):
            counter.record("missing_key", f"{path}:{no}")
            continue
        rows.append(rec)
    _check_parse(path, len(rows), len(lines), counter)
    return rows


def read_json_list(path: str | Path, required: Sequence[str], counter: BadSampleCounter) -> list[dict[str, Any]]:
    """Parse a JSON file holding a list of records (LLaVA / VIST); bad records counted and skipped."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8", errors="replace"))
    except json.JSONDecodeError as err:
        raise TooManyBadSamples(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, list):
        raise TooManyBadSamples(f"{path}: expected a JSON list of samples, got {type(data).__name__}")
    rows = []
    for no, rec in enumerate(data):
        if not isinstance(rec, dict) or any(k not in rec for k in required):
            counter.record("missing_key", f"{path}[{no}]")
            continue
        rows.append(rec)
    _check_parse(path, len(rows), len(data), counter)
    return rows


def _check_parse(path: str | Path, good: int, total: int, counter: BadSampleCounter) -> None:
    bad = total - good
    if total == 0 or good == 0:
        raise TooManyBadSamples(f"{path}: no usable records ({total} lines/records)")
    if bad / total > counter.max_bad_fraction:
        raise TooManyBadSamples(f"{path}: {bad} of {total} records are bad (> {counter.max_bad_fraction:.0%}); "
                                f"reasons {dict(counter.counts)}")


# --------------------------------------------------------------------------------------------
# latent cache adapter
# --------------------------------------------------------------------------------------------

def open_latent_cache(cache: Any) -> Any:
    """A ``datasets.latent_cache.LatentCache`` for a directory (or pass an object through)."""
    if cache is None or not isinstance(cache, str | Path):
        return cache
    from datasets.latent_cache import LatentCache  # owned by the VAE engineer

    return LatentCache(cache)


def read_latent(cache: Any, key: str, *aliases: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(latent, logvar)`` for ``key`` (the media path as written in the annotation), else the first of
    ``aliases`` (e.g. the resolved absolute path) that the cache holds.

    A ``LatentCache`` record holds the normalised posterior mean and the raw log-variance: both are
    returned and the trainer draws the posterior sample per step (``models.vae.sample_from_posterior``,
    as the reference VAE-encodes every step). Caches that return a plain tensor give ``(tensor, None)``.
    """
    getter = getattr(cache, "get", None)
    out = None
    for k in (key, *aliases):
        out = getter(k) if callable(getter) else (cache[k] if k in cache else None)
        if out is not None:
            break
    if out is None:
        raise SampleError("missing_latent", key)
    logvar = None
    if isinstance(out, dict):
        logvar = out.get("latent_logvar")
        out = out.get("latent_mean", out.get("latent"))
    if not isinstance(out, torch.Tensor):
        raise SampleError("missing_latent", key)
    return out.float(), (logvar.float() if isinstance(logvar, torch.Tensor) else None)


def attach_latents(item: dict[str, Any], pairs: Sequence[tuple[torch.Tensor, torch.Tensor | None]]) -> None:
    """Put ``read_latent`` results on an item: ``latents`` (+ ``latent_logvars`` when every item has one)."""
    item["latents"] = [z for z, _ in pairs]
    logvars = [lv for _, lv in pairs]
    item["latent_logvars"] = logvars if logvars and all(lv is not None for lv in logvars) else None


# --------------------------------------------------------------------------------------------
# robust dataset base
# --------------------------------------------------------------------------------------------

def validate_item(item: dict[str, Any]) -> None:
    """Never yield a malformed sample: consistent lengths, slots inside the row, one visual per slot,
    finite pixels in [-1, 1]."""
    s: SequenceSample = item["sequence"]
    n = s.input_ids.numel()
    if s.input_ids.dim() != 1 or s.labels.shape != s.input_ids.shape or s.image_masks.shape != s.input_ids.shape:
        raise SampleError("malformed_sample", "tensor shapes differ")
    pos = s.modality_positions
    if pos.dim() != 2 or pos.shape[-1] != 2 or pos.shape[0] != len(s.visuals):
        raise SampleError("malformed_sample", "modality_positions / visuals mismatch")
    for off, ln in pos.tolist():
        if off < 1 or off + ln > n:
            raise SampleError("malformed_sample", f"slot ({off},{ln}) outside row of {n}")
    media = item.get("latents") if item.get("latents") is not None else item.get("pixels")
    if s.visuals:
        if media is None or len(media) != len(s.visuals):
            raise SampleError("malformed_sample", "visual items and media differ")
    # pixels come from uint8 (always in range): check shapes only; latents are checked for NaN/inf
    for p in item.get("pixels") or []:
        if p.dim() not in (3, 4) or p.shape[0] != 3 or p.dtype != torch.float32:
            raise SampleError("malformed_sample", f"pixels of shape {tuple(p.shape)} / {p.dtype}")
    for z in item.get("latents") or []:
        if z.dim() not in (3, 4) or not bool(torch.isfinite(z).all()):
            raise SampleError("malformed_sample", "latent with NaN/inf or bad shape")


class RobustDataset(Dataset):
    """Map-style dataset whose ``__getitem__`` never raises for one bad sample.

    Subclasses implement ``__len__`` and ``load(idx) -> item``. Failures are re-drawn iteratively
    (next index, wrap-around) and counted in ``self.counter`` (``BadSampleCounter``).
    """

    source: str = "<dataset>"

    def __init__(self, counter: BadSampleCounter | None = None, max_tries: int | None = 1000) -> None:
        self.counter = counter or BadSampleCounter()
        self.max_tries = max_tries
        self.epoch = 0  # seeds per-epoch randomness (CFG dropout, windows); set via (idx, epoch) keys

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def load(self, idx: int) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """``key`` = index, or ``(index, epoch)`` (the mixed loader passes the epoch so that per-epoch
        randomness is right inside DataLoader worker copies too)."""
        if isinstance(key, tuple | list):
            idx, self.epoch = int(key[0]), int(key[1])
        else:
            idx = int(key)
        return fetch_robust(len(self), idx, self.load, self.counter, self.source, validate_item, self.max_tries)


# --------------------------------------------------------------------------------------------
# collate
# --------------------------------------------------------------------------------------------

def _stack_media(items: Sequence[dict[str, Any]], key: str, m: int) -> torch.Tensor | list | None:
    per_row = [it.get(key) for it in items]
    if all(p is None for p in per_row):
        return None
    real = [t for p in per_row if p for t in p]
    if not real:
        return None
    dummy = torch.zeros_like(real[0])
    flat: list[torch.Tensor] = []
    for p in per_row:
        p = list(p or [])
        flat.extend(p + [dummy] * (m - len(p)))
    if all(t.shape == flat[0].shape for t in flat):
        return torch.stack(flat)
    return flat  # mixed shapes (e.g. images and videos): a list in slot order


def collate_samples(items: Sequence[dict[str, Any]], pad_id: int, *, pad_to: int | None = None,
                    max_slots: int | None = None) -> dict[str, Any]:
    """Batch loader items (see module doc)."""
    seqs = [it["sequence"] for it in items]
    batch = collate(seqs, pad_id, pad_to=pad_to, max_slots=max_slots)
    m = batch["modality_positions"].shape[1]
    pixels = _stack_media(items, "pixels", m)
    if pixels is not None:
        batch["pixels"] = pixels
    latents = _stack_media(items, "latents", m)
    if latents is not None:
        logvars = _stack_media(items, "latent_logvars", m)
        has_lv = all(it.get("latent_logvars") is not None for it in items if it.get("latents"))
        if logvars is not None and has_lv:
            batch["latent_mean"], batch["latent_logvar"] = latents, logvars
        else:
            batch["latents"] = latents
    valid, gen, cond = [], [], []
    for s in seqs:
        k = len(s.visuals)
        valid += [True] * k + [False] * (m - k)
        gen += [v.generate for v in s.visuals] + [False] * (m - k)
        cond += [v.cond_frames for v in s.visuals] + [0] * (m - k)
    batch["t_min"] = torch.tensor([0.0 if g else 1.0 for g in gen], dtype=torch.float32)
    batch["visual_valid"] = torch.tensor(valid, dtype=torch.bool)
    batch["visual_generate"] = torch.tensor(gen, dtype=torch.bool)
    batch["cond_frames"] = torch.tensor(cond, dtype=torch.long)
    batch["data_type"] = [it.get("data_type", s.data_type) for it, s in zip(items, seqs)]
    batch["texts"] = [it.get("text", "") for it in items]
    bad: Counter[str] = Counter()
    for it in items:
        bad.update(it.get("bad") or {})
    batch["bad_samples"] = dict(bad)
    return batch


class Collator:
    """Picklable ``collate_fn`` for DataLoader workers."""

    def __init__(self, pad_id: int, pad_to: int | None = None, max_slots: int | None = None) -> None:
        self.pad_id, self.pad_to, self.max_slots = pad_id, pad_to, max_slots

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return collate_samples(items, self.pad_id, pad_to=self.pad_to, max_slots=self.max_slots)


def seeded_rng(seed: int, *keys: int) -> random.Random:
    """Deterministic RNG from a seed and integer keys (independent of worker processes and order)."""
    return random.Random(hash_ints(seed, *keys))


def hash_ints(*keys: int) -> int:
    h = 0x9E3779B97F4A7C15
    for k in keys:
        h = ((h ^ (int(k) & 0xFFFFFFFFFFFFFFFF)) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h


def resolve_path(root: str | Path | None, rel: str, suffix: str | None = None) -> Path:
    """Join an annotation path to its root (absolute paths pass through); optional suffix rule."""
    if not isinstance(rel, str) or not rel:
        raise SampleError("missing_key", "empty or non-string path")
    if suffix and not rel.endswith(suffix):
        rel = rel + suffix
    p = Path(rel)
    if root is not None and not p.is_absolute():
        p = Path(root) / p
    return p


LoadFn = Callable[[int], dict[str, Any]]
