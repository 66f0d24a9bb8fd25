"""Video I/O shared by data loading, inference and the demo.

* Reading: decord (``read_video_frames``, ``video_info``), frames sampled uniformly over the whole clip with
  ``linspace(0, total - 1, F)`` truncated to int (the reference video loader), or a consecutive window.
  A folder of frame images (sorted by name) is read like a video.
* Writing: PyAV (libx264, yuv420p, even frame sizes) with a GIF fallback through PIL (``write_video``,
  ``write_gif``).

Frames are always uint8 ``(F, H, W, 3)`` RGB (numpy in, numpy out; torch uint8 tensors accepted on input).
Image loading/preprocessing belongs to ``datasets.transforms``; this module only does video containers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "MediaError",
    "VideoInfo",
    "video_info",
    "sample_frame_indices",
    "read_video_frames",
    "write_video",
    "write_gif",
    "FRAME_SUFFIXES",
]

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SampleMode = Literal["uniform", "first", "random"]
ShortClip = Literal["repeat", "pad", "error"]


class MediaError(RuntimeError):
    """A media file that cannot be read or written. ``reason`` is a short key for bad-sample counters
    (``missing_file``, ``video_decode_error``, ``no_frames``, ``too_few_frames``, ``write_error``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class MediaFileNotFound(MediaError, FileNotFoundError):
    """The path does not exist (also a ``FileNotFoundError``, so generic handlers count it as missing)."""

    def __init__(self, path: str | Path) -> None:
        MediaError.__init__(self, "missing_file", f"no such file or folder: {path}")


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    height: int
    width: int


# ----------------------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------------------
def sample_frame_indices(
    total: int,
    num_frames: int,
    mode: SampleMode = "uniform",
    *,
    stride: int = 1,
    rng: np.random.Generator | None = None,
    short_clip: ShortClip = "repeat",
) -> list[int]:
    """Indices of ``num_frames`` frames out of ``total``.

    * ``uniform``: ``linspace(0, total - 1, num_frames).astype(int)`` (first and last frame included; the
      reference loader). For a short clip this repeats frames naturally.
    * ``first``: a window ``0, stride, 2*stride, ...`` from the start.
    * ``random``: the same window at a random start (``rng``, default a fresh unseeded generator).

    Windows that run past the end are handled by ``short_clip``: ``repeat``/``pad`` repeat the last frame
    (logged), ``error`` raises ``MediaError("too_few_frames")``. ``uniform`` only raises with ``error``.
    """
    if total <= 0:
        raise MediaError("no_frames", "video has no frames")
    if num_frames <= 0:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    span = (num_frames - 1) * stride + 1  # frames a window covers
    if mode == "uniform":
        if total < num_frames:
            if short_clip == "error":
                raise MediaError("too_few_frames", f"{total} frames < {num_frames} requested")
            logger.info("clip has %d frames < %d requested: repeating frames (uniform sampling)", total, num_frames)
        return np.linspace(0, total - 1, num_frames).astype(int).tolist()
    if mode not in ("first", "random"):
        raise ValueError(f"unknown sampling mode {mode!r} (uniform, first, random)")
    start = 0
    if mode == "random" and total > span:
        rng = rng if rng is not None else np.random.default_rng()
        start = int(rng.integers(0, total - span + 1))
    idx = [start + i * stride for i in range(num_frames)]
    if idx[-1] >= total:
        if short_clip == "error":
            raise MediaError("too_few_frames", f"{total} frames < window of {span} (stride {stride})")
        logger.info("clip has %d frames < window of %d: padding with the last frame", total, span)
        idx = [min(i, total - 1) for i in idx]
    return idx


def _frame_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in FRAME_SUFFIXES)


def _open_reader(path: Path, size: tuple[int, int] | None):
    import decord

    kwargs = {"num_threads": 1}  # frames are read inside data-loader workers: no thread oversubscription
    if size is not None:
        kwargs.update(height=int(size[0]), width=int(size[1]))
    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), **kwargs)
    except Exception as e:  # decord raises DECORDError / RuntimeError for anything it cannot demux or decode
        raise MediaError("video_decode_error", f"cannot open video {path}: {str(e).splitlines()[0][:200]}") from e


