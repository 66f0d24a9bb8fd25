"""THE Show-o2 sequence layout, defined once and used by training and inference alike.

Spec: reference-training §6 (token layouts, labels, padding, truncation), reference-inference
§2.1-2.4 (generation / understanding prompts). Every builder returns a ``SequenceSample``:

* ``input_ids``  (L,) long - text ids; visual positions hold ``<|image_pad|>`` / ``<|video_pad|>``
* ``labels``     (L,) long - unshifted copy of the ids or -100 (the NTP loss shifts by one)
* ``image_masks``(L,) long - 1 where the flow loss applies (whole visual block, time slot included;
  the model clears the time slot itself). Understanding items are clean context and get 0 here
  unless ``official_image_masks=True`` (the released datasets emit 1 and zero it in the trainer).
* ``modality_positions`` (M, 2) long - ``(offset, length)`` per visual item; ``offset`` = the time
  slot = the first placeholder after the opening delimiter; ``length = n*T + 1``.
* ``task`` and ``visuals`` (one ``VisualInfo`` per slot: grid, frames, generate/clean, source index).

Layouts (``n`` = visual tokens, ``+1`` = the time slot):

* t2i        ``[bos] caption [boi] [img_pad x (n+1)] [eoi] [eos] [pad..]``  no text labels
* caption    ``[bos] [boi] [img_pad x (n+1)] [eoi] caption [eos] [pad..]``  labels bos, boi, eoi,
  caption, eos (stage-1 captioning, §6.3)
* chat       ``[bos] (system) role_user user(<image> -> block) [eos] role_assistant answer [eos] ..``
  (tuning, §6.4) or ``[bos] <image>-block caption [eos] ..`` (pre-training); labels on answers + eos
* interleaved ``[bos] flag cap1 block1 cap2 block2 ... [eos] [pad..]`` (VIST, §6.5)
* t2v / i2v  ``[bos] caption [bov] [vid_pad x (T*n+1)] [eov] [eos] [pad..]``
* text       ``[bos] text [eos] [pad..]`` (labels on text + eos)

Design choices (vs. the released code, see training §15):

* Rows without visual items have **no** slot (M = 0). The released code emits a ``(0, 0)`` slot which
  makes the model overwrite the BOS embedding with a time embedding (quirk 15); ``collate`` pads
  missing slots with ``(0, 0)`` and a model that wants the quirk can reproduce it from those rows.
* Over-long text is truncated, never a visual block: captions are cut on the right; chats drop
  trailing (user, assistant) pairs, then cut the last answer keeping its final ``<|im_end|>``
  (quirk 16 fixed). Samples that cannot fit raise ``SampleError("too_long")``.
* Every ``<image>`` tag is expanded (quirk 17 fixed); more tags than images raises
  ``SampleError("image_tag_mismatch")``.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from datasets.tokenizer import ChatIds, SpecialTokens, encode

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
Text = str | Sequence[int]
PadTo = int | None | Literal["default"]

# Official data_type strings per task (what the trainer branches on).
TASK_TO_DATA_TYPE: dict[str, str] = {
    "t2i": "t2i",
    "caption": "mmu",
    "mmu": "mmu",
    "mmu_vid": "mmu_vid",
    "text": "mmu",
    "interleaved": "interleaved_data",
    "t2v": "t2v",
    "i2v": "i2v",
}


class SampleError(ValueError):
    """A sample that cannot be laid out (loaders count it as a bad sample by ``reason``)."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason


# --------------------------------------------------------------------------------------------
# visual token counts
# --------------------------------------------------------------------------------------------

def latent_frames(frames: int, temporal_stride: int = 4) -> int:
    """Latent frames of the causal video VAE: ``1 + (frames - 1) / temporal_stride`` (frames = 1+4k)."""
    if frames < 1 or (frames - 1) % temporal_stride:
        raise ValueError(f"frames must be 1 + {temporal_stride}k, got {frames}")
    return 1 + (frames - 1) // temporal_stride


def token_grid(height: int, width: int, vae_stride: int = 8, patch: int = 2) -> tuple[int, int]:
    """Visual token grid (h', w') of one frame: pixels / (vae_stride * patch)."""
    step = vae_stride * patch
    if height % step or width % step or height <= 0 or width <= 0:
        raise ValueError(f"{height}x{width} is not a positive multiple of {step}")
    return height // step, width // step


