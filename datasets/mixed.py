"""Mixed generation / understanding loader: seeded, epoch-aware per-rank sharding, exactly resumable.

Spec: training §6.8. Two modes:

* ``"concat"`` (the released ``concat_max_size_cycle``): every batch holds ``batch_size`` rows of every
  source, in list order (e.g. t2i rows first, then understanding rows), one forward pass. Exhausted
  sources restart with the next epoch.
* ``"prob"`` (``max_size_cycle`` with ``samp_probs``): each batch comes from one source drawn with
  the (normalised, quirk 35 fixed) probabilities ``samp_probs``; the draw of step k is a pure function
  of (seed, k).

Fixes vs. the reference (quirks 5, 10): each source is an infinite stream of epochs; epoch e is a
fresh permutation seeded by (seed, source, e) -- different every epoch, unlike the reference sampler
with seed 0 and no ``set_epoch`` -- cut into ``world_size`` equal shards (``rank::world_size``, the tail
dropped so that all ranks see the same number of samples). ``state_dict()`` records the consumed
position (batches handed out, not prefetched ones), and ``load_state_dict`` makes a resumed run see
exactly the batches an uninterrupted run would have seen next.

Works with ``num_workers`` > 0: index plans are made in the main process, workers only load items
(the epoch travels with every index so per-epoch randomness such as CFG dropout is right in workers).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from datasets.base import Collator, RobustDataset, hash_ints, seeded_rng
from datasets.transforms import BadSampleCounter


@dataclass
class MixedSource:
    """One task stream: a map-style dataset and its rows per batch."""

    name: str
    dataset: Dataset
    batch_size: int


class EpochShardSampler:
    """Infinite per-rank index stream of one dataset (stream position -> (index, epoch))."""

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1, salt: int = 0,
                 shuffle: bool = True) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of {world_size}")
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.salt, self.shuffle = salt, shuffle
        self.per_rank = size // world_size
        if self.per_rank == 0:
            raise ValueError(f"dataset of {size} samples is smaller than world_size {world_size}")
        self._cache: tuple[int, list[int]] | None = None

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's indices of ``epoch`` (a different permutation every epoch)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        if self.shuffle:
            g = torch.Generator().manual_seed(hash_ints(self.seed, self.salt, epoch) % (2**63 - 1))
            perm = torch.randperm(self.size, generator=g).tolist()
        else:
            perm = list(range(self.size))
        idx = perm[: self.per_rank * self.world_size][self.rank:: self.world_size]
        self._cache = (epoch, idx)
        return idx

    def take(self, pos: int, k: int) -> list[tuple[int, int]]:
        """``k`` (index, epoch) pairs starting at stream position ``pos``."""
        out = []
        for p in range(pos, pos + k):
            epoch, within = divmod(p, self.per_rank)
            out.append((self.epoch_indices(epoch)[within], epoch))
        return out


class _MultiSource(Dataset):
    """Routes ``(source, index, epoch)`` keys to the source datasets."""

    def __init__(self, sources: Sequence[MixedSource]) -> None:
        self.sources = list(sources)

    def __len__(self) -> int:
        return sum(len(s.dataset) for s in self.sources)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        s, idx, epoch = key
        ds = self.sources[s].dataset
        item = ds[(idx, epoch)] if isinstance(ds, RobustDataset) else ds[idx]
        item = dict(item)
        item["source"] = self.sources[s].name
        return item


class _PlanSampler:
    """Batch sampler over plans; records the loader state after each plan it hands out."""

    def __init__(self, loader: MixedLoader) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        state = self.loader._state_copy()
        while True:
            plan = self.loader._plan(state)  # advances ``state``
            self.loader._pending.append(_copy_state(state))
            yield plan


def _copy_state(state: dict[str, Any]) -> dict[str, Any]:
    return {"step": state["step"], "positions": list(state["positions"])}


class MixedLoader:
    """Infinite iterator of collated mixed batches (see module doc).

    ``collate_fn`` defaults to ``datasets.base.Collator(pad_id, pad_to, max_slots)``. Each batch also
    has ``source`` (per-row source names) and ``step`` (index of the batch in the stream).
    """

    def __init__(
        self,
        sources: Sequence[MixedSource],
        *,
        mode: str = "concat",
        samp_probs: Sequence[float] | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        pad_id: int | None = None,
        pad_to: int | None = None,
        max_slots: int | None = None,
        collate_fn: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
        prefetch_factor: int | None = None,
        shuffle: bool = True,
    ) -> None:
        if not sources:
            raise ValueError("no sources")
        if mode not in ("concat", "prob"):
            raise ValueError(f"unknown mode {mode!r} (concat | prob)")
        self.sources = list(sources)
        self.mode = mode
        if mode == "prob":
            p = list(samp_probs) if samp_probs is not None else [1.0] * len(self.sources)
            if len(p) != len(self.sources) or any(x < 0 for x in p) or sum(p) <= 0:
                raise ValueError(f"bad samp_probs {samp_probs}")
            self.probs = [x / sum(p) for x in p]
        else:
            self.probs = None
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.samplers = [EpochShardSampler(len(s.dataset), seed, rank, world_size, salt=i, shuffle=shuffle)
                         for i, s in enumerate(self.sources)]
        if collate_fn is None:
            if pad_id is None:
                raise ValueError("pass pad_id (or a collate_fn)")
            collate_fn = Collator(pad_id, pad_to, max_slots)
        self.collate_fn = collate_fn
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self._state: dict[str, Any] = {"step": 0, "positions": [0] * len(self.sources)}
        self._pending: deque[dict[str, Any]] = deque()
        self._it: Iterator[dict[str, Any]] | None = None
        self.bad = BadSampleCounter()  # merged from the batches handed out (worker counts included)

    # ---------------------------------------------------------------- planning
    def _state_copy(self) -> dict[str, Any]:
        return _copy_state(self._state)

    def _plan(self, state: dict[str, Any]) -> list[tuple[int, int, int]]:
        if self.mode == "concat":
            chosen = list(range(len(self.sources)))
        else:
            u = seeded_rng(self.seed, 0x5EED, state["step"]).random()
            acc, pick = 0.0, len(self.probs) - 1
            for i, p in enumerate(self.probs):
                acc += p
                if u < acc:
                    pick = i
                    break
            chosen = [pick]
        plan: list[tuple[int, int, int]] = []
        for s in chosen:
            bs = self.sources[s].batch_size
            plan += [(s, idx, ep) for idx, ep in self.samplers[s].take(state["positions"][s], bs)]
            state["positions"][s] += bs
        state["step"] += 1
        return plan

    def epoch_of(self, source: int | str) -> int:
        """Current (consumed) epoch of a source."""
        i = source if isinstance(source, int) else [s.name for s in self.sources].index(source)
        return self._state["positions"][i] // self.samplers[i].per_rank

    # ---------------------------------------------------------------- iteration
    def _collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate_fn(items)
        batch["source"] = [it.get("source") for it in items]
        return batch

    def _batches(self) -> Iterator[dict[str, Any]]:
        self._pending.clear()
        kwargs: dict[str, Any] = {}
        if self.num_workers > 0 and self.prefetch_factor is not None:
            kwargs["prefetch_factor"] = self.prefetch_factor
        dl = DataLoader(_MultiSource(self.sources), batch_sampler=_PlanSampler(self), collate_fn=self._collate,
                        num_workers=self.num_workers, **kwargs)
        for batch in dl:
            self._state = self._pending.popleft()  # state after the batch just handed out
            batch["step"] = self._state["step"] - 1
            self.bad.update(batch.get("bad_samples") or {})
            yield batch

    def __iter__(self) -> MixedLoader:
        return self

    def __next__(self) -> dict[str, Any]:
        """The next batch (the loader is its own infinite iterator; ``next(loader)`` works)."""
        if self._it is None:
            self._it = self._batches()
        return next(self._it)

    def close(self) -> None:
        """Stop the worker processes (prefetched batches are dropped; the position is kept)."""
        self._it = None
        self._pending.clear()

    def bad_sample_counts(self) -> dict[str, int]:
        """Cumulative skipped-sample counts per reason (what the trainer logs)."""
        return dict(self.bad.counts)

    # ---------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        """Exact consumed position (JSON-serialisable)."""
        return {
            "step": self._state["step"],
            "positions": list(self._state["positions"]),
            "seed": self.seed,
            "mode": self.mode,
            "rank": self.rank,
            "world_size": self.world_size,
            "sizes": [len(s.dataset) for s in self.sources],
            "batch_sizes": [s.batch_size for s in self.sources],
            "bad_samples": dict(self.bad.counts),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position; the next batch is the one an uninterrupted run would see next."""
        sizes = [len(s.dataset) for s in self.sources]
        for key, mine in (("seed", self.seed), ("mode", self.mode), ("world_size", self.world_size),
                          ("sizes", sizes)):
            if key in state and state[key] != mine:
                raise ValueError(f"loader state was saved with {key}={state[key]!r}, this loader has {mine!r}")
        if len(state["positions"]) != len(self.sources):
            raise ValueError("loader state has a different number of sources")
        self._state = {"step": int(state["step"]), "positions": [int(p) for p in state["positions"]]}
        self.close()  # a running iterator would continue from its prefetched plans
        self.bad = BadSampleCounter()
        self.bad.update(state.get("bad_samples") or {})


