"""Shared measurement utilities for the speed/memory harness.

Everything here is device agnostic: on CUDA timings are bracketed by ``torch.cuda.synchronize`` and peak memory
comes from the caching allocator; on CPU peak memory is the process' resident-set high-water mark, reset before each
measured region through ``/proc/self/clear_refs`` (Linux >= 4.0) so that one benchmark's peak does not leak into the
next. Where that reset is unavailable a background thread samples RSS instead (coarser but still per-region).
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = [
    "Timing",
    "PeakMemory",
    "sync",
    "time_fn",
    "measure_peak_memory",
    "device_name",
    "machine_info",
    "resolve_device",
    "resolve_dtype",
    "fmt_bytes",
    "fmt_num",
]


def resolve_device(name: str | None) -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else is passed to ``torch.device``."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """Map ``fp32``/``bf16``/``fp16`` (or torch names) to a dtype."""
    if isinstance(name, torch.dtype):
        return name
    table = {
        "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
        "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
        "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    }
    try:
        return table[str(name).lower()]
    except KeyError as e:
        raise ValueError(f"unknown dtype '{name}' (use fp32, bf16 or fp16)") from e


def sync(device: torch.device | str | None = None) -> None:
    """Wait for queued device work so wall-clock time covers it (no-op on CPU, which is synchronous)."""
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev is not None and dev.type == "mps":  # pragma: no cover - not available here
        torch.mps.synchronize()


@dataclass
class Timing:
    """Wall-clock samples of one measured callable (seconds), warm-up excluded."""

    samples: list[float] = field(default_factory=list)
    cpu_samples: list[float] = field(default_factory=list)   # process CPU seconds per call (all threads)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def min(self) -> float:
        return min(self.samples) if self.samples else float("nan")

    @property
    def spread(self) -> float:
        """(max - min) / median: a quick noise indicator for the report (shared CPUs are noisy)."""
        if len(self.samples) < 2:
            return 0.0
        return (max(self.samples) - min(self.samples)) / self.median

    def to_dict(self) -> dict[str, Any]:
        cpu = statistics.median(self.cpu_samples) if self.cpu_samples else float("nan")
        return {"median_s": self.median, "min_s": self.min, "spread": self.spread, "samples_s": list(self.samples),
                "cpu_median_s": cpu}


def time_fn(
    fn: Callable[[], Any],
    device: torch.device | str,
    repeats: int = 3,
    warmup: int = 1,
    setup: Callable[[], Any] | None = None,
) -> Timing:
    """Run ``fn`` ``warmup`` times unmeasured, then ``repeats`` times measured; returns every sample.

    ``setup`` (if given) runs before each call outside the timed region, e.g. to rebuild inputs that ``fn`` consumes.
    We report the median (robust to the occasional scheduler hiccup on a shared machine) and keep all samples.
    Process CPU time is recorded too: on an oversubscribed CPU, wall time / CPU time shows how much of the machine
    this process actually got.
    """
    timing = Timing()
    for i in range(warmup + repeats):
        if setup is not None:
            setup()
        sync(device)
        c0 = time.process_time()
        t0 = time.perf_counter()
        fn()
        sync(device)
        dt = time.perf_counter() - t0
        dc = time.process_time() - c0
        if i >= warmup:
            timing.samples.append(dt)
            timing.cpu_samples.append(dc)
    return timing


# ----------------------------------------------------------------------------------------------------------------
# Peak memory
# ----------------------------------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; psutil or 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        try:
            import psutil

            return int(psutil.Process().memory_info().rss)
        except Exception:  # pragma: no cover - exotic platforms
            return 0


def _hwm_bytes() -> int | None:
    """Resident-set high-water mark (VmHWM) of this process, or None if /proc is unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: writing '5' to clear_refs). True if it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    hwm = _hwm_bytes()
    # After a successful reset the high-water mark is close to the current RSS (within a few pages).
    return hwm is not None and hwm <= _rss_bytes() + (1 << 20)


@dataclass
class PeakMemory:
    """Peak memory of a measured region.

    ``peak_bytes``: absolute peak (CUDA: max allocated by the caching allocator; CPU: process peak RSS, which includes
    the interpreter, libraries, weights and the optimiser state). ``delta_bytes``: peak minus what was in use when the
    region started (activations, gradients, temporaries created inside the region). ``method`` says how it was taken.
    """

    peak_bytes: int = 0
    baseline_bytes: int = 0
    method: str = ""

    @property
    def delta_bytes(self) -> int:
        return max(0, self.peak_bytes - self.baseline_bytes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["delta_bytes"] = self.delta_bytes
        return d


class _RssSampler:
    """Fallback when VmHWM cannot be reset: poll RSS every few ms from a daemon thread."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def _release_free_heap() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``) so the RSS baseline reflects live memory only.

    Without it, memory freed by an earlier benchmark stays resident and the next region's peak-minus-baseline
    reads as ~0 while the process footprint hides the real high-water mark.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def measure_peak_memory(device: torch.device | str) -> Iterator[PeakMemory]:
    """Context manager that fills a :class:`PeakMemory` for the enclosed region."""
    dev = torch.device(device)
    result = PeakMemory()
    gc.collect()
    if dev.type == "cpu":
        _release_free_heap()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        result.baseline_bytes = torch.cuda.memory_allocated(dev)
        result.method = "cuda.max_memory_allocated"
        yield result
        torch.cuda.synchronize(dev)
        result.peak_bytes = torch.cuda.max_memory_allocated(dev)
        return
    result.baseline_bytes = _rss_bytes()
    if _reset_hwm():
        result.method = "VmHWM (reset via /proc/self/clear_refs)"
        yield result
        result.peak_bytes = max(_hwm_bytes() or 0, _rss_bytes())
        return
    result.method = "RSS sampled every 2 ms"
    with _RssSampler() as sampler:
        yield result
    result.peak_bytes = sampler.peak


# ----------------------------------------------------------------------------------------------------------------
# Reporting helpers
# ----------------------------------------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    """Short device tag used in result file names (``cpu``, ``cuda-h100`` ...)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device).lower()
        for key in ("h200", "h100", "a100", "l40", "a10", "v100", "4090", "3090"):
            if key in name:
                return f"cuda-{key}"
        return "cuda"
    return device.type


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on (goes into the JSON so results are comparable later)."""
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        info["loadavg_1m"] = os.getloadavg()[0]  # other processes on a shared machine inflate CPU timings
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
    return info


def fmt_bytes(n: float | None) -> str:
    if n is None or n != n:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def fmt_num(x: float | None, unit: str = "") -> str:
    """Engineering format: 1.23 G, 45.6 M ..."""
    if x is None or x != x:
        return "-"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()
