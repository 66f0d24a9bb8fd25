"""Tar-shard streaming: record grouping, bad records / shards, per-rank and per-worker sharding."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
from PIL import Image
from torch.utils.data import DataLoader

from datasets.base import Collator
from datasets.sequence import SequenceBuilder
from datasets.tokenizer import SpecialTokens
from datasets.transforms import BadSampleCounter
from datasets.webdataset import TarShardDataset, expand_shards, iter_tar_records

SP = SpecialTokens(bos=1, eos=2, boi=3, eoi=4, img_pad=5, vid_pad=6, pad=0, img=7, bov=8, eov=9, vocab_size=300)


class ByteTok:
    """Minimal stand-in tokenizer (bytes + 10) so captions can be strings."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [b % 250 + 10 for b in text.encode()]}


def _img_bytes(fmt="PNG", size=(40, 40), color=(200, 0, 0)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def _shard(path, records):
    with tarfile.open(path, "w") as tf:
        for name, data in records:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return str(path)


def _good(key, i):
    return [(f"{key}.png", _img_bytes(color=(i * 10 % 255, 0, 0))),
            (f"{key}.json", json.dumps({"prompt": f"c {i}"}).encode())]


@pytest.fixture()
def shards(tmp_path):
    s0 = _shard(tmp_path / "s0.tar", [
        *_good("a/000", 0),
        ("a/001.jpg", _img_bytes("JPEG")), ("a/001.txt", b"a red circle"),
        ("a/002.png", _img_bytes()),                                      # no caption
        ("a/003.png", b"garbage"), ("a/003.json", b'{"prompt": "x"}'),    # corrupt image
        ("a/004.json", b'{"prompt": "no image"}'),                         # no image
        ("a/005.png", _img_bytes()), ("a/005.json", b"{oops"),            # malformed json
        *_good("a/006", 6),
    ])
    s1 = _shard(tmp_path / "s1.tar", [x for i in range(7, 11) for x in _good(f"b/{i:03d}", i)])
    bad = tmp_path / "s2.tar"
    full = _shard(tmp_path / "tmp.tar", [x for i in range(11, 14) for x in _good(f"c/{i:03d}", i)])
    bad.write_bytes(open(full, "rb").read()[:700])  # truncated shard
    return [s0, s1, str(bad)]


def _ds(paths, **kw):
    b = SequenceBuilder(SP, tokenizer=ByteTok(), max_seq_len=40)
    return TarShardDataset(paths, b, resolution=16, cond_dropout_prob=0.0,
                           counter=BadSampleCounter(max_bad_fraction=0.9), **kw)


def test_grouping_and_bad_records(shards):
    groups = list(iter_tar_records(shards[0]))
    assert [k for k, _ in groups] == [f"a/{i:03d}" for i in range(7)] and set(groups[0][1]) == {"png", "json"}
    ds = _ds(shards, shuffle_shards=False)
    items = list(ds)
    keys = [it["key"] for it in items]
    assert keys[:3] == ["a/000", "a/001", "a/006"] and "b/007" in keys
    assert items[1]["text"] == "a red circle" and items[2]["bad"]
    for it in items:
        assert it["pixels"][0].shape == (3, 16, 16) and len(it["sequence"]) == 40
    c = ds.counter.counts
    assert c["missing_key"] == 1 and c["decode_error"] == 1 and c["missing_image"] == 1
    assert c["malformed_json"] == 1 and c["bad_shard"] == 1


def test_rank_and_worker_sharding(shards):
    good = shards[:2]
    r0 = {it["key"] for it in _ds(good, rank=0, world_size=2)}
    r1 = {it["key"] for it in _ds(good, rank=1, world_size=2)}
    assert r0 and r1 and not r0 & r1 and len(r0 | r1) == 7
    # fewer shards than readers: every reader streams the shard and keeps every n-th record
    one = [shards[1]]
    k = [{it["key"] for it in _ds(one, rank=r, world_size=3)} for r in range(3)]
    assert sum(len(x) for x in k) == 4 and not (k[0] & k[1] or k[1] & k[2])
    dl = DataLoader(_ds(good), batch_size=2, num_workers=2, collate_fn=Collator(SP.pad))
    seen = [t for batch in dl for t in batch["texts"]]
    assert sorted(seen) == sorted(["c 0", "a red circle", "c 6"] + [f"c {i}" for i in range(7, 11)])
    ds = _ds(good, shuffle_shards=False)
    ds.set_epoch(0, skip=2)
    assert [it["key"] for it in ds][0] == "a/006"
    assert expand_shards(str(shards[0]).replace("s0", "s*")) == sorted(shards)