# --------------------------------------------------------------------------------------------
# construction from the training config
# --------------------------------------------------------------------------------------------

def _dataset_types() -> dict[str, Any]:
    from datasets.image_text import ImageTextDataset
    from datasets.instruct import InstructDataset
    from datasets.interleaved import InterleavedDataset
    from datasets.video_text import VideoTextDataset

    return {"image_text": ImageTextDataset, "instruct": InstructDataset, "video_text": VideoTextDataset,
            "interleaved": InterleavedDataset}


def build_source(spec: dict[str, Any], builder: Any, *, resolution: int, seed: int,
                 max_bad_fraction: float) -> MixedSource:
    """One ``data.sources`` entry -> ``MixedSource`` (see ``build_mixed_loader``)."""
    spec = dict(spec)
    kind = spec.pop("type")
    name = spec.pop("name", kind)
    batch_size = int(spec.pop("batch_size"))
    path = spec.pop("path")
    root = spec.pop("root", None)
    types = _dataset_types()
    if kind not in types:
        raise ValueError(f"unknown data source type {kind!r} ({', '.join(types)})")
    spec.setdefault("resolution", resolution)
    spec.setdefault("seed", seed)
    if spec.get("min_size") is not None:
        spec["min_size"] = tuple(spec["min_size"])
    counter = BadSampleCounter(max_bad_fraction=max_bad_fraction)
    if kind in ("image_text", "video_text"):
        ds = types[kind](path, builder, root=root, counter=counter, **spec)
    else:
        ds = types[kind](path, root, builder, counter=counter, **spec)
    return MixedSource(name, ds, batch_size)