def video_info(path: str | Path) -> VideoInfo:
    """Frame count, fps and frame size (height, width) of a video file (or a frame folder, fps 0)."""
    p = Path(path)
    if not p.exists():
        raise MediaFileNotFound(p)
    if p.is_dir():
        files = _frame_files(p)
        if not files:
            raise MediaError("no_frames", f"no frame images in {p}")
        from PIL import Image

        with Image.open(files[0]) as im:
            return VideoInfo(len(files), 0.0, im.height, im.width)
    vr = _open_reader(p, None)
    if len(vr) == 0:
        raise MediaError("no_frames", f"{p} has no frames")
    h, w = vr[0].shape[:2]
    return VideoInfo(len(vr), float(vr.get_avg_fps()), int(h), int(w))


def read_video_frames(
    path: str | Path,
    num_frames: int | None,
    mode: SampleMode = "uniform",
    *,
    stride: int = 1,
    size: tuple[int, int] | None = None,
    rng: np.random.Generator | None = None,
    short_clip: ShortClip = "repeat",
    return_indices: bool = False,
) -> np.ndarray | tuple[np.ndarray, list[int]]:
    """Read ``num_frames`` frames (``None`` = all) of a video file or frame folder as uint8 ``(F, H, W, 3)`` RGB.

    ``mode``/``stride``/``rng``/``short_clip``: see :func:`sample_frame_indices`. ``size=(H, W)`` resizes while
    decoding (decord; frame folders are resized with PIL bicubic). Raises ``MediaFileNotFound`` for a missing
    path and ``MediaError`` (reason ``video_decode_error`` / ``no_frames`` / ``too_few_frames``) otherwise, never
    a bare decord error.
    """
    p = Path(path)
    if not p.exists():
        raise MediaFileNotFound(p)
    if p.is_dir():
        files = _frame_files(p)
        total = len(files)
        idx = list(range(total)) if num_frames is None else sample_frame_indices(
            total, num_frames, mode, stride=stride, rng=rng, short_clip=short_clip
        )
        frames = _read_frame_files([files[i] for i in idx], size)
    else:

        def pick(total: int) -> list[int]:
            if total == 0:
                raise MediaError("no_frames", f"{p} has no frames")
            if num_frames is None:
                return list(range(total))
            return sample_frame_indices(total, num_frames, mode, stride=stride, rng=rng, short_clip=short_clip)

        try:
            vr = _open_reader(p, size)
            idx = pick(len(vr))
            frames = vr.get_batch(idx).asnumpy()
        except MediaError as e:
            if e.reason != "video_decode_error":
                raise
            frames, idx = _read_with_pyav(p, pick, size, first_error=e)
        except Exception as e:  # decord fails on some frame widths (e.g. 48: a line-size mismatch) and corrupt data
            first = MediaError("video_decode_error", f"decord: {str(e).splitlines()[0][:200]}")
            frames, idx = _read_with_pyav(p, pick, size, first_error=first)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] != len(idx):
        raise MediaError("video_decode_error", f"unexpected frame array {frames.shape} from {p}")
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    return (frames, idx) if return_indices else frames


def _read_with_pyav(path: Path, pick, size: tuple[int, int] | None, first_error: MediaError):
    """Fallback decoder (PyAV) for files decord cannot handle; decodes sequentially up to the last needed frame."""
    try:
        import av

        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            total = stream.frames  # 0 when the container does not say
            if total <= 0:  # count by demuxing (cheap, no decoding)
                total = sum(1 for pkt in container.demux(stream) if pkt.size)
                container.seek(0)
            idx = pick(total)
            wanted = set(idx)
            got: dict[int, np.ndarray] = {}
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    if size is not None:
                        frame = frame.reformat(width=int(size[1]), height=int(size[0]))
                    got[i] = frame.to_ndarray(format="rgb24")
                if i >= max(idx):
                    break
        if not got:
            raise MediaError("no_frames", f"{path} decoded no frames")
        last = max(got)
        frames = np.stack([got.get(i, got[last]) for i in idx])  # a short decode repeats the last frame
        return frames, idx
    except MediaError:
        raise
    except Exception as e:
        raise MediaError(
            "video_decode_error", f"cannot read video {path} ({first_error}; PyAV: {str(e).splitlines()[0][:200]})"
        ) from e


