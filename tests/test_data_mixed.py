"""Mixed loader: concat / probability modes, determinism, epoch-aware sharding, exact resume."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from datasets.base import RobustDataset
from datasets.mixed import EpochShardSampler, MixedLoader, MixedSource
from datasets.sequence import SampleError, SequenceBuilder, VisualInfo
from datasets.tokenizer import SpecialTokens

SP = SpecialTokens(bos=1, eos=2, boi=3, eoi=4, img_pad=5, vid_pad=6, pad=0, img=7, bov=8, eov=9, vocab_size=100)


class Synthetic(RobustDataset):
    """Tiny in-memory dataset: caption ids encode the index; every 7th sample is bad."""

    def __init__(self, n: int, task: str, bad_every: int = 7) -> None:
        super().__init__()
        self.n, self.task, self.bad_every = n, task, bad_every
        self.builder = SequenceBuilder(SP, max_seq_len=16)
        self.source = f"synthetic-{task}"

    def __len__(self) -> int:
        return self.n

    def load(self, idx: int):
        if self.bad_every and idx % self.bad_every == 6:
            raise SampleError("synthetic_bad")
        cap = [10 + idx % 80, 10 + self.epoch % 80]
        if self.task == "t2i":
            seq = self.builder.t2i(cap, VisualInfo.image(4))
        else:
            seq = self.builder.caption(cap, VisualInfo.image(4))
        return {"sequence": seq, "pixels": [torch.full((3, 4, 4), idx / 1000)], "data_type": seq.data_type,
                "text": str(idx)}


def _loader(**kw):
    srcs = [MixedSource("t2i", Synthetic(40, "t2i"), 3), MixedSource("mmu", Synthetic(23, "mmu"), 2)]
    return MixedLoader(srcs, pad_id=SP.pad, **kw)


def _take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def _sig(batch):
    return (batch["input_ids"].tolist(), batch["source"], batch["pixels"][:, 0, 0, 0].tolist())


def test_sampler_epochs_and_shards():
    s0 = EpochShardSampler(10, seed=1, rank=0, world_size=2)
    s1 = EpochShardSampler(10, seed=1, rank=1, world_size=2)
    e0 = s0.epoch_indices(0)
    assert len(e0) == 5 and not set(e0) & set(s1.epoch_indices(0))
    assert sorted(e0 + s1.epoch_indices(0)) == list(range(10))
    assert s0.epoch_indices(1) != e0  # a fresh permutation each epoch
    assert s0.take(4, 2) == [(e0[4], 0), (s0.epoch_indices(1)[0], 1)]
    with pytest.raises(ValueError):
        EpochShardSampler(1, 0, 0, 2)


def test_concat_mode_layout_and_determinism():
    a = _take(_loader(seed=5), 6)
    b = _take(_loader(seed=5), 6)
    assert [_sig(x) for x in a] == [_sig(x) for x in b]
    assert [_sig(x) for x in a] != [_sig(x) for x in _take(_loader(seed=6), 6)]
    batch = a[0]
    assert batch["source"] == ["t2i"] * 3 + ["mmu"] * 2 and batch["input_ids"].shape == (5, 16)
    assert batch["data_type"] == ["t2i"] * 3 + ["mmu"] * 2 and batch["modality_positions"].shape == (5, 1, 2)
    assert [x["step"] for x in a] == list(range(6))
    assert all(not x["input_ids"].eq(SP.img_pad).sum(1).eq(0).any() for x in a)


def test_resume_gives_identical_next_batches():
    full = _take(_loader(seed=3), 12)
    first = _loader(seed=3)
    it = iter(first)
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
    resumed = _loader(seed=3)
    resumed.load_state_dict(state)
    assert [_sig(x) for x in _take(resumed, 7)] == [_sig(x) for x in full[5:]]
    # after 12 batches the mmu stream (23 samples, 2 per batch) is in its second epoch
    assert resumed.epoch_of("mmu") == 1 and resumed.epoch_of("t2i") == 0
    with pytest.raises(ValueError):
        _loader(seed=4).load_state_dict(state)


def test_resume_with_workers_counts_only_consumed_batches():
    ref = _take(_loader(seed=9), 8)
    ld = _loader(seed=9, num_workers=2, prefetch_factor=2)
    it = iter(ld)
    got = [next(it) for _ in range(3)]
    state = ld.state_dict()
    assert state["step"] == 3  # prefetched batches are not counted
    del it
    ld2 = _loader(seed=9)
    ld2.load_state_dict(state)
    assert [_sig(x) for x in got + _take(ld2, 5)] == [_sig(x) for x in ref]


def test_epochs_cover_every_index_once_per_rank_and_bad_samples_travel():
    per_rank = []
    for rank in (0, 1):
        ld = MixedLoader([MixedSource("mmu", Synthetic(12, "mmu", bad_every=0), 3)], pad_id=SP.pad, seed=0,
                         rank=rank, world_size=2)
        batches = _take(ld, 4)  # 12 samples / 2 ranks = 6 per epoch = 2 batches
        per_rank.append(([t for b in batches[:2] for t in b["texts"]], [t for b in batches[2:] for t in b["texts"]]))
    for epoch in (0, 1):  # the ranks together see every index exactly once per epoch
        assert sorted(int(t) for r in per_rank for t in r[epoch]) == list(range(12))
    assert per_rank[0][0] != per_rank[0][1]  # a different order every epoch
    ld_bad = _loader(seed=1)
    bad = Counter()
    for b in _take(ld_bad, 10):
        bad.update(b["bad_samples"])
    assert bad["synthetic_bad"] > 0


def test_prob_mode():
    ld = _loader(seed=2, mode="prob", samp_probs=[3, 1])
    batches = _take(ld, 80)
    names = Counter(b["source"][0] for b in batches)
    assert all(len(set(b["source"])) == 1 for b in batches)
    assert 45 <= names["t2i"] <= 75
    state_ld = _loader(seed=2, mode="prob", samp_probs=[3, 1])
    it = iter(state_ld)
    for _ in range(30):
        next(it)
    again = _loader(seed=2, mode="prob", samp_probs=[3, 1])
    again.load_state_dict(state_ld.state_dict())
    assert [_sig(x) for x in _take(again, 10)] == [_sig(x) for x in batches[30:40]]
    with pytest.raises(ValueError):
        _loader(mode="prob", samp_probs=[1, -1])
