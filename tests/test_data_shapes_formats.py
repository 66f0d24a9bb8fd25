"""Every loader reads what the shapes world writes (the real on-disk formats), end to end into a
mixed batch."""

from __future__ import annotations

import pytest
import torch

from datasets.image_text import ImageTextDataset
from datasets.instruct import InstructDataset
from datasets.interleaved import InterleavedDataset
from datasets.mixed import MixedLoader, MixedSource
from datasets.sequence import SequenceBuilder
from datasets.tokenizer import build_demo_tokenizer, load_tokenizer
from datasets.video_text import VideoTextDataset

shapes = pytest.importorskip("datasets.shapes")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    paths = shapes.write_shapes_world(root, n_train=12, n_eval=4, n_videos=3, n_stories=3, resolution=32,
                                      video_frames=5)
    import json
    from pathlib import Path

    texts = [json.loads(ln)["prompt"] for ln in Path(paths["image_text"]).read_text().splitlines()]
    tok, sp = load_tokenizer(build_demo_tokenizer(texts * 5 + ["You are a helpful assistant."],
                                                  root / "tok", 320))
    return paths, tok, sp


def test_loaders_read_shapes_world(world):
    paths, tok, sp = world
    b = SequenceBuilder(sp, tokenizer=tok, max_seq_len=160)
    t2i = ImageTextDataset(paths["image_text"], b, resolution=32)
    und = InstructDataset(paths["llava_train"], paths["image_root"], b, resolution=32)
    vid = VideoTextDataset(paths["video_text"], b, num_frames=5, resolution=32)
    vqa = InstructDataset(paths["video_qa_train"], paths["image_root"], b, resolution=32, num_frames=5)
    vist = InterleavedDataset(paths["vist"], paths["image_root"], b, resolution=32)
    for ds in (t2i, und, vid, vqa, vist):
        for i in range(min(3, len(ds))):
            it = ds[i]
            assert it["index"] == i, (ds.source, it["bad"])  # nothing in the world is bad
    assert vid[0]["pixels"][0].shape == (3, 5, 32, 32) and vqa[0]["data_type"] == "mmu_vid"
    assert vist[0]["sequence"].modality_positions.shape[0] == 4
    loader = MixedLoader([MixedSource("t2i", t2i, 3), MixedSource("mmu", und, 2)], pad_id=sp.pad, seed=0)
    batch = next(iter(loader))
    assert batch["data_type"] == ["t2i"] * 3 + ["mmu"] * 2 and batch["pixels"].shape == (5, 3, 32, 32)


def test_build_mixed_loader_from_config(world):
    from omegaconf import OmegaConf

    from datasets.mixed import build_mixed_loader

    paths, _, sp = world
    cfg = OmegaConf.create({
        "source": "mixed", "tokenizer": str(paths["root"]) + "/tok", "max_seq_len": 160, "resolution": 32,
        "sources": [
            {"name": "t2i", "type": "image_text", "path": paths["image_text"], "task": "t2i", "batch_size": 2},
            {"name": "und", "type": "instruct", "path": paths["llava_train"], "root": paths["image_root"],
             "mode": "tuning", "batch_size": 1},
        ],
    })
    loader = build_mixed_loader(cfg, rank=0, world_size=1, seed=7)
    b1 = next(loader)
    assert b1["source"] == ["t2i", "t2i", "und"] and b1["t_min"].tolist() == [0.0, 0.0, 1.0]
    state = loader.state_dict()
    b2 = next(loader)
    again = build_mixed_loader(cfg, rank=0, world_size=1, seed=7)
    again.load_state_dict(state)
    assert torch.equal(next(again)["input_ids"], b2["input_ids"]) and loader.bad_sample_counts() == {}
