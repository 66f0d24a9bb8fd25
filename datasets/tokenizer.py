"""Qwen2.5 tokenizer with the Show-o2 special tokens (spec: training §1, inference §1.1).

``load_tokenizer`` loads a Qwen2.5(-Instruct) tokenizer (local folder or hub id) and extends it
exactly as the released code does, in this order:

1. ``[PAD]`` as a new *special* token, registered as the pad token (replaces ``<|endoftext|>``);
2. ordinary added tokens ``<image>``, ``<|vid_start|>``, ``<|vid_end|>``.

On the real tokenizer this yields ids 151665..151668 and a vocabulary of 151,669. All ids are looked
up **by string**, never hard-coded, so the same code works on the locally built demo tokenizer
(``build_demo_tokenizer``) which carries every Qwen2.5 special-token string.

Text is always tokenised with ``add_special_tokens=False`` (``encode``); where the reference tokenises
several pieces separately and concatenates the id lists, callers do the same (``ChatIds`` holds the
chat-template pieces tokenised exactly that way).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Qwen2.5 added tokens in id order (151643 ... 151664 on the real tokenizer). The first 14 are
# special, the tool-call / FIM / repo tokens are ordinary added tokens, as in the released files.
QWEN_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)

PAD_TOKEN = "[PAD]"
SHOWO2_ADDED_TOKENS: tuple[str, ...] = ("<image>", "<|vid_start|>", "<|vid_end|>")

# role -> token string (the lookup table used by ``SpecialTokens.from_tokenizer``)
ROLE_TO_STRING: dict[str, str] = {
    "bos": "<|im_start|>",
    "eos": "<|im_end|>",
    "boi": "<|vision_start|>",
    "eoi": "<|vision_end|>",
    "img_pad": "<|image_pad|>",
    "vid_pad": "<|video_pad|>",
    "pad": PAD_TOKEN,
    "img": "<image>",
    "bov": "<|vid_start|>",
    "eov": "<|vid_end|>",
}

# Ids on the real Qwen2.5 tokenizer (base length 151,665), used only as a sanity check.
QWEN25_BASE_LEN = 151665
QWEN25_EXPECTED_IDS: dict[str, int] = {
    "bos": 151644, "eos": 151645, "boi": 151652, "eoi": 151653, "img_pad": 151655,
    "vid_pad": 151656, "pad": 151665, "img": 151666, "bov": 151667, "eov": 151668,
}

# Chat-template text pieces (tokenised separately, spec training §6.4 / inference §2.2).
SYSTEM_PROMPT = "system\nYou are a helpful assistant.<|im_end|>"
ROLE_USER = "\n<|im_start|>user\n"
ROLE_ASSISTANT = "\n<|im_start|>assistant\n"
NEWLINE = "\n"


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the Show-o2 special tokens (looked up by string) plus the vocabulary size."""

    bos: int
    eos: int
    boi: int
    eoi: int
    img_pad: int
    vid_pad: int
    pad: int
    img: int
    bov: int
    eov: int
    vocab_size: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> SpecialTokens:
        """Look every role up by its string; fail loudly if one is missing."""
        ids: dict[str, int] = {}
        unk = getattr(tokenizer, "unk_token_id", None)
        vocab = tokenizer.get_vocab()
        for role, s in ROLE_TO_STRING.items():
            tid = vocab.get(s)
            if tid is None:
                tid = tokenizer.convert_tokens_to_ids(s)
            if tid is None or (unk is not None and tid == unk):
                raise ValueError(f"tokenizer has no token {s!r} (role {role}); is this a Qwen2.5 tokenizer?")
            ids[role] = int(tid)
        return cls(**ids, vocab_size=len(tokenizer))

    @classmethod
    def from_fixture(cls, special_ids: dict[str, Any], vocab_size: int | None = None) -> SpecialTokens:
        """Build from ``fixture.json["special_ids"]`` (parity fixture's tiny id space)."""
        tok = special_ids["tokens"]
        ids = {role: int(tok[s]) for role, s in ROLE_TO_STRING.items()}
        return cls(**ids, vocab_size=int(vocab_size if vocab_size is not None else max(tok.values()) + 1))

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @property
    def visual_ids(self) -> tuple[int, int]:
        """Placeholder ids that are overwritten by visual embeddings."""
        return (self.img_pad, self.vid_pad)


@dataclass(frozen=True)
class ChatIds:
    """Chat-template pieces as id lists, each tokenised on its own (as the reference does)."""

    system_prompt: list[int]
    role_user: list[int]
    role_assistant: list[int]
    nl: list[int]

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, system_prompt: str = SYSTEM_PROMPT) -> ChatIds:
        return cls(
            system_prompt=encode(tokenizer, system_prompt),
            role_user=encode(tokenizer, ROLE_USER),
            role_assistant=encode(tokenizer, ROLE_ASSISTANT),
            nl=encode(tokenizer, NEWLINE),
        )

    @classmethod
    def from_fixture(cls, chat_ids: dict[str, Any]) -> ChatIds:
        """Build from ``fixture.json["chat_ids"]``."""
        nl = chat_ids["NL"]
        return cls(
            system_prompt=list(chat_ids["system_prompt"]),
            role_user=list(chat_ids["role_user"]),
            role_assistant=list(chat_ids["role_assistant"]),
            nl=[nl] if isinstance(nl, int) else list(nl),
        )


