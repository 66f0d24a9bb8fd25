"""Image-text loader: preprocessing, caption handling and every bad-input case of the brief."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.base import collate_samples
from datasets.image_text import ImageTextDataset, clean_caption
from datasets.sequence import SequenceBuilder
from datasets.tokenizer import build_demo_tokenizer, load_tokenizer
from datasets.transforms import (
    BadSampleCounter,
    TooManyBadSamples,
    load_image,
    resize_and_pad,
    resize_center_crop,
    to_tensor,
)

RES = 32  # 2x2 token grid


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = build_demo_tokenizer(["a red circle above a blue square"] * 50, tmp_path_factory.mktemp("tok"), 300)
    return load_tokenizer(path)


def _img(path: Path, mode: str = "RGB", size=(40, 48), **save) -> str:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    im = Image.fromarray(arr)
    if mode == "P":
        im = im.convert("P")
        im.info["transparency"] = 0
        im.save(path, transparency=0)
        return str(path)
    im.convert(mode).save(path, **save)
    return str(path)


def _write(path: Path, recs) -> str:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in recs]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_mode_rules_and_geometry(tmp_path):
    rgba = Image.new("RGBA", (10, 10), (200, 10, 20, 0))
    rgba.save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (200, 10, 20)  # alpha dropped, not composited
    Image.new("L", (10, 10), 77).save(tmp_path / "l.png")
    assert load_image(tmp_path / "l.png").getpixel((3, 3)) == (77, 77, 77)
    _img(tmp_path / "p.png", "P")
    assert load_image(tmp_path / "p.png").mode == "RGB"
    Image.new("CMYK", (10, 10)).save(tmp_path / "c.jpg")
    with pytest.raises(ValueError, match="unsupported_mode"):
        load_image(tmp_path / "c.jpg", strict=True)
    assert load_image(tmp_path / "c.jpg", strict=False).mode == "RGB"
    im = Image.new("RGB", (100, 50))
    assert resize_center_crop(im, 32).size == (32, 32)
    padded = resize_and_pad(Image.new("RGB", (100, 50), (255, 255, 255)), 32)
    t = to_tensor(padded)
    assert t.shape == (3, 32, 32) and t[:, 0, 0].tolist() == [-1, -1, -1] and t[:, 16, 16].tolist() == [1, 1, 1]


def test_clean_caption():
    assert clean_caption("The image shows a\ncat. This is nice", True) == "The image shows acat. nice"
    assert clean_caption("The image features a dog", True) == "a dog"
    assert clean_caption("The image features a dog", False) == "The image features a dog"


def test_good_samples_t2i_and_caption(tmp_path, tok):
    tokenizer, sp = tok
    recs = [{"path": _img(tmp_path / f"{i}.png"), "prompt": "The image features a red circle"} for i in range(4)]
    jl = _write(tmp_path / "d.jsonl", recs)
    b = SequenceBuilder(sp, tokenizer=tokenizer, max_seq_len=64)
    ds = ImageTextDataset(jl, b, resolution=RES, cond_dropout_prob=0.0)
    it = ds[0]
    s = it["sequence"]
    assert it["pixels"][0].shape == (3, RES, RES) and it["pixels"][0].abs().max() <= 1
    assert it["text"] == "a red circle" and s.modality_positions[0, 1] == 5 and len(s) == 64
    cap = ImageTextDataset(jl, b, task="caption", resolution=RES)[1]
    assert cap["text"] == "The image features a red circle" and cap["data_type"] == "mmu"
    batch = collate_samples([ds[0], cap], sp.pad)
    assert batch["pixels"].shape == (2, 3, RES, RES) and batch["visual_generate"].tolist() == [True, False]
    assert batch["t_min"].tolist() == [0.0, 1.0]
    assert batch["input_ids"].shape == (2, 64) and batch["bad_samples"] == {}


def test_cfg_dropout_is_seeded(tmp_path, tok):
    tokenizer, sp = tok
    recs = [{"path": _img(tmp_path / f"{i}.png"), "prompt": "a red circle"} for i in range(3)]
    jl = _write(tmp_path / "d.jsonl", recs * 30)
    b = SequenceBuilder(sp, tokenizer=tokenizer, max_seq_len=64)
    ds = ImageTextDataset(jl, b, resolution=RES, cond_dropout_prob=0.1, seed=3)
    caps = [ds.caption_for(i) for i in range(90)]
    assert caps == [ImageTextDataset(jl, b, resolution=RES, seed=3).caption_for(i) for i in range(90)]
    assert 1 <= caps.count("") <= 25
    ds.set_epoch(1)
    assert [ds.caption_for(i) for i in range(90)] != caps  # a different draw each epoch
    cap_ds = ImageTextDataset(jl, b, task="caption", resolution=RES, cond_dropout_prob=0.9)
    assert all(cap_ds.caption_for(i) for i in range(90))  # never dropped for captioning


def test_every_bad_input_is_skipped_and_counted(tmp_path, tok, caplog):
    tokenizer, sp = tok
    good = _img(tmp_path / "good.png")
    trunc_png = tmp_path / "trunc.png"
    _img(trunc_png, size=(64, 64))
    trunc_png.write_bytes(trunc_png.read_bytes()[:200])
    trunc_jpg = tmp_path / "trunc.jpg"
    _img(trunc_jpg, size=(64, 64), quality=90)
    trunc_jpg.write_bytes(trunc_jpg.read_bytes()[:300])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    recs = [
        {"path": good, "prompt": "a red circle"},                                   # 0 good
        {"path": str(tmp_path / "missing.png"), "prompt": "x"},                      # 1 missing file
        {"path": str(trunc_png), "prompt": "x"},                                     # 2 truncated png
        {"path": str(trunc_jpg), "prompt": "x"},                                     # 3 truncated jpeg
        {"path": str(garbage), "prompt": "x"},                                       # 4 corrupt
        {"path": _img(tmp_path / "cmyk.jpg", "CMYK"), "prompt": "x"},                # 5 CMYK (strict)
        {"path": _img(tmp_path / "tiny.png", size=(1, 1)), "prompt": "x"},           # 6 1x1
        {"path": _img(tmp_path / "big.png", size=(600, 500)), "prompt": "x"},        # 7 too large
        {"path": good, "prompt": ""},                                                # 8 empty caption
        {"path": good, "prompt": 5},                                                 # 9 non-string caption
        {"path": good, "prompt": " ".join(["circle"] * 10000)},                      # 10 huge caption (kept)
        {"path": _img(tmp_path / "rgba.png", "RGBA"), "prompt": "a circle"},         # 11 RGBA ok
        {"path": _img(tmp_path / "l.png", "L"), "prompt": "a circle"},               # 12 L ok
        {"path": _img(tmp_path / "p.png", "P"), "prompt": "a circle"},               # 13 palette ok
        "{not json",                                                                 # malformed line
        "",                                                                          # empty line
        json.dumps({"prompt": "no path"}),                                           # missing key
    ]
    jl = _write(tmp_path / "bad.jsonl", recs)
    b = SequenceBuilder(sp, tokenizer=tokenizer, max_seq_len=64)
    counter = BadSampleCounter(max_bad_fraction=0.95)
    with caplog.at_level(logging.WARNING):
        ds = ImageTextDataset(jl, b, resolution=RES, min_size=(8, 8), cond_dropout_prob=0.0,
                              max_pixels=250_000, counter=counter)
        assert len(ds) == 14
        items = [ds[i] for i in range(len(ds))]
    assert counter.counts["malformed_json"] == 1 and counter.counts["empty_line"] == 1
    assert counter.counts["missing_key"] == 1
    for it in items:  # every yielded item is well formed
        s = it["sequence"]
        assert len(s) == 64 and s.modality_positions.tolist() == [[s.modality_positions[0, 0].item(), 5]]
        assert it["pixels"][0].shape == (3, RES, RES)
    served = [it["index"] for it in items]
    assert served[1] == 10 and served[9] == 10 and served[11:] == [11, 12, 13]
    assert items[10]["sequence"].num_truncated > 0
    for reason in ("missing_file", "decode_error", "unsupported_mode", "too_small", "too_large",
                   "empty_caption", "bad_caption"):
        assert counter.counts[reason] >= 1, reason
    assert counter.counts["decode_error"] >= 3
    assert items[1]["bad"]["missing_file"] == 1
    assert "skipping bad sample" in caplog.text
    assert set(counter.as_dict()) >= {"data/bad_missing_file", "data/bad_total", "data/bad_fraction"}
    # the last index wraps around to the start (no IndexError / recursion)
    jl2 = _write(tmp_path / "wrap.jsonl", [recs[0], recs[1]])
    assert ImageTextDataset(jl2, b, resolution=RES, cond_dropout_prob=0.0,
                            counter=BadSampleCounter(max_bad_fraction=0.9))[1]["index"] == 0


def test_too_many_bad_raises_naming_file(tmp_path, tok):
    tokenizer, sp = tok
    b = SequenceBuilder(sp, tokenizer=tokenizer, max_seq_len=64)
    recs = [{"path": str(tmp_path / f"missing{i}.png"), "prompt": "x"} for i in range(30)]
    recs += [{"path": _img(tmp_path / "g.png"), "prompt": "a circle"}]
    jl = _write(tmp_path / "mostly_bad.jsonl", recs)
    ds = ImageTextDataset(jl, b, resolution=RES, counter=BadSampleCounter(max_bad_fraction=0.5, min_seen=10))
    with pytest.raises(TooManyBadSamples, match="mostly_bad.jsonl"):
        ds[0]
    jl2 = _write(tmp_path / "garbage.jsonl", ["{"] * 10 + [json.dumps(recs[-1])])
    with pytest.raises(TooManyBadSamples, match="garbage.jsonl"):
        ImageTextDataset(jl2, b, resolution=RES)
    with pytest.raises(FileNotFoundError):
        ImageTextDataset(tmp_path / "nope.jsonl", b)


def test_latent_cache_path(tmp_path, tok):
    tokenizer, sp = tok

    class DictCache(dict):
        def get(self, key):  # the adapter calls get(key)
            return dict.get(self, key)

    cache = DictCache({"a.png": torch.randn(16, 4, 6)})
    jl = _write(tmp_path / "d.jsonl", [{"path": "a.png", "prompt": "a circle"}, {"path": "b.png", "prompt": "x"}])
    b = SequenceBuilder(sp, tokenizer=tokenizer, max_seq_len=64)
    ds = ImageTextDataset(jl, b, latent_cache=cache, cond_dropout_prob=0.0,
                          counter=BadSampleCounter(max_bad_fraction=0.9))
    it = ds[1]  # missing latent -> skipped to index 0
    assert it["index"] == 0 and it["pixels"] is None and it["latents"][0].shape == (16, 4, 6)
    assert it["sequence"].visuals[0].grid == (2, 3) and it["sequence"].modality_positions[0, 1] == 7
    assert ds.counter.counts["missing_latent"] == 1
    batch = collate_samples([it, it], sp.pad)
    assert batch["latents"].shape == (2, 16, 4, 6) and "pixels" not in batch and "latent_mean" not in batch


def test_real_latent_cache_directory(tmp_path, tok):
    """Reads latents through datasets.latent_cache.LatentCache (posterior mean + log-variance)."""
    from datasets.latent_cache import LatentCacheWriter

    tokenizer, sp = tok
    w = LatentCacheWriter(tmp_path / "cache", {"vae": {"fingerprint": "x"}, "resolution": 64, "shard_size": 2})
    mean, logvar = torch.randn(2, 16, 8, 8), torch.full((2, 16, 8, 8), -4.0)
    w.write_shard(0, [{"key": "a.png"}, {"key": "b.png"}], mean, logvar, records=(0, 2))
    jl = _write(tmp_path / "d.jsonl", [{"path": "a.png", "prompt": "a circle"}, {"path": "b.png", "prompt": "b"},
                                       {"path": "c.png", "prompt": "not cached"}])
    b = SequenceBuilder(sp, tokenizer=tokenizer, max_seq_len=64)
    ds = ImageTextDataset(jl, b, latent_cache=str(tmp_path / "cache"), cond_dropout_prob=0.0,
                          counter=BadSampleCounter(max_bad_fraction=0.9))
    it = ds[0]
    assert torch.equal(it["latents"][0], mean[0]) and torch.equal(it["latent_logvars"][0], logvar[0])
    batch = collate_samples([it, ds[1]], sp.pad)
    # the posterior is handed to the trainer, which draws the sample per step
    assert batch["latent_mean"].shape == (2, 16, 8, 8) and batch["latent_logvar"].shape == (2, 16, 8, 8)
    assert "latents" not in batch and "pixels" not in batch and batch["t_min"].tolist() == [0.0, 0.0]
    assert ds[2]["index"] == 0 and ds.counter.counts["missing_latent"] == 1
    assert ds[1]["sequence"].modality_positions[0, 1] == 17


def test_newline_switch_and_fast_jpeg_decode(tmp_path):
    assert clean_caption("a\nb", False, newline=" ") == "a b"
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8))
    im.save(tmp_path / "x.jpg", quality=90)
    full = load_image(tmp_path / "x.jpg")
    fast = load_image(tmp_path / "x.jpg", draft_size=64)
    assert full.size == (300, 200) and min(fast.size) >= 64 and fast.size[0] < 300
    assert resize_center_crop(fast, 64).size == (64, 64)


def test_one_latent_cache_serves_absolute_and_relative_annotations(tmp_path, tok):
    """Image-text jsonl (absolute paths) and LLaVA json (paths relative to a root) find the same cached entry
    through the absolute source path recorded at caching time."""
    from datasets.instruct import InstructDataset
    from datasets.latent_cache import LatentCacheWriter

    tokenizer, sp = tok
    root = tmp_path / "images"
    w = LatentCacheWriter(tmp_path / "cache", {"vae": {"fingerprint": "x"}, "resolution": 64, "shard_size": 1})
    mean, logvar = torch.randn(1, 16, 8, 8), torch.full((1, 16, 8, 8), -4.0)
    w.write_shard(0, [{"key": "a.png", "source": str(root / "a.png")}], mean, logvar, records=(0, 1))
    b = SequenceBuilder(sp, tokenizer=tokenizer, max_seq_len=96)
    jl = _write(tmp_path / "d.jsonl", [{"path": str(root / "a.png"), "prompt": "a circle"}])
    it = ImageTextDataset(jl, b, latent_cache=str(tmp_path / "cache"), cond_dropout_prob=0.0)[0]
    assert torch.equal(it["latents"][0], mean[0])
    ann = tmp_path / "llava.json"
    ann.write_text(json.dumps([{"id": "0", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat color?"}, {"from": "gpt", "value": "red"}]}]))
    it = InstructDataset(ann, root, b, latent_cache=str(tmp_path / "cache"))[0]
    assert torch.equal(it["latents"][0], mean[0])