def _read_frame_files(files: list[Path], size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image

    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert("RGB")
                if size is not None:
                    im = im.resize((int(size[1]), int(size[0])), Image.BICUBIC)
                out.append(np.asarray(im))
        except OSError as e:
            raise MediaError("video_decode_error", f"cannot read frame {f}: {e}") from e
    if len({a.shape for a in out}) != 1:
        raise MediaError("video_decode_error", f"frames of different sizes in {files[0].parent}")
    return np.stack(out)


# ----------------------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------------------
def _as_uint8_frames(frames) -> np.ndarray:
    """Accept numpy / torch uint8 (F, H, W, 3) or (F, H, W) and return a contiguous numpy (F, H, W, 3)."""
    if hasattr(frames, "detach"):  # torch tensor, without importing torch here
        frames = frames.detach().cpu().numpy()
    arr = np.asarray(frames)
    if arr.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (use WanVAE.to_uint8 for [-1, 1] pixels), got {arr.dtype}")
    if arr.ndim == 3:
        arr = np.repeat(arr[..., None], 3, axis=3)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] == 0:
        raise ValueError(f"frames must be (F, H, W, 3) with F >= 1, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _even(arr: np.ndarray) -> np.ndarray:
    """yuv420p needs even width and height: replicate the last row/column when odd (no content lost)."""
    f, h, w, _ = arr.shape
    ph, pw = h % 2, w % 2
    if ph or pw:
        arr = np.pad(arr, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return arr


def write_gif(frames, path: str | Path, fps: float = 8.0, loop: int = 0) -> Path:
    """Write uint8 ``(F, H, W, 3)`` frames as an animated GIF with PIL (palette-quantised; ``loop=0`` forever)."""
    from PIL import Image

    arr = _as_uint8_frames(frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in arr]
    duration = max(int(round(1000.0 / max(fps, 1e-3))), 20)  # ms per frame; browsers clamp below 20 ms
    try:
        images[0].save(path, save_all=True, append_images=images[1:], duration=duration, loop=loop, optimize=False)
    except OSError as e:
        raise MediaError("write_error", f"cannot write GIF {path}: {e}") from e
    return path


def write_video(
    frames,
    path: str | Path,
    fps: float = 8.0,
    *,
    crf: int = 18,
    codec: str = "libx264",
    gif_fallback: bool = True,
) -> Path:
    """Write uint8 ``(F, H, W, 3)`` RGB frames to ``path`` and return the path actually written.

    ``.mp4``/``.mkv``/``.mov``: PyAV with ``codec`` (libx264, yuv420p, ``crf``); odd sizes are padded by one
    replicated row/column. If PyAV is missing or fails and ``gif_fallback`` is true, a GIF is written next to
    it (same name, ``.gif``) and a warning logged. A ``.gif`` path writes a GIF directly.
    """
    arr = _as_uint8_frames(frames)
    path = Path(path)
    if path.suffix.lower() == ".gif":
        return write_gif(arr, path, fps)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part" + path.suffix)  # never leave a half-written file under the real name
    try:
        from fractions import Fraction

        import av

        arr_even = _even(arr)
        rate = Fraction(fps).limit_denominator(1001)
        with av.open(str(tmp), mode="w") as container:
            stream = container.add_stream(codec, rate=rate)
            stream.width, stream.height = arr_even.shape[2], arr_even.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf)}
            for frame in arr_even:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():  # flush the encoder
                container.mux(packet)
        tmp.replace(path)
        return path
    except Exception as e:  # ImportError (no PyAV), codec unavailable, disk errors ...
        tmp.unlink(missing_ok=True)
        if not gif_fallback:
            raise MediaError("write_error", f"cannot write video {path}: {e}") from e
        gif = path.with_suffix(".gif")
        logger.warning("writing %s with PyAV failed (%s); writing %s instead", path, e, gif)
        return write_gif(arr, gif, fps)
