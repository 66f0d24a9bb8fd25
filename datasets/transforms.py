"""Image preprocessing (training §3) and bad-sample accounting (training §5, fixed).

Preprocessing:

* ``load_image``: PIL decode with the reference mode rules -- ``RGB`` as is, ``RGBA`` alpha dropped
  (no compositing, quirk 14), palette / ``transparency`` images via RGBA then alpha dropped, ``L``
  replicated to 3 channels; any other mode (CMYK, LA, I;16, ...) is rejected in ``strict`` mode (the
  image-text dataset) or converted with PIL (understanding data, which the reference also converts).
  Minimum / maximum size is checked from the header before decoding.
* ``resize_center_crop`` (generation, VIST): shorter side -> ``res`` (bicubic, antialiased), centre crop.
* ``resize_and_pad`` (understanding): fit inside ``res`` x ``res`` keeping aspect, paste centred on black.
* ``to_tensor``: uint8 HWC -> float CHW in [-1, 1] (mean = std = 0.5).

Bad samples: loaders raise ``SampleError(reason)`` (or any exception), ``fetch_robust`` re-draws
iteratively (next index, wrap-around; never recursion), ``BadSampleCounter`` counts per reason, logs
the first occurrences and raises ``TooManyBadSamples`` naming the file when the bad fraction exceeds
``max_bad_fraction``. The reasons skipped while producing a sample travel with it (``item["bad"]``) so
that counts from DataLoader worker processes reach the trainer through the batch.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from datasets.sequence import SampleError

logger = logging.getLogger(__name__)

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail, not decode half grey

DEFAULT_MAX_PIXELS = 64_000_000  # reject before decoding; PIL's own bomb guard is ~179 MP


class TooManyBadSamples(RuntimeError):
    """More than the allowed fraction of samples of a file are bad."""


# --------------------------------------------------------------------------------------------
# bad-sample accounting
# --------------------------------------------------------------------------------------------

def reason_of(err: BaseException) -> str:
    """Short reason key for an exception raised while loading a sample."""
    if isinstance(err, SampleError):
        return err.reason
    reason = getattr(err, "reason", None)  # e.g. utils.media.MediaError
    if isinstance(reason, str) and reason:
        return reason
    if isinstance(err, FileNotFoundError):
        return "missing_file"
    if isinstance(err, UnidentifiedImageError | Image.DecompressionBombError):
        return "decode_error"
    if isinstance(err, OSError | SyntaxError):  # PIL raises these for truncated / corrupt data
        return "decode_error"
    if isinstance(err, KeyError):
        return "missing_key"
    return type(err).__name__


class BadSampleCounter:
    """Per-reason counts of skipped samples plus the number of good ones.

    ``counts`` (Counter reason -> n), ``good``, ``as_dict()`` for logging. ``check(source)`` raises
    ``TooManyBadSamples`` once at least ``min_seen`` samples were seen and the bad fraction is above
    ``max_bad_fraction``.
    """

    def __init__(self, max_bad_fraction: float = 0.5, min_seen: int = 20, log_first: int = 20) -> None:
        self.counts: Counter[str] = Counter()
        self.good = 0
        self.max_bad_fraction = max_bad_fraction
        self.min_seen = min_seen
        self.log_first = log_first
        self._logged = 0

    @property
    def bad(self) -> int:
        return sum(self.counts.values())

    @property
    def seen(self) -> int:
        return self.bad + self.good

    def record(self, reason: str, where: str = "", err: BaseException | None = None) -> None:
        self.counts[reason] += 1
        if self._logged < self.log_first:
            self._logged += 1
            logger.warning("skipping bad sample %s: %s%s", where, reason, f" ({err})" if err else "")

    def ok(self) -> None:
        self.good += 1

    def update(self, counts: dict[str, int]) -> None:
        """Merge counts (e.g. ``batch["bad_samples"]`` from worker processes)."""
        for k, v in counts.items():
            self.counts[k] += int(v)

    def fraction(self) -> float:
        return self.bad / max(1, self.seen)

    def check(self, source: str) -> None:
        if self.seen >= self.min_seen and self.fraction() > self.max_bad_fraction:
            raise TooManyBadSamples(
                f"{source}: {self.bad} of {self.seen} samples are bad (> {self.max_bad_fraction:.0%}); "
                f"reasons {dict(self.counts)}")

    def as_dict(self, prefix: str = "data/bad_") -> dict[str, float]:
        out: dict[str, float] = {f"{prefix}{k}": float(v) for k, v in sorted(self.counts.items())}
        out[f"{prefix}total"] = float(self.bad)
        out[f"{prefix}fraction"] = self.fraction()
        return out


def fetch_robust(
    n: int,
    idx: int,
    load: Callable[[int], dict[str, Any]],
    counter: BadSampleCounter,
    source: str,
    validate: Callable[[dict[str, Any]], None] | None = None,
    max_tries: int | None = None,
) -> dict[str, Any]:
    """Load sample ``idx``; on failure try ``idx+1, idx+2, ...`` (wrap-around), counting each reason.

    Iterative, so long runs of bad samples cannot overflow the stack. Raises ``TooManyBadSamples``
    when the counter's fraction is exceeded or every index tried failed.
    """
    if n <= 0:
        raise TooManyBadSamples(f"{source}: no usable samples")
    tries = n if max_tries is None else min(n, max_tries)
    skipped: Counter[str] = Counter()
    for k in range(tries):
        j = (idx + k) % n
        try:
            item = load(j)
            if validate is not None:
                validate(item)
        except TooManyBadSamples:
            raise
        except Exception as err:  # noqa: BLE001 - any failure of one sample is a bad sample
            r = reason_of(err)
            skipped[r] += 1
            counter.record(r, f"{source}[{j}]", err)
            counter.check(source)
            continue
        counter.ok()
        item["bad"] = dict(skipped)
        item["index"] = j
        return item
    raise TooManyBadSamples(f"{source}: {tries} consecutive samples starting at {idx} are bad; "
                            f"reasons {dict(skipped)}")


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------

def load_image(
    path: str | Path,
    *,
    strict: bool = True,
    min_size: tuple[int, int] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Open and decode an image as RGB with the reference mode rules.

    ``min_size`` = (min_height, min_width), checked from the header before decoding (reason
    ``too_small``); images above ``max_pixels`` are rejected before decoding (``too_large``).
    ``strict`` rejects modes other than RGB/RGBA/P/L (``unsupported_mode``), as the image-text
    dataset does; otherwise PIL converts them. ``draft_size`` (opt-in speed-up, not bit-exact with the
    reference): JPEGs are DCT-downscaled while decoding, keeping the shorter side >= ``draft_size``.
    """
    with Image.open(path) as img:
        w, h = img.size
        if min_size is not None and (h < min_size[0] or w < min_size[1]):
            raise SampleError("too_small", f"{w}x{h} below {min_size[1]}x{min_size[0]}")
        if max_pixels is not None and w * h > max_pixels:
            raise SampleError("too_large", f"{w}x{h} above {max_pixels} pixels")
        if draft_size is not None and img.format == "JPEG" and img.mode in ("RGB", "L"):
            s = draft_size / min(w, h)
            img.draft(img.mode, (max(1, math.ceil(w * s)), max(1, math.ceil(h * s))))
        img.load()  # truncated / corrupt data fails here
        return to_rgb(img, strict=strict)


