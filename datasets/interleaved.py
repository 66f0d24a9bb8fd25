"""VIST-format interleaved stories (``[{"images": [...], "captions": [...]}]``) for mixed-modality
training. Spec: training §2.3, §3 (shorter side + centre crop), §4.3 (window, flag), §6.5 (layout).

Any number of images is supported by the layout; ``max_images`` (4 in the reference) bounds a story,
longer stories keep a window whose start is drawn (seeded by seed, index, epoch) uniformly from
``[0, len - max_images]`` (``official_window=True`` reproduces the reference's off-by-one
``[0, len - max_images - 1]``). Each image path is joined to ``root`` and ``.jpg`` is appended unless
the path already ends with it (reference rule).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets.base import (
    RobustDataset,
    attach_latents,
    open_latent_cache,
    read_json_list,
    read_latent,
    resolve_path,
    seeded_rng,
)
from datasets.sequence import SampleError, SequenceBuilder
from datasets.transforms import BadSampleCounter, load_image, preprocess_image

VIST_FLAG = "Mixed-modality generation (VIST)."


class InterleavedDataset(RobustDataset):
    """Interleaved (text before its image) generation rows, data_type ``interleaved_data``."""

    def __init__(
        self,
        annotation: str | Path,
        root: str | Path | None,
        builder: SequenceBuilder,
        *,
        resolution: int = 432,
        max_images: int = 4,
        flag: str | None = VIST_FLAG,
        official_window: bool = False,
        label_visual_placeholders: bool = True,
        seed: int = 0,
        image_suffix: str | None = ".jpg",
        latent_cache: Any = None,
        counter: BadSampleCounter | None = None,
    ) -> None:
        super().__init__(counter)
        self.source = str(annotation)
        self.rows = read_json_list(annotation, ("images", "captions"), self.counter)
        self.root, self.builder, self.resolution = root, builder, resolution
        self.max_images, self.flag, self.official_window = max_images, flag, official_window
        self.label_visual_placeholders, self.seed, self.image_suffix = label_visual_placeholders, seed, image_suffix
        self.latent_cache = open_latent_cache(latent_cache)

    def __len__(self) -> int:
        return len(self.rows)

    def window(self, idx: int, n: int) -> tuple[int, int]:
        """(start, stop) of the kept images."""
        if n <= self.max_images:
            return 0, n
        hi = n - self.max_images - (1 if self.official_window else 0)
        start = seeded_rng(self.seed, idx, self.epoch).randint(0, max(0, hi))
        return start, start + self.max_images

    def load(self, idx: int) -> dict[str, Any]:
        rec = self.rows[idx]
        images, captions = rec["images"], rec["captions"]
        if not isinstance(images, list) or not isinstance(captions, list) or not images:
            raise SampleError("empty_story")
        if len(images) != len(captions):
            raise SampleError("bad_story", f"{len(images)} images, {len(captions)} captions")
        if not all(isinstance(c, str) for c in captions):
            raise SampleError("bad_caption")
        a, b = self.window(idx, len(images))
        infos, tensors = [], []
        for k, rel in enumerate(images[a:b]):
            if self.latent_cache is not None:
                lat = read_latent(self.latent_cache, rel)
                infos.append(self.builder.visual_for_latents(lat[0], source_index=k))
                tensors.append(lat)
            else:
                img = load_image(resolve_path(self.root, rel, self.image_suffix), strict=False)
                tensors.append(preprocess_image(img, self.resolution, "crop"))
                infos.append(self.builder.visual_for_pixels(self.resolution, source_index=k))
        caps = [c.replace("\n", "") for c in captions[a:b]]
        seq = self.builder.interleaved(caps, infos, flag=self.flag,
                                       label_visual_placeholders=self.label_visual_placeholders)
        item: dict[str, Any] = {"sequence": seq, "pixels": None, "latents": None, "data_type": seq.data_type,
                                "text": " ".join(caps)}
        if self.latent_cache is not None:
            attach_latents(item, tensors)
        else:
            item["pixels"] = tensors
        return item
