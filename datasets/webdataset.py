"""Tar-shard image-text streaming (webdataset layout) with the standard library ``tarfile``.

A shard is a tar whose members are grouped by key: ``<key>.jpg|.jpeg|.png|.webp`` plus
``<key>.json`` (caption under ``prompt``, ``caption`` or ``text``) or ``<key>.txt``. The key is the
member path up to the first dot of its file name (webdataset convention). Shards are read sequentially
(``"r|*"`` streaming, no random access), so this is an ``IterableDataset``:

* sharding: the shard list (reshuffled per epoch with (seed, epoch)) is split over
  ``world_size * num_workers`` readers (``rank``, DataLoader worker id); with fewer shards than
  readers every reader streams all shards and keeps every n-th record instead;
* bad records (no image, no caption, undecodable image, ...) and unreadable shards are counted and
  skipped (``BadSampleCounter``), never crash the stream; the reasons travel with the next item;
* items have the same structure as the map-style loaders (``datasets.base``) plus ``key``;
* resume: ``set_epoch(e)`` + ``skip`` (records this reader already yielded in the epoch).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from collections.abc import Iterator, Sequence
from glob import glob
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import IterableDataset, get_worker_info

from datasets.base import hash_ints, seeded_rng
from datasets.image_text import clean_caption
from datasets.sequence import SampleError, SequenceBuilder
from datasets.transforms import (
    DEFAULT_MAX_PIXELS,
    BadSampleCounter,
    TooManyBadSamples,
    load_image,
    preprocess_image,
    reason_of,
)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
CAPTION_KEYS = ("prompt", "caption", "text")


def expand_shards(shards: str | Sequence[str]) -> list[str]:
    """A glob, a brace-free comma list, or a list of paths -> sorted list of shard paths."""
    if isinstance(shards, str):
        parts = [s for s in shards.split(",") if s]
        out: list[str] = []
        for s in parts:
            out.extend(sorted(glob(s)) if any(c in s for c in "*?[") else [s])
        return out
    return [str(s) for s in shards]


def _split_key(name: str) -> tuple[str, str]:
    d, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), (ext.lower() if dot else "")


def iter_tar_records(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream ``(key, {ext: bytes})`` groups of consecutive members with the same key."""
    with tarfile.open(path, mode="r|*") as tf:
        key: str | None = None
        group: dict[str, bytes] = {}
        for m in tf:
            if not m.isfile():
                continue
            k, ext = _split_key(m.name)
            if key is not None and k != key:
                yield key, group
                group = {}
            key = k
            f = tf.extractfile(m)
            group[ext] = f.read() if f is not None else b""
        if key is not None:
            yield key, group


class TarShardDataset(IterableDataset):
    """Streaming t2i / captioning samples from tar shards (see module doc)."""

    def __init__(
        self,
        shards: str | Sequence[str],
        builder: SequenceBuilder,
        *,
        task: Literal["t2i", "caption"] = "t2i",
        resolution: int = 432,
        min_size: tuple[int, int] | None = None,
        cond_dropout_prob: float = 0.1,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle_shards: bool = True,
        strict_modes: bool = True,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        counter: BadSampleCounter | None = None,
    ) -> None:
        super().__init__()
        self.shards = expand_shards(shards)
        if not self.shards:
            raise FileNotFoundError(f"no shards match {shards!r}")
        self.builder, self.task, self.resolution, self.min_size = builder, task, resolution, min_size
        self.cond_dropout_prob = cond_dropout_prob if task == "t2i" else 0.0
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shuffle_shards, self.strict_modes, self.max_pixels = shuffle_shards, strict_modes, max_pixels
        self.counter = counter or BadSampleCounter()
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Epoch for the shard order / CFG dropout; ``skip`` records already consumed by this reader."""
        self.epoch, self.skip = int(epoch), int(skip)

    def _reader(self) -> tuple[int, int]:
        info = get_worker_info()
        nw, wid = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.rank * nw + wid, self.world_size * nw

    def _assignment(self) -> tuple[list[str], int | None, int]:
        """(shards to read, modulo filter or None, number of readers)."""
        gid, total = self._reader()
        order = list(self.shards)
        if self.shuffle_shards:
            seeded_rng(self.seed, 0x7A4, self.epoch).shuffle(order)
        if len(order) >= total:
            return order[gid::total], None, total
        return order, gid, total

    def _make(self, key: str, files: dict[str, bytes]) -> dict[str, Any]:
        img_ext = next((e for e in IMAGE_EXTS if e in files), None)
        if img_ext is None:
            raise SampleError("missing_image", key)
        if "json" in files:
            try:
                meta = json.loads(files["json"].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise SampleError("malformed_json", key) from err
            cap = next((meta[k] for k in CAPTION_KEYS if isinstance(meta, dict) and k in meta), None)
        elif "txt" in files:
            cap = files["txt"].decode("utf-8", errors="replace")
        else:
            cap = None
        if not isinstance(cap, str):
            raise SampleError("missing_key", f"{key}: no caption")
        cap = clean_caption(cap, remove_boilerplate=self.task == "t2i")
        if not cap.strip():
            raise SampleError("empty_caption", key)
        if self.cond_dropout_prob > 0:
            if seeded_rng(self.seed, hash_ints(*key.encode()), self.epoch).random() < self.cond_dropout_prob:
                cap = ""
        img = load_image(io.BytesIO(files[img_ext]), strict=self.strict_modes, min_size=self.min_size,
                         max_pixels=self.max_pixels)
        pixels = [preprocess_image(img, self.resolution, "crop")]
        visual = self.builder.visual_for_pixels(self.resolution)
        seq = self.builder.t2i(cap, visual) if self.task == "t2i" else self.builder.caption(cap, visual)
        return {"sequence": seq, "pixels": pixels, "latents": None, "data_type": seq.data_type, "text": cap,
                "key": key}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        shards, modulo, total = self._assignment()
        skipped: Counter[str] = Counter()
        n_rec = 0
        to_skip = self.skip
        for shard in shards:
            try:
                for key, files in iter_tar_records(shard):
                    n_rec += 1
                    if modulo is not None and (n_rec - 1) % total != modulo:
                        continue
                    if to_skip > 0:
                        to_skip -= 1
                        continue
                    try:
                        item = self._make(key, files)
                    except TooManyBadSamples:
                        raise
                    except Exception as err:  # noqa: BLE001 - one bad record never stops the stream
                        r = reason_of(err)
                        skipped[r] += 1
                        self.counter.record(r, f"{shard}:{key}", err)
                        self.counter.check(shard)
                        continue
                    self.counter.ok()
                    item["bad"] = dict(skipped)
                    skipped.clear()
                    yield item
            except (tarfile.TarError, OSError, EOFError) as err:
                skipped["bad_shard"] += 1
                self.counter.record("bad_shard", shard, err)
                if self.counter.counts["bad_shard"] >= len(shards) and self.counter.good == 0:
                    raise TooManyBadSamples(f"no readable shard among {len(shards)} (last: {shard})") from err

    def shard_paths(self) -> list[Path]:
        return [Path(s) for s in self.shards]
