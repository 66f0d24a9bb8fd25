"""The real data loaders read every file the shapes world writes, with no bad samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from datasets import shapes

loaders = pytest.importorskip("datasets.instruct")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    from datasets.sequence import SequenceBuilder
    from datasets.tokenizer import build_demo_tokenizer, load_tokenizer

    root = tmp_path_factory.mktemp("sw")
    paths = shapes.write_shapes_world(root / "w", n_train=6, n_eval=4, n_videos=4, n_stories=2, resolution=32,
                                      video_frames=5)
    captions = [shapes.sample_spec(__import__("random").Random(i)).caption() for i in range(100)]
    tokenizer, sp = load_tokenizer(build_demo_tokenizer(captions, root / "tok", 300))
    return paths, SequenceBuilder(sp, tokenizer=tokenizer, max_seq_len=160), sp


def _all_items(ds) -> list:
    items = [ds[i] for i in range(len(ds))]
    assert ds.counter.bad == 0, ds.counter.counts  # nothing was skipped and replaced
    return items


def test_image_text_loader(setup) -> None:
    from datasets.image_text import ImageTextDataset

    paths, b, _ = setup
    for task in ("t2i", "caption"):
        ds = ImageTextDataset(paths["image_text"], b, task=task, resolution=32, cond_dropout_prob=0.0)
        items = _all_items(ds)
        assert len(items) == 6 and all(it["pixels"][0].shape == (3, 32, 32) for it in items)


def test_instruct_loader_images_and_videos(setup) -> None:
    from datasets.instruct import InstructDataset

    paths, b, _ = setup
    for key in ("llava_train", "llava_eval", "video_qa_train"):
        ds = InstructDataset(paths[key], paths["image_root"], b, resolution=32, num_frames=5)
        items = _all_items(ds)
        assert len(items) == len(ds) > 0
        assert all(it["data_type"].startswith("mmu") for it in items)


def test_video_text_and_vist_loaders(setup) -> None:
    from datasets.interleaved import InterleavedDataset
    from datasets.video_text import VideoTextDataset

    paths, b, _ = setup
    ds = VideoTextDataset(paths["video_text"], b, num_frames=5, resolution=32, cond_dropout_prob=0.0)
    assert len(_all_items(ds)) == 4
    ds = InterleavedDataset(paths["vist"], paths["image_root"], b, resolution=32)
    items = _all_items(ds)
    assert len(items) == 2
    assert Path(paths["vist"]).is_file()
