"""Video-text pairs (jsonl ``{"path", "prompt"}``) for text-to-video / image-to-video, and the frame
reader shared with the instruction loader.

``path`` is a video file (decoded with decord) or a folder of frame images (sorted by name; the
shapes world writes both). Frames are sampled uniformly over the whole clip
(``linspace(0, total-1, F)`` truncated, as the reference video loader), F = 1 + 4k so the causal VAE
gives ``1 + (F-1)/4`` latent frames. Clips with fewer than F frames: ``short_clip="skip"`` (counted
``too_few_frames``), ``"repeat"`` (duplicate indices, as the reference) or ``"shrink"`` (largest
1 + 4k <= total).

Video decoding uses ``utils.media.read_video_frames`` / ``video_info`` (shared video I/O, decord with a
PyAV fallback); a private decord path (``_read_frames_private``) is kept for environments without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from datasets.base import (
    RobustDataset,
    attach_latents,
    open_latent_cache,
    read_jsonl,
    read_latent,
    resolve_path,
    seeded_rng,
)
from datasets.sequence import SampleError, SequenceBuilder, latent_frames
from datasets.transforms import BadSampleCounter, frames_to_tensor, resize_and_pad, resize_center_crop

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
ShortClip = Literal["skip", "repeat", "shrink"]


def sample_frame_indices(total: int, num_frames: int, short_clip: ShortClip = "skip",
                         temporal_stride: int = 4) -> list[int]:
    """Uniform indices over ``[0, total)``; short clips handled per ``short_clip``."""
    if total <= 0:
        raise SampleError("too_few_frames", "video has no frames")
    n = num_frames
    if total < num_frames:
        if short_clip == "skip":
            raise SampleError("too_few_frames", f"{total} < {num_frames}")
        if short_clip == "shrink":
            n = 1 + (total - 1) // temporal_stride * temporal_stride
        elif short_clip != "repeat":
            raise ValueError(f"unknown short_clip policy {short_clip!r}")
    return np.linspace(0, total - 1, n).astype(int).tolist()


def _decord_frames(path: str, indices_fn: Any) -> np.ndarray:
    import decord

    try:
        vr = decord.VideoReader(path, num_threads=1)
    except Exception as err:  # decord raises its own DECORDError for unreadable files
        if not Path(path).exists():
            raise FileNotFoundError(path) from err
        raise SampleError("video_decode_error", str(err)[:200]) from err
    idx = indices_fn(len(vr))
    try:
        return vr.get_batch(idx).asnumpy()
    except Exception as err:  # noqa: BLE001
        raise SampleError("video_decode_error", str(err)[:200]) from err


def read_frames(path: str | Path, num_frames: int, short_clip: ShortClip = "skip",
                temporal_stride: int = 4) -> np.ndarray:
    """uint8 (F, H, W, 3) frames sampled uniformly from a video file or a frame folder."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(str(p))
    media = _media_module()
    if media is not None:
        n = num_frames
        if short_clip == "shrink":
            total = media.video_info(p).num_frames
            n = len(sample_frame_indices(total, num_frames, "shrink", temporal_stride))
        policy = "error" if short_clip == "skip" else "repeat"
        return media.read_video_frames(p, n, "uniform", short_clip=policy)
    return _read_frames_private(p, num_frames, short_clip, temporal_stride)


def _media_module() -> Any:
    """``utils.media`` (shared video I/O) if available, else None (private decord fallback)."""
    try:
        from utils import media
    except ImportError:
        return None
    return media if hasattr(media, "read_video_frames") and hasattr(media, "video_info") else None


def _read_frames_private(p: Path, num_frames: int, short_clip: ShortClip, temporal_stride: int) -> np.ndarray:
    fn = lambda total: sample_frame_indices(total, num_frames, short_clip, temporal_stride)  # noqa: E731
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in FRAME_SUFFIXES)
        frames = []
        for i in fn(len(files)):
            with Image.open(files[i]) as im:
                frames.append(np.array(im.convert("RGB")))
        if len({f.shape for f in frames}) != 1:
            raise SampleError("video_decode_error", "frames of different sizes")
        return np.stack(frames)
    out = _decord_frames(str(p), fn)
    if out.ndim != 4 or out.shape[0] == 0 or out.shape[-1] != 3:
        raise SampleError("video_decode_error", f"bad frame array {out.shape}")
    return out


def preprocess_frames(frames: np.ndarray, res: int, mode: str = "crop"):
    """Per-frame resize (centre crop or pad) -> float (3, T, res, res) in [-1, 1]."""
    op = resize_center_crop if mode == "crop" else resize_and_pad
    out = np.stack([np.array(op(Image.fromarray(f), res)) for f in frames])
    return frames_to_tensor(out)


class VideoTextDataset(RobustDataset):
    """Video-text pairs as ``t2v`` (or ``i2v``: first latent frame is clean conditioning) rows.

    ``num_frames`` = 1 + 4k (17 -> 5 latent frames). Caption cleaning: newlines removed; CFG dropout
    ``cond_dropout_prob`` seeded by (seed, index, epoch). ``latent_cache`` keyed by ``path``.
    """

    def __init__(
        self,
        jsonl: str | Path,
        builder: SequenceBuilder,
        *,
        task: Literal["t2v", "i2v"] = "t2v",
        num_frames: int = 17,
        resolution: int = 432,
        short_clip: ShortClip = "skip",
        cond_dropout_prob: float = 0.1,
        seed: int = 0,
        root: str | Path | None = None,
        latent_cache: Any = None,
        temporal_stride: int = 4,
        counter: BadSampleCounter | None = None,
    ) -> None:
        super().__init__(counter)
        latent_frames(num_frames, temporal_stride)  # validates 1 + 4k
        self.source = str(jsonl)
        self.rows = read_jsonl(jsonl, ("path", "prompt"), self.counter)
        self.builder, self.task = builder, task
        self.num_frames, self.resolution, self.short_clip = num_frames, resolution, short_clip
        self.cond_dropout_prob, self.seed, self.root = cond_dropout_prob, seed, root
        self.latent_cache = open_latent_cache(latent_cache)
        self.temporal_stride = temporal_stride

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, idx: int) -> dict[str, Any]:
        rec = self.rows[idx]
        cap = rec["prompt"]
        if not isinstance(cap, str) or not cap.replace("\n", "").strip():
            raise SampleError("empty_caption")
        cap = cap.replace("\n", "")
        if self.cond_dropout_prob > 0 and seeded_rng(self.seed, idx, self.epoch).random() < self.cond_dropout_prob:
            cap = ""
        item: dict[str, Any] = {"pixels": None, "latents": None, "text": cap}
        if self.latent_cache is not None:
            lat, logvar = read_latent(self.latent_cache, rec["path"])  # (C, T, h, w)
            if lat.dim() != 4:
                raise SampleError("malformed_sample", f"video latent of shape {tuple(lat.shape)}")
            visual = self.builder.visual_for_latents(lat)
            attach_latents(item, [(lat, logvar)])
        else:
            frames = read_frames(resolve_path(self.root, rec["path"]), self.num_frames, self.short_clip,
                                 self.temporal_stride)
            px = preprocess_frames(frames, self.resolution, "crop")
            visual = self.builder.visual_for_pixels(self.resolution, frames=px.shape[1],
                                                    temporal_stride=self.temporal_stride)
            item["pixels"] = [px]
        if self.task == "i2v":
            seq = self.builder.i2v(cap, visual, cond_frames=1)
        else:
            seq = self.builder.t2v(cap, visual)
        item.update(sequence=seq, data_type=seq.data_type)
        return item