def build_mixed_loader(cfg: Any, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                       patch_size: int = 2) -> MixedLoader:
    """The training data iterator from the ``data`` config section (``data.source: mixed``).
    ``patch_size`` is the model's (the training loop passes ``model.config.patch_size``).

    Keys (defaults in brackets)::

        tokenizer: Qwen/Qwen2.5-1.5B-Instruct   # folder or hub id (datasets.tokenizer.load_tokenizer)
        max_seq_len: [1024]   resolution: [432]   mode: [concat] | prob   samp_probs: [null]
        num_workers: [0]      prefetch_factor: [null]   max_slots: [null]   max_bad_fraction: [0.5]
        official_image_masks: [false]   data_seed: [training seed]
        sources:              # list order = row order inside a concat batch (t2i first, as official)
          - {name: t2i, type: image_text, path: pairs.jsonl, task: t2i, batch_size: 6, min_size: [256, 256]}
          - {name: und, type: instruct, path: llava.json, root: images/, mode: tuning, batch_size: 2}
          # type video_text: task t2v | i2v, num_frames, short_clip; type interleaved: max_images, flag
          # any other key goes to the dataset constructor (cond_dropout_prob, latent_cache, ...)
    """
    from datasets.sequence import SequenceBuilder
    from datasets.tokenizer import load_tokenizer

    if not isinstance(cfg, dict):
        from utils.config import to_plain

        cfg = to_plain(cfg)
    cfg = dict(cfg)
    if not cfg.get("sources"):
        raise ValueError("data.sources is empty: list the datasets to mix (see datasets.mixed.build_mixed_loader)")
    tokenizer, special = load_tokenizer(str(cfg["tokenizer"]))
    builder = SequenceBuilder(special, tokenizer=tokenizer, max_seq_len=int(cfg.get("max_seq_len", 1024)),
                              official_image_masks=bool(cfg.get("official_image_masks", False)), patch_size=patch_size)
    data_seed = int(cfg.get("data_seed") if cfg.get("data_seed") is not None else seed)
    sources = [build_source(s, builder, resolution=int(cfg.get("resolution", 432)), seed=data_seed,
                            max_bad_fraction=float(cfg.get("max_bad_fraction", 0.5))) for s in cfg["sources"]]
    return MixedLoader(
        sources, mode=str(cfg.get("mode", "concat")), samp_probs=cfg.get("samp_probs"), seed=data_seed, rank=rank,
        world_size=world_size, num_workers=int(cfg.get("num_workers", 0)), pad_id=special.pad,
        max_slots=cfg.get("max_slots"), prefetch_factor=cfg.get("prefetch_factor"),
    )
