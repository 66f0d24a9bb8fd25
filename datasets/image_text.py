"""Image-text pairs (jsonl ``{"path", "prompt"}``) for text-to-image and stage-1 captioning.

Spec: training §2.1, §3 (mode rules, shorter-side resize + centre crop, min resolution), §4.1
(caption cleaning, CFG dropout for t2i only), §6.2 / §6.3 (layouts, via ``datasets.sequence``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from datasets.base import (
    RobustDataset,
    attach_latents,
    open_latent_cache,
    read_jsonl,
    read_latent,
    resolve_path,
    seeded_rng,
)
from datasets.sequence import SampleError, SequenceBuilder
from datasets.transforms import DEFAULT_MAX_PIXELS, BadSampleCounter, load_image, preprocess_image

# Removed (global replace, in this order) from t2i captions only; "This is " appears twice as in
# the reference list.
BOILERPLATE: tuple[str, ...] = (
    "The image features ", "The image presents ", "The image you've sent is, ", "In the center of the image, ",
    "The image showcases ", "The image is ", "The image captures ", "In the given image ", "The image portrays ",
    "In the image, ", "In this image, we see ", "The image depicts ", "This is ", "In this image, ",
    "This image captures ", "This image showcases ", "This suggests ", "In the photo, we see ", "This is ",
    "This image is ", "In the photo, we have ", "The photo features ", "The photo depicts ",
    "The photo appears to be ",
)


def clean_caption(text: str, remove_boilerplate: bool, newline: str = "") -> str:
    """Delete newlines (no space inserted by default, quirk 12; ``newline=" "`` is the fix) and, for
    t2i, the boilerplate phrases anywhere in the caption (quirk 13). Nothing is re-capitalised."""
    text = text.replace("\n", newline)
    if remove_boilerplate:
        for phrase in BOILERPLATE:
            text = text.replace(phrase, "")
    return text


class ImageTextDataset(RobustDataset):
    """Map-style image-text dataset yielding loader items (see ``datasets.base``).

    ``task="t2i"``: cleaned caption, CFG dropout ``cond_dropout_prob`` (seeded by seed, index, epoch),
    generation layout, pixels centre-cropped. ``task="caption"``: raw caption (newlines removed),
    captioning layout. ``latent_cache`` (dir or ``LatentCache``) replaces pixels by cached latents
    keyed by the ``path`` field. ``min_size`` = (min_h, min_w): stage 1 (256, 256), stage 2 (512, 512).
    """

    def __init__(
        self,
        jsonl: str | Path,
        builder: SequenceBuilder,
        *,
        task: Literal["t2i", "caption"] = "t2i",
        resolution: int = 432,
        min_size: tuple[int, int] | None = None,
        cond_dropout_prob: float = 0.1,
        seed: int = 0,
        root: str | Path | None = None,
        latent_cache: Any = None,
        strict_modes: bool = True,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        caption_newline: str = "",
        fast_jpeg_decode: bool = False,
        counter: BadSampleCounter | None = None,
    ) -> None:
        super().__init__(counter)
        if task not in ("t2i", "caption"):
            raise ValueError(f"unknown task {task!r}")
        self.source = str(jsonl)
        self.rows = read_jsonl(jsonl, ("path", "prompt"), self.counter)
        self.builder = builder
        self.task = task
        self.resolution = resolution
        self.min_size = min_size
        self.cond_dropout_prob = cond_dropout_prob if task == "t2i" else 0.0
        self.seed = seed
        self.root = root
        self.latent_cache = open_latent_cache(latent_cache)
        self.strict_modes = strict_modes
        self.max_pixels = max_pixels
        self.caption_newline = caption_newline  # "" = reference (quirk 12); " " keeps words apart
        self.fast_jpeg_decode = fast_jpeg_decode  # DCT-scaled JPEG decode (faster, not bit-exact)

    def __len__(self) -> int:
        return len(self.rows)

    def caption_for(self, idx: int) -> str:
        rec = self.rows[idx]
        cap = rec["prompt"]
        if not isinstance(cap, str):
            raise SampleError("bad_caption", f"prompt is {type(cap).__name__}")
        cap = clean_caption(cap, remove_boilerplate=self.task == "t2i", newline=self.caption_newline)
        if not cap.strip():
            raise SampleError("empty_caption")
        if self.cond_dropout_prob > 0 and seeded_rng(self.seed, idx, self.epoch).random() < self.cond_dropout_prob:
            cap = ""  # CFG dropout: identical to the unconditional prompt used at sampling
        return cap

    def load(self, idx: int) -> dict[str, Any]:
        rec = self.rows[idx]
        caption = self.caption_for(idx)
        item: dict[str, Any] = {"pixels": None, "latents": None, "text": caption}
        if self.latent_cache is not None:
            lat, logvar = read_latent(self.latent_cache, rec["path"], os.path.abspath(resolve_path(self.root, rec["path"])))
            visual = self.builder.visual_for_latents(lat)
            attach_latents(item, [(lat, logvar)])
        else:
            path = resolve_path(self.root, rec["path"])
            img = load_image(path, strict=self.strict_modes, min_size=self.min_size, max_pixels=self.max_pixels,
                             draft_size=self.resolution if self.fast_jpeg_decode else None)
            item["pixels"] = [preprocess_image(img, self.resolution, "crop")]
            visual = self.builder.visual_for_pixels(self.resolution)
        if self.task == "t2i":
            seq = self.builder.t2i(caption, visual)
        else:
            seq = self.builder.caption(caption, visual)
        item.update(sequence=seq, data_type=seq.data_type)
        return item
