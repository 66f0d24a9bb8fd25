"""Instruction (LLaVA), interleaved (VIST) and video-text loaders, including their bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.base import collate_samples
from datasets.instruct import InstructDataset, normalize_turns
from datasets.interleaved import InterleavedDataset
from datasets.sequence import IGNORE_INDEX, SequenceBuilder
from datasets.tokenizer import build_demo_tokenizer, encode, load_tokenizer
from datasets.transforms import BadSampleCounter, TooManyBadSamples
from datasets.video_text import VideoTextDataset, read_frames, sample_frame_indices

RES = 32


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = ["What colour is the circle? It is red.", "a red circle moving left", "You are a helpful assistant."]
    path = build_demo_tokenizer(texts * 30, tmp_path_factory.mktemp("tok"), 300)
    return load_tokenizer(path)


def _png(path: Path, size=(40, 40), value=128) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 20, 30)).save(path)
    return str(path)


def _frames_dir(path: Path, n: int) -> str:
    path.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (40, 32), (i * 10, 0, 0)).save(path / f"{i:03d}.png")
    return str(path)


def _mp4(path: Path, n: int) -> str:
    import av

    c = av.open(str(path), "w")
    s = c.add_stream("mpeg4", rate=8)
    s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
    for i in range(n):
        for p in s.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 20, np.uint8), format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    return str(path)


def test_normalize_turns():
    t = normalize_turns([{"from": "human", "value": "What is it?\n<image>"}, {"from": "gpt", "value": "A."}])
    assert t[0] == ("human", "<image>\nWhat is it?")
    vid = normalize_turns([{"from": "human", "value": "<video>\nQ"}, {"from": "gpt", "value": "A"}])
    assert vid[0][1] == "<image>\nQ"
    for bad in ([], [{"from": "human"}], [{"from": "human", "value": "x"}], "x"):
        with pytest.raises(ValueError):
            normalize_turns(bad)


def test_instruct_loader(tmp_path, tok):
    tokenizer, sp = tok
    root = tmp_path / "images"
    _png(root / "a.png", (60, 30))
    _frames_dir(root / "vid", 9)
    q = [{"from": "human", "value": "What colour is the circle?\n<image>"}, {"from": "gpt", "value": "It is red."}]
    recs = [
        {"id": 0, "image": "a.png", "conversations": q},                                          # 0 good
        {"id": 1, "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},  # 1 text
        {"id": 2, "image": "a.png", "conversations": [{"from": "human", "value": "<image><image> Q"},
                                                       {"from": "gpt", "value": "A"}]},           # 2 too many tags
        {"id": 3, "image": "missing.png", "conversations": q},                                     # 3 missing file
        {"id": 4, "conversations": q},                                                             # 4 tag, no image
        {"id": 5, "image": "a.png", "conversations": [{"from": "human", "value": 3}]},             # 5 malformed
        {"id": 6, "video": "vid", "conversations": [{"from": "human", "value": "<video>\nWhich way?"},
                                                     {"from": "gpt", "value": "left"}]},           # 6 video
        {"id": 7, "image": ["a.png", "a.png"], "conversations": [
            {"from": "human", "value": "<image>\nQ1"}, {"from": "gpt", "value": "A1"},
            {"from": "human", "value": "<image>\nQ2"}, {"from": "gpt", "value": "A2"}]},           # 7 multi-image
        {"id": 8},                                                                                 # missing key
    ]
    ann = tmp_path / "llava.json"
    ann.write_text(json.dumps(recs))
    b = SequenceBuilder(sp, tokenizer=tokenizer, max_seq_len=256)
    counter = BadSampleCounter(max_bad_fraction=0.9)
    ds = InstructDataset(ann, root, b, resolution=RES, num_frames=5, counter=counter)
    assert len(ds) == 8 and counter.counts["missing_key"] == 1
    it = ds[0]
    s = it["sequence"]
    assert it["pixels"][0].shape == (3, RES, RES) and it["pixels"][0][:, 0, 16].tolist() == [-1, -1, -1]  # padded
    assert s.modality_positions.shape == (1, 2) and s.data_type == "mmu" and s.image_masks.sum() == 0
    answer = encode(tokenizer, "It is red.") + [sp.eos]
    assert s.labels[s.labels != IGNORE_INDEX].tolist() == answer
    txt = ds[1]
    assert txt["pixels"] is None and txt["sequence"].modality_positions.shape == (0, 2)
    assert [ds[i]["index"] for i in (2, 3, 4, 5)] == [6, 6, 6, 6]
    for r in ("image_tag_mismatch", "missing_file", "bad_conversation"):
        assert counter.counts[r] >= 1, r
    vid = ds[6]
    assert vid["pixels"][0].shape == (3, 5, RES, RES) and vid["data_type"] == "mmu_vid"
    assert vid["sequence"].modality_positions[0, 1].item() == 2 * 4 + 1  # 2 latent frames x 4 tokens + 1
    multi = ds[7]
    assert multi["sequence"].modality_positions.shape == (2, 2) and len(multi["pixels"]) == 2
    batch = collate_samples([it, txt, multi], sp.pad)
    assert batch["modality_positions"].shape == (3, 2, 2) and batch["pixels"].shape == (6, 3, RES, RES)
    assert batch["visual_valid"].tolist() == [True, False, False, False, True, True]
    assert batch["t_min"].tolist() == [1.0] * 6  # understanding items and dummies are clean
    pre = InstructDataset(ann, root, b, mode="pre-training", resolution=RES, counter=BadSampleCounter(0.9))[0]
    assert pre["sequence"].modality_positions[0, 0].item() == 2


def test_interleaved_loader(tmp_path, tok):
    tokenizer, sp = tok
    root = tmp_path / "vist"
    for k in range(6):
        _png(root / f"s{k}.jpg", value=k * 40)
    recs = [
        {"images": [f"s{k}" for k in range(6)], "captions": [f"a red circle {k}" for k in range(6)]},  # 0 long
        {"images": [], "captions": []},                                                                # 1 empty
        {"images": ["s0", "s1"], "captions": ["one"]},                                                 # 2 mismatch
        {"images": ["s0.jpg", "nope"], "captions": ["a", "b"]},                                        # 3 missing
        {"images": ["s0", "s1"], "captions": ["a red", "circle"]},                                     # 4 good
    ]
    ann = tmp_path / "vist.json"
    ann.write_text(json.dumps(recs))
    b = SequenceBuilder(sp, tokenizer=tokenizer, max_seq_len=200)
    ds = InterleavedDataset(ann, root, b, resolution=RES, seed=1, counter=BadSampleCounter(0.9))
    it = ds[0]
    s = it["sequence"]
    assert len(it["pixels"]) == 4 and s.modality_positions.shape == (4, 2) and s.data_type == "interleaved_data"
    assert [ds[i]["index"] for i in (1, 2, 3)] == [4, 4, 4]
    starts = set()
    for e in range(20):
        ds.set_epoch(e)
        starts.add(ds.window(0, 6)[0])
    assert starts == {0, 1, 2}
    ds_official = InterleavedDataset(ann, root, b, resolution=RES, official_window=True)
    assert {ds_official.window(0, 5)[0] for _ in range(3)} == {0}
    batch = collate_samples([it, ds[4]], sp.pad, max_slots=4)
    assert batch["pixels"].shape == (8, 3, RES, RES) and batch["visual_valid"].sum() == 6


def test_frame_sampling():
    assert sample_frame_indices(17, 5) == [0, 4, 8, 12, 16]
    assert sample_frame_indices(3, 5, "repeat") == [0, 0, 1, 1, 2]
    assert sample_frame_indices(7, 9, "shrink") == [0, 1, 3, 4, 6]
    with pytest.raises(ValueError, match="too_few_frames"):
        sample_frame_indices(3, 5)
    with pytest.raises(ValueError, match="too_few_frames"):
        sample_frame_indices(0, 5, "repeat")


def test_video_loader(tmp_path, tok):
    tokenizer, sp = tok
    mp4 = _mp4(tmp_path / "v.mp4", 9)
    assert read_frames(mp4, 5).shape == (5, 32, 32, 3)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 1000)
    recs = [
        {"path": mp4, "prompt": "a red circle moving left"},                  # 0 mp4
        {"path": _frames_dir(tmp_path / "f", 9), "prompt": "a red circle"},   # 1 frame folder
        {"path": str(broken), "prompt": "x"},                                 # 2 undecodable
        {"path": _frames_dir(tmp_path / "short", 3), "prompt": "x"},          # 3 too few frames
        {"path": str(tmp_path / "none.mp4"), "prompt": "x"},                  # 4 missing
        {"path": mp4, "prompt": ""},                                          # 5 empty caption
    ]
    jl = tmp_path / "v.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in recs))
    b = SequenceBuilder(sp, tokenizer=tokenizer, max_seq_len=64)
    counter = BadSampleCounter(max_bad_fraction=0.9)
    ds = VideoTextDataset(jl, b, num_frames=5, resolution=RES, cond_dropout_prob=0.0, counter=counter)
    it = ds[0]
    assert it["pixels"][0].shape == (3, 5, RES, RES) and it["sequence"].modality_positions[0, 1] == 9
    assert it["data_type"] == "t2v" and it["sequence"].input_ids[it["sequence"].modality_positions[0, 0] - 1] == sp.bov
    assert ds[1]["pixels"][0].shape == (3, 5, RES, RES)
    assert [ds[i]["index"] for i in (2, 3, 4, 5)] == [0, 0, 0, 0]
    for r in ("video_decode_error", "too_few_frames", "missing_file", "empty_caption"):
        assert counter.counts[r] >= 1, r
    i2v = VideoTextDataset(jl, b, task="i2v", num_frames=5, resolution=RES, counter=BadSampleCounter(0.9))[0]
    assert i2v["sequence"].visuals[0].cond_frames == 1 and i2v["sequence"].image_masks.sum() == 9 - 4
    rep = VideoTextDataset(jl, b, num_frames=5, resolution=RES, short_clip="repeat", counter=BadSampleCounter(0.9))
    assert rep[3]["index"] == 3
    with pytest.raises(TooManyBadSamples, match="bad_videos.jsonl"):
        bad = tmp_path / "bad_videos.jsonl"
        bad.write_text("".join(json.dumps({"path": str(broken), "prompt": "x"}) + "\n" for _ in range(25)))
        VideoTextDataset(bad, b, num_frames=5, resolution=RES)[0]


def test_private_frame_reader_matches_policies(tmp_path):
    from datasets.video_text import _read_frames_private

    folder = _frames_dir(tmp_path / "f", 9)
    mp4 = _mp4(tmp_path / "v.mp4", 9)
    assert _read_frames_private(Path(folder), 5, "skip", 4).shape == (5, 32, 40, 3)
    assert _read_frames_private(Path(mp4), 5, "skip", 4).shape == (5, 32, 32, 3)
    with pytest.raises(ValueError, match="too_few_frames"):
        _read_frames_private(Path(folder), 13, "skip", 4)
    assert read_frames(folder, 13, "shrink").shape[0] == 9