def to_rgb(img: Image.Image, strict: bool = True) -> Image.Image:
    """Reference RGB conversion (alpha dropped, never composited)."""
    if img.mode == "P" or "transparency" in img.info:
        return img.convert("RGBA").convert("RGB")
    if img.mode == "RGB":
        return img  # already decoded by load(); closing the file afterwards keeps the pixel data
    if img.mode in ("RGBA", "L"):
        return img.convert("RGB")
    if strict:
        raise SampleError("unsupported_mode", f"PIL mode {img.mode}")
    return img.convert("RGB")


def resize_center_crop(img: Image.Image, res: int) -> Image.Image:
    """Shorter side to ``res`` (bicubic, antialiased; long side truncated as torchvision), centre crop."""
    w, h = img.size
    if w <= h:
        nw, nh = res, int(res * h / w)
    else:
        nw, nh = int(res * w / h), res
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    left = int(round((nw - res) / 2.0))
    top = int(round((nh - res) / 2.0))
    return img.crop((left, top, left + res, top + res))


def resize_and_pad(img: Image.Image, res: int) -> Image.Image:
    """Fit inside ``res`` x ``res`` keeping aspect (constrained side exactly ``res``, the other
    ``min(ceil(side*scale), res)``), paste centred (floored offsets) on a black canvas."""
    w, h = img.size
    scale = min(res / w, res / h)
    if w * scale >= h * scale:
        nw, nh = res, min(math.ceil(h * scale), res)
    else:
        nw, nh = min(math.ceil(w * scale), res), res
    nw, nh = max(nw, 1), max(nh, 1)
    img = img.resize((nw, nh), Image.BICUBIC)
    canvas = Image.new("RGB", (res, res), (0, 0, 0))
    canvas.paste(img, ((res - nw) // 2, (res - nh) // 2))
    return canvas


def _normalize(arr: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [-1, 1] with torchvision's op order (ToTensor ``/255`` then Normalize
    ``(x - 0.5) / 0.5``) so values are bit-identical to the reference. numpy, not torch: cheap
    elementwise ops and no intra-op thread contention in the main process."""
    out = arr.astype(np.float32)
    out /= np.float32(255.0)
    out -= np.float32(0.5)
    out /= np.float32(0.5)
    return out


def to_tensor(img: Image.Image | np.ndarray) -> torch.Tensor:
    """uint8 image (PIL or HWC array) -> float (3, H, W) in [-1, 1]."""
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(_normalize(arr).transpose(2, 0, 1)))


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (3, T, H, W) in [-1, 1]."""
    arr = np.asarray(frames, dtype=np.uint8)
    return torch.from_numpy(np.ascontiguousarray(_normalize(arr).transpose(3, 0, 1, 2)))


def preprocess_image(img: Image.Image, res: int, mode: str = "crop") -> torch.Tensor:
    """``mode="crop"`` (generation / VIST) or ``"pad"`` (understanding training) -> [-1, 1] tensor."""
    if mode == "crop":
        return to_tensor(resize_center_crop(img, res))
    if mode == "pad":
        return to_tensor(resize_and_pad(img, res))
    raise ValueError(f"unknown preprocessing mode {mode!r}")


def blank_image(res: int) -> torch.Tensor:
    """Black image in [-1, 1] (the reference fabricates one for text-only LLaVA samples)."""
    return torch.full((3, res, res), -1.0)
