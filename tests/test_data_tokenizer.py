"""Tokenizer loading/extension on a locally built Qwen2.5-shaped demo tokenizer (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datasets.sequence import SequenceBuilder, VisualInfo
from datasets.tokenizer import (
    QWEN_ADDED_TOKENS,
    ChatIds,
    SpecialTokens,
    build_demo_tokenizer,
    encode,
    load_tokenizer,
    tokenize_pieces,
)

FIX = Path(__file__).parent / "fixtures" / "parity" / "fixture.json"
TEXTS = [
    "A red circle above a blue square.",
    "Two green triangles to the left of a yellow star.",
    "What colour is the shape? The shape is red.",
    "You are a helpful assistant.",
] * 20


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = build_demo_tokenizer(TEXTS, tmp_path_factory.mktemp("tok"), vocab_size=486)
    return out, *load_tokenizer(out)


def test_demo_tokenizer_matches_fixture_id_space(demo):
    _, tok, sp = demo
    fixture = json.loads(FIX.read_text())["special_ids"]
    # same id space as the parity fixture: Qwen specials at 486.., Show-o2 tokens at 508..511
    assert sp == SpecialTokens.from_fixture(fixture)
    for s, tid in fixture["tokens"].items():
        assert tok.convert_tokens_to_ids(s) == tid, s
    assert len(tok) == 512 and tok.pad_token == "[PAD]" and tok.pad_token_id == sp.pad
    assert tok.eos_token_id == sp.eos and [s for s, _ in QWEN_ADDED_TOKENS][0] == "<|endoftext|>"


def test_special_strings_are_single_tokens(demo):
    _, tok, sp = demo
    ids = encode(tok, "system\nYou are a helpful assistant.<|im_end|>")
    assert ids[-1] == sp.eos and sp.eos not in ids[:-1]
    assert encode(tok, "<image>\nWhat") [0] == sp.img
    assert encode(tok, "a<|image_pad|>b").count(sp.img_pad) == 1
    assert encode(tok, "") == [] and sp.bos not in encode(tok, "hello")  # add_special_tokens=False
    assert tok.decode(encode(tok, "A red circle.")) == "A red circle."
    assert tokenize_pieces(tok, ["A red", " circle"]) == encode(tok, "A red") + encode(tok, " circle")


def test_load_is_idempotent_and_reloadable(demo, tmp_path):
    path, tok, sp = demo
    _, sp2 = load_tokenizer(path)
    assert sp2 == sp
    tok.save_pretrained(tmp_path / "saved")
    tok3, sp3 = load_tokenizer(tmp_path / "saved")  # already extended: nothing added twice
    assert sp3 == sp and len(tok3) == len(tok)


def test_hub_id_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="not a local folder"):
        load_tokenizer("Qwen/this-model-does-not-exist-locally")


def test_builder_with_tokenizer_equals_pretokenised(demo):
    _, tok, sp = demo
    chat = ChatIds.from_tokenizer(tok)
    assert chat.system_prompt[-1] == sp.eos and chat.role_user[1] == sp.bos
    b = SequenceBuilder(sp, tokenizer=tok, max_seq_len=128)
    s_str = b.t2i("A red circle above a blue square.", VisualInfo.image(16))
    s_ids = b.t2i(encode(tok, "A red circle above a blue square."), VisualInfo.image(16))
    assert s_str.input_ids.tolist() == s_ids.input_ids.tolist()
    q = b.chat([("human", "<image>\nWhat colour is the shape?"), ("gpt", "The shape is red.")],
               [VisualInfo.image(16)])
    answer = encode(tok, "The shape is red.")
    assert q.labels[q.labels != -100].tolist() == answer + [sp.eos]
    assert q.modality_positions.tolist() == [[1 + len(chat.system_prompt) + len(chat.role_user) + 1, 17]]
