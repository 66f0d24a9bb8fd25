"""LLaVA / LLaVA-OneVision style instruction data (one JSON list of samples) for understanding.

Spec: training §2.2, §3 (resize-and-pad to the resolution), §4.2 (turn rewriting, modes), §6.4.
A sample has ``conversations`` (``[{"from", "value"}]``; ``human`` = user, anything else =
assistant) and optionally ``image`` (a path or a list of paths, relative to ``root``) or ``video``.
``<video>`` tags are treated as ``<image>`` tags (the shapes world and some LLaVA-Video files use
them). Text-only samples are allowed (no visual item; the reference fabricates a black image that is
never attended -- not reproduced). Video samples: ``num_frames`` (1 + 4k) frames, resize-and-pad per
frame, one video block with ``T*n + 1`` positions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from datasets.base import (
    RobustDataset,
    attach_latents,
    open_latent_cache,
    read_json_list,
    read_latent,
    resolve_path,
)
from datasets.sequence import SampleError, SequenceBuilder, VisualInfo
from datasets.transforms import BadSampleCounter, load_image, preprocess_image
from datasets.video_text import ShortClip, preprocess_frames, read_frames

IMAGE_TAG = "<image>"


def normalize_turns(conversations: Any) -> list[tuple[str, str]]:
    """Validate and rewrite turns: ``<video>`` -> ``<image>``; a human turn ending in ``\\n<image>``
    becomes ``<image>\\n`` + the rest (image always before the question)."""
    if not isinstance(conversations, list) or not conversations:
        raise SampleError("bad_conversation", "conversations missing or empty")
    turns: list[tuple[str, str]] = []
    for c in conversations:
        if not isinstance(c, dict) or not isinstance(c.get("value"), str) or "from" not in c:
            raise SampleError("bad_conversation", "turn without from/value")
        role, text = str(c["from"]), c["value"].replace("<video>", IMAGE_TAG)
        if role == "human" and text.endswith("\n" + IMAGE_TAG):
            text = IMAGE_TAG + "\n" + text[: -len("\n" + IMAGE_TAG)]
        turns.append((role, text))
    if not any(r == "human" for r, _ in turns) or all(r == "human" for r, _ in turns):
        raise SampleError("bad_conversation", "needs a user and an assistant turn")
    return turns


class InstructDataset(RobustDataset):
    """Understanding rows (``mmu`` / ``mmu_vid``) from a LLaVA-format annotation file.

    ``mode``: ``"tuning"`` (chat template + system prompt, stage 2c) or ``"pre-training"`` (bare
    ``<image>`` + caption, stages 2a/2b). More ``<image>`` tags than images is a counted bad sample
    (``image_tag_mismatch``).
    """

    def __init__(
        self,
        annotation: str | Path,
        root: str | Path | None,
        builder: SequenceBuilder,
        *,
        mode: Literal["tuning", "pre-training"] = "tuning",
        resolution: int = 432,
        num_frames: int = 5,
        short_clip: ShortClip = "skip",
        latent_cache: Any = None,
        seed: int = 0,
        counter: BadSampleCounter | None = None,
    ) -> None:
        super().__init__(counter)
        self.source = str(annotation)
        self.seed = seed
        self.rows = read_json_list(annotation, ("conversations",), self.counter)
        self.root, self.builder, self.mode = root, builder, mode
        self.resolution, self.num_frames, self.short_clip = resolution, num_frames, short_clip
        self.latent_cache = open_latent_cache(latent_cache)

    def __len__(self) -> int:
        return len(self.rows)

    def _media(self, idx: int, rec: dict[str, Any]) -> tuple[list[VisualInfo], list, str]:
        """(visual infos, tensors, 'pixels'|'latents') for the sample's images or video."""
        infos: list[VisualInfo] = []
        tensors: list = []
        if "video" in rec and rec["video"]:
            paths, kind = [rec["video"]] if isinstance(rec["video"], str) else list(rec["video"]), "video"
        elif "image" in rec and rec["image"]:
            paths, kind = [rec["image"]] if isinstance(rec["image"], str) else list(rec["image"]), "image"
        else:
            return [], [], "pixels"
        for k, rel in enumerate(paths):
            if self.latent_cache is not None:
                lat, logvar = read_latent(self.latent_cache, rel, os.path.abspath(resolve_path(self.root, rel)))
                infos.append(self.builder.visual_for_latents(lat, generate=False, source_index=k))
                tensors.append((lat, logvar))
                continue
            path = resolve_path(self.root, rel)
            if kind == "video":
                px = preprocess_frames(read_frames(path, self.num_frames, self.short_clip), self.resolution, "pad")
                info = self.builder.visual_for_pixels(self.resolution, frames=px.shape[1], generate=False, source_index=k)
            else:
                px = preprocess_image(load_image(path, strict=False), self.resolution, "pad")
                info = self.builder.visual_for_pixels(self.resolution, generate=False, source_index=k)
            infos.append(info)
            tensors.append(px)
        return infos, tensors, "latents" if self.latent_cache is not None else "pixels"

    def load(self, idx: int) -> dict[str, Any]:
        rec = self.rows[idx]
        turns = normalize_turns(rec["conversations"])
        n_tags = sum(t.count(IMAGE_TAG) for r, t in turns if r == "human")
        has_media = bool(rec.get("image") or rec.get("video"))
        if n_tags and not has_media:
            raise SampleError("image_tag_mismatch", f"{n_tags} <image> tags but no image")
        infos, tensors, key = self._media(idx, rec)
        seq = self.builder.chat(turns, infos, mode=self.mode)
        used = [tensors[v.source_index] for v in seq.visuals]  # items whose turn survived truncation
        item: dict[str, Any] = {"sequence": seq, "pixels": None, "latents": None, "data_type": seq.data_type,
                                "text": turns[0][1]}
        if used and key == "latents":
            attach_latents(item, used)
        elif used:
            item["pixels"] = used
        return item