def encode(tokenizer: Any, text: str) -> list[int]:
    """Tokenise one text piece without automatically added special tokens."""
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _is_local(path_or_hub_id: str | os.PathLike) -> bool:
    return Path(path_or_hub_id).expanduser().exists()


def _auto_tokenizer(path_or_hub_id: str | os.PathLike, cache_dir: str | None, local_files_only: bool | None) -> Any:
    """Load with ``AutoTokenizer``; hub ids try the local cache first so offline runs work."""
    from transformers import AutoTokenizer

    src = str(Path(path_or_hub_id).expanduser()) if _is_local(path_or_hub_id) else str(path_or_hub_id)
    if _is_local(path_or_hub_id):
        return AutoTokenizer.from_pretrained(src, cache_dir=cache_dir)
    offline_env = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if local_files_only is None:
        # cached copy first (no network); fall back to a download only when allowed
        try:
            return AutoTokenizer.from_pretrained(src, cache_dir=cache_dir, local_files_only=True)
        except Exception as cached_err:  # noqa: BLE001 - any cache miss -> try the hub
            if offline_env:
                raise OSError(f"tokenizer {src!r} is not a local folder and not in the HF cache "
                              f"(HF_HUB_OFFLINE is set): {cached_err}") from cached_err
            try:
                return AutoTokenizer.from_pretrained(src, cache_dir=cache_dir)
            except Exception as err:  # noqa: BLE001
                raise OSError(f"could not load tokenizer {src!r} from a local folder, the HF cache or the hub: "
                              f"{err}") from err
    return AutoTokenizer.from_pretrained(src, cache_dir=cache_dir, local_files_only=local_files_only)


def extend_tokenizer(tokenizer: Any) -> SpecialTokens:
    """Add ``[PAD]`` (special, pad) then ``<image>``, ``<|vid_start|>``, ``<|vid_end|>`` in place.

    Idempotent: a tokenizer saved after extension is not extended twice.
    """
    base_len = len(tokenizer)
    vocab = tokenizer.get_vocab()
    if PAD_TOKEN not in vocab:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    else:
        tokenizer.pad_token = PAD_TOKEN
    missing = [t for t in SHOWO2_ADDED_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing)  # ordinary (non-special) added tokens, as the reference
    tokenizer.padding_side = "right"
    special = SpecialTokens.from_tokenizer(tokenizer)
    if base_len == QWEN25_BASE_LEN:
        got = {k: getattr(special, k) for k in QWEN25_EXPECTED_IDS}
        if got != QWEN25_EXPECTED_IDS:
            warnings.warn(f"Qwen2.5-sized tokenizer but unexpected Show-o2 ids {got}; released checkpoints "
                          f"expect {QWEN25_EXPECTED_IDS}", stacklevel=2)
    return special


def load_tokenizer(
    path_or_hub_id: str | os.PathLike,
    *,
    cache_dir: str | None = None,
    local_files_only: bool | None = None,
) -> tuple[Any, SpecialTokens]:
    """Load a Qwen2.5 tokenizer (folder or hub id, offline-safe) and add the Show-o2 tokens.

    Returns ``(tokenizer, SpecialTokens)``. ``local_files_only=None`` tries the HF cache first and
    the network only if that fails and ``HF_HUB_OFFLINE`` is not set.
    """
    tokenizer = _auto_tokenizer(path_or_hub_id, cache_dir, local_files_only)
    special = extend_tokenizer(tokenizer)
    return tokenizer, special


def build_demo_tokenizer(
    texts: Iterable[str],
    out_dir: str | os.PathLike,
    vocab_size: int = 486,
    *,
    min_frequency: int = 1,
) -> Path:
    """Train a small byte-level BPE on ``texts`` and save it as a Qwen2.5-shaped tokenizer folder.

    Ordinary text ids are exactly ``0 .. vocab_size-1`` (unused slots are filled with reserved
    special tokens so ids never depend on how much text was given); the Qwen2.5 added tokens follow
    in Qwen order. ``load_tokenizer(out_dir)`` then appends ``[PAD]``, ``<image>``, ``<|vid_start|>``,
    ``<|vid_end|>``. With the default ``vocab_size=486`` every special id equals the parity
    fixture's (``fixture.json["special_ids"]``), e.g. bos 487, pad 508, vocab 512.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise ValueError("vocab_size must be > 256 (the byte alphabet)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    n = tok.get_vocab_size()
    if n > vocab_size:
        raise RuntimeError(f"BPE trainer produced {n} > {vocab_size} tokens")
    # fill to exactly vocab_size so that special ids are deterministic
    fillers = [AddedToken(f"<|demo_reserved_{i}|>", special=True, normalized=False) for i in range(vocab_size - n)]
    if fillers:
        tok.add_special_tokens(fillers)
    for s, special in QWEN_ADDED_TOKENS:
        t = AddedToken(s, special=special, normalized=False)
        if special:
            tok.add_special_tokens([t])
        else:
            tok.add_tokens([t])
    tok.save(str(out / "tokenizer.json"))

    # Mirrors the fields of Qwen2.5-Instruct's tokenizer_config.json that matter here.
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": 131072,
        "split_special_tokens": False,
        "padding_side": "right",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, indent=2))
    return out


def tokenize_pieces(tokenizer: Any, pieces: Sequence[str]) -> list[int]:
    """Tokenise each piece on its own and concatenate (never tokenise the joined string)."""
    ids: list[int] = []
    for p in pieces:
        ids.extend(encode(tokenizer, p))
    return ids
