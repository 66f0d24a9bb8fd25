"""Sequence layouts pinned to the parity fixture (official token ids/labels/positions) and the spec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from datasets.sequence import (
    IGNORE_INDEX,
    RESOLUTION_PRESETS,
    SampleError,
    SequenceBuilder,
    VisualInfo,
    collate,
    max_text_len,
    num_visual_tokens,
    vist_max_text_len,
    visual_block_len,
)
from datasets.tokenizer import ChatIds, SpecialTokens

FIX = Path(__file__).parent / "fixtures" / "parity"


@pytest.fixture(scope="module")
def fx():
    meta = json.loads((FIX / "fixture.json").read_text())
    io = load_file(str(FIX / "io.safetensors"))
    sp = SpecialTokens.from_fixture(meta["special_ids"])
    chat = ChatIds.from_fixture(meta["chat_ids"])
    return meta, io, sp, chat


def _eq(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.tolist() == b.tolist()


def test_special_ids_from_fixture(fx):
    meta, _, sp, chat = fx
    assert (sp.bos, sp.eos, sp.boi, sp.eoi, sp.img_pad, sp.vid_pad, sp.pad, sp.img, sp.bov, sp.eov) == (
        487, 488, 495, 496, 498, 499, 508, 509, 510, 511)
    assert sp.vocab_size == 512
    assert chat.system_prompt[-1] == sp.eos and chat.nl == [10]


def test_t2i_rows_match_fixture(fx):
    meta, io, sp, _ = fx
    b = SequenceBuilder(sp, max_seq_len=48)
    ids = io["t2i.text_tokens"]
    rows = []
    for i, n in enumerate(meta["layout"]["t2i_text_lens"]):
        s = b.t2i(ids[i, 1:1 + n].tolist(), VisualInfo.image(16))
        assert s.modality_positions.tolist() == [[n + 2, 17]]  # slot offset = len(caption) + 2
        _eq(s.text_masks(sp), io["t2i.text_masks"][i])
        rows.append(s)
    batch = collate(rows, sp.pad)
    _eq(batch["input_ids"], ids)
    _eq(batch["labels"], io["t2i.text_labels"])
    _eq(batch["image_masks"], io["t2i.image_masks"])
    _eq(batch["modality_positions"], io["t2i.modality_positions"])
    assert batch["data_type"] == ["t2i", "t2i"]


def test_cfg_batch_matches_fixture(fx):
    meta, io, sp, _ = fx
    b = SequenceBuilder(sp, max_seq_len=40)
    ids = io["cfg.text_tokens"]
    caps = [ids[i, 1:1 + n].tolist() for i, n in enumerate(meta["layout"]["cfg_text_lens"])]
    rows = b.t2i_cfg(caps, 16)
    batch = collate(rows, sp.pad)
    _eq(batch["input_ids"], ids)
    _eq(batch["modality_positions"], io["cfg.modality_positions"])
    # text budget 40 - 17 - 4 = 19
    long = b.t2i(list(range(30)), 16)
    assert long.num_truncated == 11 and long.modality_positions.tolist() == [[21, 17]]
    # unpadded variant for cached inference
    s = b.t2i(caps[0], 16, pad_to=None)
    assert len(s) == 1 + 5 + 1 + 17 + 2 and s.input_ids[-1].item() == sp.eos


def test_mmu_chat_rows_match_fixture(fx):
    meta, io, sp, chat = fx
    ids, labels = io["mmu.text_tokens"], io["mmu.text_labels"]
    off = 1 + 9 + 4 + 1 + 17 + 1 + 1  # bos sys role boi block eoi nl
    for official in (True, False):
        b = SequenceBuilder(sp, chat, max_seq_len=56, official_image_masks=official)
        rows = []
        for i, (q, a) in enumerate(meta["layout"]["mmu_qa_lens"]):
            question = ids[i, off:off + q].tolist()
            answer = ids[i, off + q + 1 + 4: off + q + 1 + 4 + a].tolist()
            turns = [("human", [sp.img] + chat.nl + question), ("gpt", answer)]
            rows.append(b.chat(turns, [VisualInfo.image(16)], mode="tuning"))
        batch = collate(rows, sp.pad)
        _eq(batch["input_ids"], ids)
        _eq(batch["labels"], labels)
        _eq(batch["modality_positions"], io["mmu.modality_positions"])
        if official:
            _eq(batch["image_masks"], io["mmu.image_masks"])
        else:
            assert batch["image_masks"].sum() == 0  # understanding images carry no flow loss
        assert all(not v[0].generate for v in batch["visuals"])


def test_train_batch_caption_rows_match_fixture(fx):
    meta, io, sp, _ = fx
    ids = io["train.text_tokens"]
    b = SequenceBuilder(sp, max_seq_len=48)
    rows = [b.t2i(ids[i, 1:1 + n].tolist(), 16) for i, n in enumerate(meta["layout"]["train_t2i_text_lens"])]
    for i, n in enumerate(meta["layout"]["train_mmu_text_lens"]):
        rows.append(b.caption(ids[2 + i, 20:20 + n].tolist(), 16))
    batch = collate(rows, sp.pad)
    _eq(batch["input_ids"], ids)
    _eq(batch["labels"], io["train.text_labels"])
    _eq(batch["modality_positions"], io["train.modality_positions"])
    _eq(batch["image_masks"], io["train.image_masks_loss"])  # default: flow mask off for captioning
    assert batch["data_type"] == ["t2i", "t2i", "mmu", "mmu"]
    b_off = SequenceBuilder(sp, max_seq_len=48, official_image_masks=True)
    rows[2:] = [b_off.caption(ids[2 + i, 20:20 + n].tolist(), 16)
                for i, n in enumerate(meta["layout"]["train_mmu_text_lens"])]
    _eq(collate(rows, sp.pad)["image_masks"], io["train.image_masks"])


def test_video_row_matches_fixture(fx):
    meta, io, sp, _ = fx
    b = SequenceBuilder(sp, max_seq_len=64)
    ids = io["video.text_tokens"]
    n = meta["layout"]["video_text_lens"][0]
    s = b.t2v(ids[0, 1:1 + n].tolist(), VisualInfo.video(16, latent_frames=3))
    _eq(s.input_ids, ids[0])
    _eq(s.image_masks, io["video.image_masks"][0])
    _eq(s.modality_positions, io["video.modality_positions"][0])
    assert s.visuals[0].block_len == 49 and s.task == "t2v"
    i2v = b.i2v(ids[0, 1:1 + n].tolist(), VisualInfo.video(16, latent_frames=3), cond_frames=1)
    assert i2v.image_masks.sum().item() == 49 - 16 and i2v.image_masks[8 + 1:8 + 17].sum() == 0
    assert i2v.task == "i2v" and i2v.visuals[0].cond_frames == 1


def test_mmu_prompt_official_demo_and_train_block(fx):
    _, io, sp, chat = fx
    b = SequenceBuilder(sp, chat)
    a, bb = io["mmu_gen.text_tokens_a"][0].tolist(), io["mmu_gen.text_tokens_b"][0].tolist()
    q = io["mmu_gen.question_ids"].tolist()
    demo = b.mmu_prompt(q, 16, layout="official_demo")
    assert demo.input_ids.tolist() == a + [sp.boi] + [sp.img_pad] * 17 + bb[1:]
    _eq(demo.modality_positions, io["mmu_gen.modality_positions"][0])
    fixed = b.mmu_prompt(q, 16, layout="official_demo", off_by_one_block=False)
    _eq(fixed.modality_positions, io["mmu_gen_trainlayout.modality_positions"][0])
    train = b.mmu_prompt(q, 16, layout="train")
    # training template: newline after the image, <|im_end|> closes the user turn
    assert train.input_ids.tolist() == a + [sp.boi] + [sp.img_pad] * 17 + [sp.eoi] + chat.nl + q + [
        sp.eos] + chat.role_assistant
    assert train.modality_positions.tolist() == [[15, 17]] and (train.labels == IGNORE_INDEX).all()


def test_spec_worked_examples():
    assert num_visual_tokens(432, 432) == 729 and visual_block_len(432, 432) == 730
    assert num_visual_tokens(512, 512) == 1024 and num_visual_tokens(1024, 1024) == 4096
    assert num_visual_tokens(432, 432, frames=17) == 5 * 729
    assert max_text_len(1024, 730) == 290
    assert RESOLUTION_PRESETS[432].max_text_len == 290 and RESOLUTION_PRESETS[512].block_len == 1025
    with pytest.raises(ValueError):
        num_visual_tokens(430, 432)
    with pytest.raises(ValueError):
        num_visual_tokens(432, 432, frames=6)
    sp = SpecialTokens.from_fixture(json.loads((FIX / "fixture.json").read_text())["special_ids"])
    b = SequenceBuilder(sp, max_seq_len=1024)
    v = VisualInfo.for_resolution(432)
    s = b.t2i(list(range(400)), v)
    assert s.modality_positions.tolist() == [[292, 730]] and s.num_truncated == 110 and len(s) == 1024
    c = b.caption(list(range(400)), v)
    assert c.modality_positions.tolist() == [[2, 730]] and c.labels[c.unpadded_len - 1] == sp.eos
    assert vist_max_text_len(4352, 8, 730) == (4352 - 8 - 732 * 4 - 2) // 4


def test_chat_pretraining_multiturn_truncation_and_errors(fx):
    _, _, sp, chat = fx
    b = SequenceBuilder(sp, chat, max_seq_len=64)
    # pre-training: the image turn becomes the bare block, no roles / system prompt
    s = b.chat([("human", [sp.img, 10, 40, 41]), ("gpt", [50, 51, 52])], [VisualInfo.image(16)],
               mode="pre-training")
    assert s.input_ids[:20].tolist() == [sp.bos, sp.boi] + [sp.img_pad] * 17 + [sp.eoi]
    assert s.input_ids[20:24].tolist() == [50, 51, 52, sp.eos] and s.modality_positions.tolist() == [[2, 17]]
    assert s.labels[20:24].tolist() == [50, 51, 52, sp.eos] and (s.labels[:20] == IGNORE_INDEX).all()
    # multi-turn, two images in different turns: both expanded
    b2 = SequenceBuilder(sp, chat, max_seq_len=None)
    turns = [("human", [sp.img, 10, 40]), ("gpt", [50]), ("human", [sp.img, 41]), ("gpt", [51, 52])]
    s2 = b2.chat(turns, [VisualInfo.image(4, source_index=0), VisualInfo.image(4, source_index=1)])
    assert s2.modality_positions.shape == (2, 2)
    for off, ln in s2.modality_positions.tolist():
        assert s2.input_ids[off - 1] == sp.boi and s2.input_ids[off + ln] == sp.eoi
    sup = s2.labels[s2.labels != IGNORE_INDEX].tolist()
    assert sup == [50, sp.eos, 51, 52, sp.eos]
    # truncation: a long answer is cut but keeps its final <|im_end|>; never cuts the block
    b3 = SequenceBuilder(sp, chat, max_seq_len=64)
    s3 = b3.chat([("human", [sp.img, 10, 40]), ("gpt", list(range(100)))], [VisualInfo.image(16)])
    assert len(s3) == 64 and s3.input_ids[-1] == sp.eos and s3.labels[-1] == sp.eos
    assert s3.num_truncated > 0 and b3.stats["truncated_text"] == 1
    # trailing turns dropped first
    s4 = b3.chat([("human", [40]), ("gpt", [50]), ("human", [41]), ("gpt", list(range(60)))])
    assert s4.labels[s4.labels != IGNORE_INDEX].tolist() == [50, sp.eos] and b3.stats["dropped_turns"] == 1
    # prompt that cannot fit -> SampleError
    with pytest.raises(SampleError) as e:
        b3.chat([("human", [sp.img, 40]), ("gpt", [50])], [VisualInfo.image(64)])
    assert e.value.reason == "too_long"
    # more <image> tags than images
    with pytest.raises(SampleError) as e:
        b3.chat([("human", [sp.img, sp.img, 40]), ("gpt", [50])], [VisualInfo.image(4)])
    assert e.value.reason == "image_tag_mismatch"
    # text-only sample: no slot (clean design; collate pads (0, 0))
    s5 = b3.chat([("human", [40, 41]), ("gpt", [50])])
    assert s5.modality_positions.shape == (0, 2) and s5.data_type == "mmu"
    batch = collate([s3, s5], sp.pad)
    assert batch["modality_positions"].tolist() == [[[15, 17]], [[0, 0]]] and batch["num_slots"].tolist() == [1, 0]
    # image given without a tag: prepended (LLaVA convention)
    s6 = b3.chat([("human", [40]), ("gpt", [50])], [VisualInfo.image(4)])
    assert s6.input_ids[14].item() == sp.boi and s6.modality_positions.tolist() == [[15, 5]]


def test_video_understanding_block(fx):
    _, _, sp, chat = fx
    b = SequenceBuilder(sp, chat, max_seq_len=None)
    s = b.chat([("human", [sp.img, 10, 40]), ("gpt", [50])], [VisualInfo.video(4, latent_frames=3)])
    off, ln = s.modality_positions[0].tolist()
    assert ln == 13 and s.task == "mmu_vid" and s.input_ids[off - 1] == sp.boi
    assert (s.input_ids[off:off + ln] == sp.vid_pad).all() and s.input_ids[off + ln] == sp.eoi


def test_interleaved_layout(fx):
    _, _, sp, _ = fx
    b = SequenceBuilder(sp, max_seq_len=200)
    flag = [7, 8]
    caps = [[20, 21, 22], [23], [24, 25]]
    s = b.interleaved(caps, [VisualInfo.image(16)] * 3, flag=flag)
    pos = s.modality_positions.tolist()
    assert pos == [[1 + 2 + 3 + 1, 17], [7 + 18 + 1 + 1, 17], [27 + 18 + 2 + 1, 17]]
    assert s.input_ids[:6].tolist() == [sp.bos, 7, 8, 20, 21, 22]  # text before its image
    assert s.labels[1:3].tolist() == [IGNORE_INDEX] * 2  # flag unsupervised
    assert s.labels[7:24].tolist() == [sp.img_pad] * 17  # reference: placeholders supervised
    assert s.input_ids[s.unpadded_len - 1] == sp.eos and s.image_masks.sum() == 51
    s2 = b.interleaved(caps, [VisualInfo.image(16)] * 3, flag=flag, label_visual_placeholders=False)
    assert (s2.labels[7:24] == IGNORE_INDEX).all() and s2.labels[6] == sp.boi and s2.labels[24] == IGNORE_INDEX
    with pytest.raises(SampleError):
        b.interleaved(caps, [VisualInfo.image(16)] * 2, flag=flag)
    # rows with different slot counts: padded with (0, 0)
    one = b.interleaved([[20]], [VisualInfo.image(16)], flag=flag)
    batch = collate([s, one], sp.pad, max_slots=4)
    assert batch["modality_positions"].shape == (2, 4, 2) and batch["modality_positions"][1, 1:].abs().sum() == 0


def test_text_only_row(fx):
    _, _, sp, _ = fx
    s = SequenceBuilder(sp, max_seq_len=10).text([1, 2, 3])
    assert s.input_ids.tolist() == [sp.bos, 1, 2, 3, sp.eos] + [sp.pad] * 5
    assert s.labels.tolist()[:5] == [IGNORE_INDEX, 1, 2, 3, sp.eos] and s.modality_positions.shape == (0, 2)


def test_chat_dropping_a_turn_drops_its_image(fx):
    _, _, sp, chat = fx
    b = SequenceBuilder(sp, chat, max_seq_len=60)
    turns = [("human", [sp.img, 10, 40]), ("gpt", [50]), ("human", [sp.img, 41]), ("gpt", [51])]
    s = b.chat(turns, [VisualInfo.image(16, source_index=0), VisualInfo.image(16, source_index=1)])
    assert [v.source_index for v in s.visuals] == [0] and s.modality_positions.shape == (1, 2)
    assert len(s) == 60 and s.labels[s.labels != IGNORE_INDEX].tolist() == [50, sp.eos]
    # every slot is a complete block: [boi] placeholders [eoi]
    off, ln = s.modality_positions[0].tolist()
    assert s.input_ids[off - 1] == sp.boi and (s.input_ids[off:off + ln] == sp.img_pad).all()
    assert s.input_ids[off + ln] == sp.eoi


def test_random_layouts_keep_invariants(fx):
    """Fuzz: whatever the text lengths, a row is either a SampleError or well formed (never a cut block)."""
    import random

    _, _, sp, chat = fx
    rng = random.Random(0)
    n_ok = 0
    for _ in range(300):
        pad = rng.choice([None, 40, 64, 128])
        b = SequenceBuilder(sp, chat, max_seq_len=pad, source_max_len=rng.choice([None, 8]),
                            target_max_len=rng.choice([None, 6]))
        toks = lambda k: [rng.randrange(0, 480) for _ in range(k)]  # noqa: E731
        kind = rng.choice(["t2i", "caption", "chat", "interleaved", "t2v"])
        n_img = rng.randint(1, 3)
        try:
            if kind == "t2i":
                s = b.t2i(toks(rng.randint(0, 80)), 16)
            elif kind == "caption":
                s = b.caption(toks(rng.randint(1, 80)), 16)
            elif kind == "t2v":
                s = b.t2v(toks(rng.randint(0, 40)), VisualInfo.video(4, rng.randint(1, 3)))
            elif kind == "interleaved":
                s = b.interleaved([toks(rng.randint(0, 20)) for _ in range(n_img)], [VisualInfo.image(4)] * n_img,
                                  flag=[1, 2])
            else:
                turns = []
                for k in range(rng.randint(1, 3)):
                    user = ([sp.img] if k < n_img and rng.random() < 0.7 else []) + toks(rng.randint(0, 15))
                    turns += [("human", user), ("gpt", toks(rng.randint(1, 30)))]
                tags = sum(t.count(sp.img) for r, t in turns if r == "human")
                s = b.chat(turns, [VisualInfo.image(4, source_index=i) for i in range(tags)],
                           mode=rng.choice(["tuning", "pre-training"]))
        except SampleError as e:
            assert e.reason in ("too_long",)
            continue
        n_ok += 1
        n = len(s)
        assert s.labels.shape == s.input_ids.shape == s.image_masks.shape
        if pad is not None:
            assert n == pad
        for (off, ln), v in zip(s.modality_positions.tolist(), s.visuals):
            assert ln == v.block_len and off + ln < n
            assert s.input_ids[off - 1].item() in (sp.boi, sp.bov)
            assert s.input_ids[off + ln].item() in (sp.eoi, sp.eov)
            assert set(s.input_ids[off:off + ln].tolist()) <= {sp.img_pad, sp.vid_pad}
        assert s.input_ids[s.unpadded_len - 1].item() == sp.eos
        assert (s.input_ids[s.unpadded_len:] == sp.pad).all() and (s.labels[s.unpadded_len:] == IGNORE_INDEX).all()
        if kind == "chat":
            sup = s.labels[s.labels != IGNORE_INDEX]
            assert sup[-1].item() == sp.eos and sp.img_pad not in sup.tolist()
    assert n_ok > 150