def num_visual_tokens(height: int, width: int, frames: int = 1, vae_stride: int = 8,
                      temporal_stride: int = 4, patch: int = 2) -> int:
    """Visual tokens of one image/clip, **without** the time slot (432x432 -> 729; block = +1)."""
    gh, gw = token_grid(height, width, vae_stride, patch)
    return gh * gw * latent_frames(frames, temporal_stride)


def visual_block_len(height: int, width: int, frames: int = 1, vae_stride: int = 8,
                     temporal_stride: int = 4, patch: int = 2) -> int:
    """Length of a visual block in the sequence = tokens + 1 time slot (432x432 -> 730)."""
    return num_visual_tokens(height, width, frames, vae_stride, temporal_stride, patch) + 1


def max_text_len(max_seq_len: int, block_len: int) -> int:
    """Caption budget of a one-image row: L - block - 4 (bos, boi, eoi, eos); 1024, 730 -> 290."""
    return max_seq_len - block_len - 4


def vist_max_text_len(max_seq_len: int, flag_len: int, block_len: int, max_images: int = 4) -> int:
    """Per-caption budget of the VIST layout (training §4.3): floor((L-flag-(N+2)*k-2)/k)."""
    return (max_seq_len - flag_len - (block_len + 2) * max_images - 2) // max_images


@dataclass(frozen=True)
class ResolutionPreset:
    """Released resolution settings (training §6.1, inference §1.2)."""

    resolution: int
    grid: int
    tokens: int          # visual tokens without the time slot
    block_len: int       # tokens + 1
    max_seq_len: int
    max_text_len: int


RESOLUTION_PRESETS: dict[int, ResolutionPreset] = {
    432: ResolutionPreset(432, 27, 729, 730, 1024, 290),
    512: ResolutionPreset(512, 32, 1024, 1025, 1280, 251),
    1024: ResolutionPreset(1024, 64, 4096, 4097, 4352, 251),
}


