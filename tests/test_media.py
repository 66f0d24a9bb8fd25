"""utils.media: frame sampling, decord reading (fixture video), PyAV/GIF writing, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from utils.media import (
    MediaError,
    MediaFileNotFound,
    read_video_frames,
    sample_frame_indices,
    video_info,
    write_gif,
    write_video,
)

FIXTURE = Path(__file__).parent / "fixtures" / "media" / "video1.mp4"


def _smooth_frames(f: int, h: int, w: int) -> np.ndarray:
    """Moving colour gradients: compress well, so a lossy round trip stays close."""
    y, x = np.mgrid[0:h, 0:w]
    frames = []
    for t in range(f):
        r = (x * 255 / max(w - 1, 1) + 8 * t) % 256
        g = y * 255 / max(h - 1, 1)
        b = np.full_like(r, 40 + 20 * t)
        frames.append(np.stack([r, g, b], -1))
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def test_uniform_indices_match_reference() -> None:
    assert sample_frame_indices(52, 17) == np.linspace(0, 51, 17).astype(int).tolist()
    assert sample_frame_indices(52, 17)[0] == 0 and sample_frame_indices(52, 17)[-1] == 51
    assert sample_frame_indices(10, 1) == [0]
    assert sample_frame_indices(3, 5) == [0, 0, 1, 1, 2]  # short clip: frames repeat
    with pytest.raises(MediaError, match="too_few_frames"):
        sample_frame_indices(3, 5, short_clip="error")
    with pytest.raises(MediaError, match="no_frames"):
        sample_frame_indices(0, 5)


def test_window_indices() -> None:
    assert sample_frame_indices(20, 5, "first", stride=2) == [0, 2, 4, 6, 8]
    assert sample_frame_indices(6, 5, "first", stride=2) == [0, 2, 4, 5, 5]  # padded with the last frame
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = sample_frame_indices(30, 5, "random", stride=3, rng=rng)
        assert idx[-1] < 30 and np.all(np.diff(idx) == 3)
    a = sample_frame_indices(100, 5, "random", rng=np.random.default_rng(1))
    assert a == sample_frame_indices(100, 5, "random", rng=np.random.default_rng(1))
    with pytest.raises(ValueError, match="unknown sampling mode"):
        sample_frame_indices(10, 5, "middle")  # type: ignore[arg-type]


def test_read_fixture_video() -> None:
    info = video_info(FIXTURE)
    assert (info.num_frames, info.height, info.width) == (52, 960, 540) and info.fps == pytest.approx(30.0)
    frames, idx = read_video_frames(FIXTURE, 17, size=(96, 64), return_indices=True)
    assert frames.shape == (17, 96, 64, 3) and frames.dtype == np.uint8
    assert idx == np.linspace(0, 51, 17).astype(int).tolist()
    short = read_video_frames(FIXTURE, 65, size=(32, 16))  # more than 52: repeated frames
    assert short.shape == (65, 32, 16, 3)


@pytest.mark.parametrize("hw", [(32, 48), (33, 47)])  # 48 wide trips decord (PyAV fallback); odd sizes are padded
def test_write_mp4_read_back(tmp_path: Path, hw: tuple[int, int]) -> None:
    frames = _smooth_frames(9, *hw)
    out = write_video(frames, tmp_path / "clip.mp4", fps=8)
    assert out == tmp_path / "clip.mp4" and out.stat().st_size > 0
    assert not list(tmp_path.glob("*.part*"))
    info = video_info(out)
    assert info.num_frames == 9 and info.fps == pytest.approx(8.0)
    assert (info.height, info.width) == (hw[0] + hw[0] % 2, hw[1] + hw[1] % 2)
    back = read_video_frames(out, None)
    assert back.shape == (9, info.height, info.width, 3)
    err = np.abs(back[:, : hw[0], : hw[1]].astype(int) - frames.astype(int)).mean()
    assert err < 10, err  # lossy (crf 18, yuv420p) but close
    sub = read_video_frames(out, 5)
    assert sub.shape[0] == 5


def test_write_gif_and_fallback(tmp_path: Path) -> None:
    frames = _smooth_frames(4, 16, 16)
    g = write_gif(frames, tmp_path / "a.gif", fps=4)
    with Image.open(g) as im:
        assert im.n_frames == 4 and im.info["duration"] == 250
    out = write_video(frames, tmp_path / "b.mp4", codec="no_such_codec")  # PyAV fails -> GIF next to it
    assert out == tmp_path / "b.gif" and out.exists() and not (tmp_path / "b.mp4").exists()
    with pytest.raises(MediaError, match="write_error"):
        write_video(frames, tmp_path / "c.mp4", codec="no_such_codec", gif_fallback=False)
    with pytest.raises(ValueError, match="uint8"):
        write_video(frames.astype(np.float32), tmp_path / "d.mp4")


def test_frame_folder(tmp_path: Path) -> None:
    frames = _smooth_frames(6, 16, 24)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / f"{i:03d}.png")
    got = read_video_frames(tmp_path, 3)
    assert np.array_equal(got, frames[[0, 2, 5]])
    assert video_info(tmp_path).num_frames == 6


def test_unreadable_and_missing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"definitely not a video")
    with pytest.raises(MediaError, match="video_decode_error") as e:
        read_video_frames(bad, 5)
    assert e.value.reason == "video_decode_error" and "bad.mp4" in str(e.value)
    trunc = tmp_path / "trunc.mp4"
    trunc.write_bytes(FIXTURE.read_bytes()[:5000])
    with pytest.raises(MediaError):
        read_video_frames(trunc, 5)
    with pytest.raises(MediaFileNotFound) as e2:
        read_video_frames(tmp_path / "missing.mp4", 5)
    assert isinstance(e2.value, FileNotFoundError) and e2.value.reason == "missing_file"