# --------------------------------------------------------------------------------------------
# sample containers
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VisualInfo:
    """Shape/role of one visual item (= one slot). ``offset`` is filled in by the builder."""

    kind: str = "image"                    # "image" | "video"
    tokens_per_frame: int = 729
    latent_frames: int = 1
    grid: tuple[int, int] | None = None    # (h', w') token grid per frame, if known
    generate: bool = True                  # noised + flow loss (generation); False = clean context, t = 1
    cond_frames: int = 0                   # i2v: leading latent frames that are clean conditioning
    source_index: int = 0                  # index into the loader's list of images/videos
    offset: int = -1                       # time-slot position in the sequence

    @property
    def num_tokens(self) -> int:
        return self.tokens_per_frame * self.latent_frames

    @property
    def block_len(self) -> int:
        return self.num_tokens + 1

    @classmethod
    def image(cls, tokens: int | tuple[int, int], generate: bool = True, source_index: int = 0) -> VisualInfo:
        """An image with ``tokens`` visual tokens (int) or a (h', w') token grid."""
        grid, n = _grid_and_count(tokens)
        return cls("image", n, 1, grid, generate, 0, source_index)

    @classmethod
    def video(cls, tokens_per_frame: int | tuple[int, int], latent_frames: int, generate: bool = True,
              cond_frames: int = 0, source_index: int = 0) -> VisualInfo:
        grid, n = _grid_and_count(tokens_per_frame)
        return cls("video", n, latent_frames, grid, generate, cond_frames, source_index)

    @classmethod
    def for_resolution(cls, height: int, width: int | None = None, frames: int = 1, generate: bool = True,
                       vae_stride: int = 8, temporal_stride: int = 4, patch: int = 2,
                       source_index: int = 0) -> VisualInfo:
        """From pixel sizes (432 -> 27x27 grid)."""
        grid = token_grid(height, width or height, vae_stride, patch)
        if frames == 1:
            return cls.image(grid, generate, source_index)
        return cls.video(grid, latent_frames(frames, temporal_stride), generate, source_index=source_index)

    @classmethod
    def for_latents(cls, shape: Sequence[int], patch: int = 2, generate: bool = True,
                    source_index: int = 0) -> VisualInfo:
        """From one latent item's shape: (C, h, w) image or (C, T, h, w) video -> (h/p) x (w/p) tokens per frame."""
        grid = (int(shape[-2]) // patch, int(shape[-1]) // patch)
        if len(shape) == 4:
            return cls.video(grid, int(shape[1]), generate, source_index=source_index)
        return cls.image(grid, generate, source_index)


def _grid_and_count(tokens: int | tuple[int, int]) -> tuple[tuple[int, int] | None, int]:
    if isinstance(tokens, tuple):
        return (int(tokens[0]), int(tokens[1])), int(tokens[0]) * int(tokens[1])
    r = math.isqrt(int(tokens))
    return ((r, r) if r * r == tokens else None), int(tokens)


@dataclass
class SequenceSample:
    """One laid-out row (1-D tensors) plus metadata."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    image_masks: torch.Tensor
    modality_positions: torch.Tensor
    task: str
    visuals: list[VisualInfo] = field(default_factory=list)
    num_truncated: int = 0                # text tokens removed to fit
    unpadded_len: int = 0                 # length before right padding

    @property
    def data_type(self) -> str:
        return TASK_TO_DATA_TYPE.get(self.task, self.task)

    def __len__(self) -> int:
        return int(self.input_ids.numel())

    def text_masks(self, special: SpecialTokens) -> torch.Tensor:
        """1 where the token is neither a visual placeholder nor ``[PAD]`` (official, unused by the model)."""
        ids = self.input_ids
        bad = (ids == special.img_pad) | (ids == special.vid_pad) | (ids == special.pad)
        return (~bad).long()


# --------------------------------------------------------------------------------------------
# the builder
# --------------------------------------------------------------------------------------------

class _Row:
    """Mutable accumulator of ids/labels/flow mask/slots."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.labels: list[int] = []
        self.flow: list[int] = []
        self.visuals: list[VisualInfo] = []

    def text(self, ids: Sequence[int], supervised: bool) -> None:
        self.ids.extend(ids)
        self.labels.extend(ids if supervised else [IGNORE_INDEX] * len(ids))
        self.flow.extend([0] * len(ids))

    def block(self, info: VisualInfo, open_id: int, pad_id: int, close_id: int, flow: bool,
              label_delims: bool = False, label_pads: bool = False) -> None:
        self.text([open_id], label_delims)
        off = len(self.ids)
        n = info.block_len
        self.ids.extend([pad_id] * n)
        self.labels.extend([pad_id] * n if label_pads else [IGNORE_INDEX] * n)
        mask = [1] * n if flow else [0] * n
        if flow and info.cond_frames:
            # i2v: the clean conditioning frames (after the time slot) carry no flow loss
            for k in range(1, 1 + info.cond_frames * info.tokens_per_frame):
                mask[k] = 0
        self.flow.extend(mask)
        self.visuals.append(replace(info, offset=off))
        self.text([close_id], label_delims)


class SequenceBuilder:
    """Builds ``SequenceSample`` rows for every task from text (str, needs a tokenizer) or id lists.

    ``max_seq_len`` is the default ``pad_to`` (pass ``pad_to=None`` for an unpadded row, e.g. for
    inference with caching). ``stats`` counts truncations / drops; rows that cannot fit raise
    ``SampleError``.
    """

    def __init__(
        self,
        special: SpecialTokens,
        chat: ChatIds | None = None,
        tokenizer: Any = None,
        max_seq_len: int | None = None,
        *,
        official_image_masks: bool = False,
        source_max_len: int | None = 512,
        target_max_len: int | None = 512,
        system_prompt_max_len: int = 100,
        patch_size: int = 2,
    ) -> None:
        self.sp = special
        self.tokenizer = tokenizer
        if chat is None and tokenizer is not None:
            chat = ChatIds.from_tokenizer(tokenizer)
        self.chat_ids = chat
        self.max_seq_len = max_seq_len
        self.official_image_masks = official_image_masks
        self.source_max_len = source_max_len
        self.target_max_len = target_max_len
        self.system_prompt_max_len = system_prompt_max_len
        # the model's patch size: every loader and the pipeline lay out visual tokens through this builder
        self.patch_size = int(patch_size)
        self.stats: Counter[str] = Counter()
        self._warned = 0

    # ---------------------------------------------------------------- helpers
    def visual_for_latents(self, latents: torch.Tensor, generate: bool = True, source_index: int = 0) -> VisualInfo:
        """VisualInfo of one cached latent item (C, h, w) or (C, T, h, w), at the model's patch size."""
        return VisualInfo.for_latents(latents.shape, self.patch_size, generate, source_index)

    def visual_for_pixels(self, height: int, width: int | None = None, frames: int = 1, generate: bool = True,
                          source_index: int = 0, temporal_stride: int = 4) -> VisualInfo:
        """VisualInfo of a pixel item of ``height`` x ``width`` (x ``frames``) before the (8x) VAE."""
        return VisualInfo.for_resolution(height, width, frames, generate, temporal_stride=temporal_stride,
                                         patch=self.patch_size, source_index=source_index)

    def ids(self, text: Text | None) -> list[int]:
        """Tokenise a str (no special tokens added) or pass an id list through."""
        if text is None:
            return []
        if isinstance(text, str):
            if self.tokenizer is None:
                raise ValueError("string input needs a tokenizer; pass pre-tokenised id lists instead")
            return encode(self.tokenizer, text)
        return [int(t) for t in text]

    def _pad_to(self, pad_to: PadTo) -> int | None:
        return self.max_seq_len if pad_to == "default" else pad_to

    def _note(self, key: str, msg: str, n: int = 1) -> None:
        self.stats[key] += n
        if self._warned < 10:  # log the first few, then only count
            self._warned += 1
            logger.warning("%s (%s)", msg, key)

    def _finish(self, row: _Row, task: str, pad_to: int | None, truncated: int = 0) -> SequenceSample:
        n = len(row.ids)
        if pad_to is not None:
            if n > pad_to:
                self.stats["too_long"] += 1
                raise SampleError("too_long", f"{task} row of {n} tokens exceeds {pad_to}")
            extra = pad_to - n
            row.ids.extend([self.sp.pad] * extra)
            row.labels.extend([IGNORE_INDEX] * extra)
            row.flow.extend([0] * extra)
        if row.visuals:
            pos = torch.tensor([[v.offset, v.block_len] for v in row.visuals], dtype=torch.long)
        else:
            pos = torch.zeros((0, 2), dtype=torch.long)
        return SequenceSample(
            input_ids=torch.tensor(row.ids, dtype=torch.long),
            labels=torch.tensor(row.labels, dtype=torch.long),
            image_masks=torch.tensor(row.flow, dtype=torch.long),
            modality_positions=pos,
            task=task,
            visuals=row.visuals,
            num_truncated=truncated,
            unpadded_len=n,
        )

    def _truncate_caption(self, ids: list[int], budget: int | None, task: str) -> tuple[list[int], int]:
        if budget is None or len(ids) <= budget:
            return ids, 0
        if budget < 0:
            self.stats["too_long"] += 1
            raise SampleError("too_long", f"{task}: no room for text")
        cut = len(ids) - budget
        self._note("truncated_text", f"{task}: caption of {len(ids)} tokens truncated to {budget}")
        return ids[:budget], cut

    # ---------------------------------------------------------------- generation rows
    def t2i(self, caption: Text | None, visual: VisualInfo | int | tuple[int, int], *, pad_to: PadTo = "default",
            max_text_len: int | None = None) -> SequenceSample:
        """Text-to-image row ``[bos] caption [boi] [img_pad x (n+1)] [eoi] [eos] [pad..]`` (no text labels).

        Slot = ``(len(caption) + 2, n + 1)``. An empty caption gives the CFG unconditional row.
        The caption budget is ``max_text_len`` or ``pad_to - (n+1) - 4``.
        """
        info = _as_visual(visual, generate=True)
        pad = self._pad_to(pad_to)
        budget = max_text_len if max_text_len is not None else (pad - info.block_len - 4 if pad else None)
        cap, cut = self._truncate_caption(self.ids(caption), budget, "t2i")
        row = _Row()
        row.text([self.sp.bos] + cap, False)
        row.block(info, self.sp.boi, self.sp.img_pad, self.sp.eoi, flow=True)
        row.text([self.sp.eos], False)
        return self._finish(row, "t2i", pad, cut)

    def t2i_cfg(self, captions: Sequence[Text], visual: VisualInfo | int | tuple[int, int], *,
                pad_to: PadTo = "default", max_text_len: int | None = None,
                guidance: bool = True) -> list[SequenceSample]:
        """Inference batch: conditional rows first, then one unconditional (empty caption) row each."""
        rows = [self.t2i(c, visual, pad_to=pad_to, max_text_len=max_text_len) for c in captions]
        if guidance:
            rows += [self.t2i(None, visual, pad_to=pad_to, max_text_len=max_text_len) for _ in captions]
        return rows

    def t2v(self, caption: Text | None, visual: VisualInfo, *, pad_to: PadTo = "default",
            max_text_len: int | None = None, task: str = "t2v") -> SequenceSample:
        """Text-to-video ``[bos] caption [bov] [vid_pad x (T*n+1)] [eov] [eos] [pad..]``."""
        info = _as_visual(visual, generate=True)
        pad = self._pad_to(pad_to)
        budget = max_text_len if max_text_len is not None else (pad - info.block_len - 4 if pad else None)
        cap, cut = self._truncate_caption(self.ids(caption), budget, task)
        row = _Row()
        row.text([self.sp.bos] + cap, False)
        row.block(info, self.sp.bov, self.sp.vid_pad, self.sp.eov, flow=True)
        row.text([self.sp.eos], False)
        return self._finish(row, task, pad, cut)

    def i2v(self, caption: Text | None, visual: VisualInfo, cond_frames: int = 1, *, pad_to: PadTo = "default",
            max_text_len: int | None = None) -> SequenceSample:
        """Image-to-video: the t2v layout; the first ``cond_frames`` latent frames are clean
        conditioning (no flow loss on their tokens, ``VisualInfo.cond_frames`` tells the trainer)."""
        info = replace(_as_visual(visual, generate=True), cond_frames=cond_frames)
        if cond_frames >= info.latent_frames:
            raise ValueError("i2v needs at least one generated latent frame")
        return self.t2v(caption, info, pad_to=pad_to, max_text_len=max_text_len, task="i2v")

    # ---------------------------------------------------------------- understanding rows
    def caption(self, caption: Text, visual: VisualInfo | int | tuple[int, int], *, pad_to: PadTo = "default",
                max_text_len: int | None = None) -> SequenceSample:
        """Stage-1 captioning ``[bos] [boi] [img_pad x (n+1)] [eoi] caption [eos] [pad..]``.

        Labels: bos, boi, eoi, caption, eos (training §6.3); slot = (2, n+1).
        """
        info = _as_visual(visual, generate=False)
        pad = self._pad_to(pad_to)
        budget = max_text_len if max_text_len is not None else (pad - info.block_len - 4 if pad else None)
        cap, cut = self._truncate_caption(self.ids(caption), budget, "caption")
        row = _Row()
        row.text([self.sp.bos], True)
        row.block(info, self.sp.boi, self.sp.img_pad, self.sp.eoi, flow=self.official_image_masks,
                  label_delims=True)
        row.text(cap + [self.sp.eos], True)
        return self._finish(row, "caption", pad, cut)

    def text(self, text: Text, *, pad_to: PadTo = "default") -> SequenceSample:
        """Plain text row ``[bos] text [eos] [pad..]``; labels on text and eos; no slot."""
        pad = self._pad_to(pad_to)
        ids, cut = self._truncate_caption(self.ids(text), pad - 2 if pad else None, "text")
        row = _Row()
        row.text([self.sp.bos], False)
        row.text(ids + [self.sp.eos], True)
        return self._finish(row, "text", pad, cut)

    def chat(
        self,
        turns: Sequence[tuple[str, Text]],
        visuals: Sequence[VisualInfo] = (),
        *,
        mode: Literal["tuning", "pre-training"] = "tuning",
        pad_to: PadTo = "default",
        add_generation_prompt: bool = False,
        system_prompt: bool = True,
        missing_image_tag: Literal["prepend", "drop", "error"] = "prepend",
    ) -> SequenceSample:
        """LLaVA-style understanding row (training §6.4), image or video, multi-turn.

        ``turns``: ``[(role, text or ids), ...]`` with role ``"human"``/``"user"`` or anything else
        (= assistant, as the reference). ``<image>`` (the ``img`` id) in a user turn is replaced by the
        block of the next item of ``visuals`` (a video item uses its video token count and
        ``<|video_pad|>`` placeholders between ``<|vision_start|>``/``<|vision_end|>``).
        Tuning: ``[bos] system role_user user [eos] role_assistant answer [eos] role_user ...``;
        pre-training: ``[bos] user answer [eos] ...`` with an image turn reduced to the bare block.
        Labels: answers + their ``<|im_end|>``. ``add_generation_prompt`` ends the row with the role
        header after a final user turn (inference prompt, no labels).
        """
        if mode not in ("tuning", "pre-training"):
            raise ValueError(f"unknown chat mode {mode!r}")
        pad = self._pad_to(pad_to)
        sp = self.sp
        users, answers = _pair_turns(turns, add_generation_prompt)
        uids = [self.ids(u) for u in users]
        aids = [self.ids(a) for a in answers]

        # image tags: every tag expands; tags must match the visual items
        n_tags = sum(u.count(sp.img) for u in uids)
        if n_tags > len(visuals):
            self.stats["image_tag_mismatch"] += 1
            raise SampleError("image_tag_mismatch", f"{n_tags} <image> tags but {len(visuals)} visual items")
        if n_tags < len(visuals):
            missing = len(visuals) - n_tags
            if missing_image_tag == "error" or (missing_image_tag == "prepend" and not uids):
                self.stats["image_tag_mismatch"] += 1
                raise SampleError("image_tag_mismatch", f"{n_tags} <image> tags but {len(visuals)} visual items")
            if missing_image_tag == "prepend":
                # LLaVA convention: the image goes first in the first user turn, then a newline
                nl = self.chat_ids.nl if self.chat_ids is not None else []
                uids[0] = [sp.img] * missing + nl + uids[0]
                n_tags = len(visuals)
            else:
                self._note("dropped_images", f"{missing} visual items without <image> tag dropped")
        tag_visuals = list(visuals[:n_tags])

        if mode == "pre-training":
            uids = [[sp.img] * u.count(sp.img) if sp.img in u else u for u in uids]

        if not uids:
            self.stats["bad_conversation"] += 1
            raise SampleError("bad_conversation", "no (user, assistant) pair")

        # per-turn limits (reference: 512 each) -- text only, image tags are kept
        truncated = 0
        if self.source_max_len is not None and any(len(u) > self.source_max_len for u in uids):
            truncated += sum(max(0, len(u) - self.source_max_len) for u in uids)
            uids = [_cut_keep(u, self.source_max_len, sp.img) for u in uids]
            self._note("truncated_text", f"chat: user turn cut to {self.source_max_len} tokens")
        if self.target_max_len is not None and any(len(a) > self.target_max_len - 1 for a in aids):
            # the answer keeps its <|im_end|> (reference cuts it; fixed)
            truncated += sum(max(0, len(a) - self.target_max_len + 1) for a in aids)
            aids = [a[: self.target_max_len - 1] for a in aids]
            self._note("truncated_text", f"chat: answer cut to {self.target_max_len} tokens incl. <|im_end|>")

        if mode == "tuning" and self.chat_ids is None:
            raise ValueError("tuning chat layout needs ChatIds (or a tokenizer)")

        # build per-pair (source, target) pieces; sources still contain img ids
        pieces: list[tuple[list[int], list[int] | None]] = []
        for k, u in enumerate(uids):
            if mode == "tuning":
                src: list[int] = []
                if k == 0 and system_prompt:
                    src += self.chat_ids.system_prompt[: self.system_prompt_max_len]
                src += self.chat_ids.role_user + u + [sp.eos] + self.chat_ids.role_assistant
            else:
                src = list(u)
            tgt = aids[k] + [sp.eos] if k < len(aids) else None
            pieces.append((src, tgt))

        def piece_len(src: list[int], tgt: list[int] | None, vis: list[VisualInfo]) -> int:
            nimg = src.count(sp.img)
            extra = sum(v.block_len + 1 for v in vis[:nimg])  # img id -> boi + block + eoi (+2 -1)
            return len(src) + extra + (len(tgt) if tgt else 0)

        # fit: drop trailing pairs, then cut the last answer (keeping its eos)
        if pad is not None:
            def total(pcs: list[tuple[list[int], list[int] | None]]) -> int:
                n, vi = 1, 0
                for s, t in pcs:
                    n += piece_len(s, t, tag_visuals[vi:])
                    vi += s.count(sp.img)
                return n

            while len(pieces) > 1 and total(pieces) > pad and not add_generation_prompt:
                s, t = pieces.pop()
                truncated += len(s) + (len(t) if t else 0)
                self._note("dropped_turns", "chat: trailing turn dropped to fit")
            over = total(pieces) - pad
            if over > 0:
                s, t = pieces[-1]
                if t is None or len(t) - 1 - over < 1:
                    self.stats["too_long"] += 1
                    raise SampleError("too_long", "chat prompt (with its visual blocks) does not fit")
                keep = len(t) - 1 - over
                pieces[-1] = (s, t[:keep] + [sp.eos])
                truncated += over
                self._note("truncated_text", f"chat: last answer cut by {over} tokens")

        row = _Row()
        row.text([sp.bos], False)
        vi = 0
        for s, t in pieces:
            start = 0
            for j, tok in enumerate(s):
                if tok == sp.img:
                    row.text(s[start:j], False)
                    v = replace(tag_visuals[vi], generate=False)
                    vi += 1
                    placeholder = sp.vid_pad if v.kind == "video" else sp.img_pad
                    row.block(v, sp.boi, placeholder, sp.eoi, flow=self.official_image_masks)
                    start = j + 1
            row.text(s[start:], False)
            if t is not None:
                row.text(t, True)
        task = "mmu_vid" if any(v.kind == "video" for v in row.visuals) else "mmu"
        return self._finish(row, task, pad, truncated)

    def mmu_prompt(
        self,
        question: Text,
        visual: VisualInfo | int | tuple[int, int] | None,
        *,
        layout: Literal["train", "official_demo"] = "official_demo",
        off_by_one_block: bool | None = None,
        system_prompt: bool = True,
    ) -> SequenceSample:
        """Understanding inference prompt (inference §2.2), unpadded, ending with the assistant header.

        ``layout="train"``: the training chat template (``<image>\\n`` + question, ``<|im_end|>`` after
        the user turn), block on the time slot. ``layout="official_demo"``: the demo's
        ``[bos] system role_user [boi] [img_pad x (n+1)] [eoi] question role_assistant`` (no newline, no
        ``<|im_end|>``) and the demo's block shifted one position right (starts after the time slot,
        covers ``<|vision_end|>``). ``off_by_one_block`` overrides the block choice independently.
        """
        sp = self.sp
        info = _as_visual(visual, generate=False) if visual is not None else None
        if layout == "train":
            if info is None:
                user = self.ids(question)
            elif isinstance(question, str):
                user = self.ids("<image>\n" + question) if self.tokenizer is not None else None
                if user is None:
                    raise ValueError("string input needs a tokenizer")
            else:
                user = [sp.img] + (self.chat_ids.nl if self.chat_ids else []) + self.ids(question)
            s = self.chat(
                [("human", user)], [info] if info is not None else [], mode="tuning", pad_to=None,
                add_generation_prompt=True, system_prompt=system_prompt,
            )
            shift = bool(off_by_one_block)
        elif layout == "official_demo":
            if self.chat_ids is None:
                raise ValueError("official_demo layout needs ChatIds (or a tokenizer)")
            row = _Row()
            row.text([sp.bos] + (self.chat_ids.system_prompt if system_prompt else []) + self.chat_ids.role_user, False)
            if info is not None:
                placeholder = sp.vid_pad if info.kind == "video" else sp.img_pad
                row.block(info, sp.boi, placeholder, sp.eoi, flow=False)
            row.text(self.ids(question) + self.chat_ids.role_assistant, False)
            task = "mmu_vid" if info is not None and info.kind == "video" else "mmu"
            s = self._finish(row, task, None)
            shift = True if off_by_one_block is None else bool(off_by_one_block)
        else:
            raise ValueError(f"unknown layout {layout!r}")
        if shift and s.modality_positions.shape[0]:
            s.modality_positions[:, 0] += 1  # reproduces the demo's block (after the time slot)
        return s

    # ---------------------------------------------------------------- interleaved
    def interleaved(
        self,
        captions: Sequence[Text],
        visuals: Sequence[VisualInfo],
        *,
        flag: Text | None = "Mixed-modality generation (VIST).",
        pad_to: PadTo = "default",
        max_caption_len: int | None = None,
        label_visual_placeholders: bool = True,
    ) -> SequenceSample:
        """VIST story ``[bos] flag cap_1 block_1 ... cap_k block_k [eos] [pad..]`` (text before its image).

        Labels = ids everywhere (delimiters, every placeholder, captions, final eos) except the flag
        (-100) and pads (training §6.5). ``label_visual_placeholders=False`` (quirk 19 fix) sets the
        placeholders and ``<|vision_end|>`` to -100, keeping ``<|vision_start|>`` supervised.
        All items are generation items (the trainer chooses a clean context prefix).
        """
        if len(captions) != len(visuals) or not visuals:
            self.stats["bad_story"] += 1
            raise SampleError("bad_story", f"{len(captions)} captions for {len(visuals)} images")
        pad = self._pad_to(pad_to)
        sp = self.sp
        flag_ids = self.ids(flag) if flag else []
        infos = [_as_visual(v, generate=True) for v in visuals]
        budget = max_caption_len
        if budget is None and pad is not None:
            budget = vist_max_text_len(pad, len(flag_ids), max(v.block_len for v in infos), len(infos))
        row = _Row()
        row.text([sp.bos], True)
        row.text(flag_ids, False)
        cut = 0
        for cap, info in zip(captions, infos):
            ids, c = self._truncate_caption(self.ids(cap), budget, "interleaved")
            cut += c
            row.text(ids, True)
            row.block(info, sp.boi, sp.img_pad, sp.eoi, flow=True, label_delims=True,
                      label_pads=label_visual_placeholders)
            if not label_visual_placeholders:
                row.labels[-1] = IGNORE_INDEX  # <|vision_end|>
        row.text([sp.eos], True)
        return self._finish(row, "interleaved", pad, cut)


def _as_visual(v: VisualInfo | int | tuple[int, int], generate: bool) -> VisualInfo:
    if isinstance(v, VisualInfo):
        return v if v.generate == generate else replace(v, generate=generate)
    return VisualInfo.image(v, generate=generate)


def _pair_turns(turns: Sequence[tuple[str, Text]], open_last: bool) -> tuple[list[Text], list[Text]]:
    """(user, assistant) pairs as the reference zips them; a trailing user turn is kept only for
    a generation prompt. Roles: ``human``/``user`` = user, anything else = assistant."""
    users: list[Text] = []
    answers: list[Text] = []
    for role, text in turns:
        if role in ("human", "user"):
            users.append(text)
        else:
            answers.append(text)
    n = min(len(users), len(answers))
    if open_last and len(users) == n + 1:
        return users[: n + 1], answers[:n]
    return users[:n], answers[:n]


def _cut_keep(ids: list[int], limit: int, keep_id: int) -> list[int]:
    """Right-truncate to ``limit`` but never lose a ``keep_id`` (image tag) token."""
    if len(ids) <= limit:
        return ids
    excess = len(ids) - limit
    out: list[int] = []
    for t in reversed(ids):  # drop text from the right, keep every tag
        if excess > 0 and t != keep_id:
            excess -= 1
            continue
        out.append(t)
    return out[::-1]


# --------------------------------------------------------------------------------------------
# batching
# --------------------------------------------------------------------------------------------

def collate(samples: Sequence[SequenceSample], pad_id: int, *, pad_to: int | None = None,
            max_slots: int | None = None) -> dict[str, Any]:
    """Stack rows into a batch dict.

    Keys: ``input_ids, labels, image_masks`` (B, L) (right padded with ``pad_id`` / -100 / 0 to the
    longest row or ``pad_to``), ``modality_positions`` (B, M, 2) with missing slots ``(0, 0)``
    (M = ``max_slots`` or the largest row count), ``num_slots`` (B,), ``task``, ``data_type``,
    ``visuals`` (list of per-row ``VisualInfo`` lists). Visual item of slot (i, j) is ``i*M + j``.
    """
    if not samples:
        raise ValueError("empty batch")
    length = max(len(s) for s in samples)
    if pad_to is not None:
        if pad_to < length:
            raise ValueError(f"row of length {length} exceeds pad_to={pad_to}")
        length = pad_to
    m = max(s.modality_positions.shape[0] for s in samples)
    if max_slots is not None:
        if max_slots < m:
            raise ValueError(f"a row has {m} visual slots > max_slots={max_slots}")
        m = max_slots
    b = len(samples)
    input_ids = torch.full((b, length), pad_id, dtype=torch.long)
    labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)
    image_masks = torch.zeros((b, length), dtype=torch.long)
    positions = torch.zeros((b, m, 2), dtype=torch.long)
    for i, s in enumerate(samples):
        n = len(s)
        input_ids[i, :n] = s.input_ids
        labels[i, :n] = s.labels
        image_masks[i, :n] = s.image_masks
        k = s.modality_positions.shape[0]
        if k:
            positions[i, :k] = s.modality_positions
    return {
        "input_ids": input_ids,
        "labels": labels,
        "image_masks": image_masks,
        "modality_positions": positions,
        "num_slots": torch.tensor([s.modality_positions.shape[0] for s in samples], dtype=torch.long),
        "task": [s.task for s in samples],
        "data_type": [s.data_type for s in samples],
        "visuals": [list(s.visuals) for s in samples],
    }
