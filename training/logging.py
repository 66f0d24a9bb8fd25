"""Run logging: progress bar, ``metrics.jsonl`` (always), wandb (optional), sample grids, guards.

Only the main process writes. wandb is never required: ``logging.wandb.mode`` is ``disabled`` by
default; ``offline`` writes under ``<output_dir>/wandb`` without network; ``online`` needs a key.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["RunLogger", "NonFiniteGuard", "NonFiniteLossError", "peak_memory", "save_image_grid"]


def peak_memory() -> dict[str, float]:
    """Peak host RSS of this process (MiB) and, on CUDA, peak allocated device memory (MiB)."""
    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if torch.cuda.is_available():
        out["peak_cuda_alloc_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


class NonFiniteLossError(RuntimeError):
    pass


class NonFiniteGuard:
    """Counts consecutive non-finite losses; the loop skips those steps and stops after ``max_in_a_row``."""

    def __init__(self, max_in_a_row: int = 10):
        self.max_in_a_row = int(max_in_a_row)
        self.in_a_row = 0
        self.total = 0

    def update(self, finite: bool) -> bool:
        """Returns True when the step may proceed; raises after too many bad steps in a row."""
        if finite:
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        self.total += 1
        if self.max_in_a_row and self.in_a_row >= self.max_in_a_row:
            raise NonFiniteLossError(f"{self.in_a_row} non-finite losses in a row: stopping (training.max_nonfinite_steps)")
        return False


class RunLogger:
    """metrics.jsonl + tqdm + optional wandb, main process only."""

    def __init__(
        self,
        output_dir: str | Path,
        cfg: Mapping[str, Any],
        *,
        is_main: bool,
        run_config: Mapping[str, Any] | None = None,
        total_steps: int | None,
        initial_step: int = 0,
        run_name: str = "showo2",
        project: str = "showo2",
    ):
        self.is_main = is_main
        self.output_dir = Path(output_dir)
        self.metrics_path = self.output_dir / "metrics.jsonl"
        self.bar = None
        self.wandb_run = None
        if not is_main:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.metrics_path, "a")
        if cfg.get("progress_bar", True):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=initial_step, desc=run_name, dynamic_ncols=True, file=sys.stderr)
        wb = dict(cfg.get("wandb", {}) or {})
        mode = wb.get("mode", "disabled") or "disabled"
        if mode != "disabled":
            import wandb

            self.wandb_run = wandb.init(
                project=wb.get("project") or project,
                name=run_name,
                id=wb.get("run_id"),
                resume="allow" if wb.get("run_id") else None,
                mode=mode,
                dir=str(self.output_dir),
                config=dict(run_config or {}),
            )

    def log(self, step: int, metrics: Mapping[str, Any], *, advance: int = 0) -> None:
        if not self.is_main:
            return
        rec = {"step": int(step), "time": time.time()}
        rec.update({k: (float(v) if isinstance(v, int | float | np.floating) else v) for k, v in metrics.items()})
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in rec.items() if k != "time"}, step=int(step))
        if self.bar is not None:
            if advance:
                self.bar.update(advance)
            short = {k: f"{v:.4g}" for k, v in metrics.items() if k in ("loss", "loss_ntp", "loss_flow", "samples_per_s")}
            self.bar.set_postfix(short, refresh=False)

    def set_total(self, total: int) -> None:
        if self.bar is not None:
            self.bar.total = int(total)
            self.bar.refresh()

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def info(self, msg: str) -> None:
        if not self.is_main:
            return
        line = f"[train] {msg}"
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)
        with open(self.output_dir / "train.log", "a") as f:
            f.write(line + "\n")

    def log_images(self, step: int, path: Path, caption: str = "") -> None:
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({"samples": wandb.Image(str(path), caption=caption)}, step=int(step))

    def close(self) -> None:
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.close()
        self._file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def save_image_grid(images: torch.Tensor | np.ndarray, path: str | Path, nrow: int | None = None) -> Path:
    """Images (N, H, W, 3) uint8 or (N, 3, H, W) float in [-1, 1] -> one PNG grid."""
    from PIL import Image

    x = images
    if isinstance(x, torch.Tensor):
        if x.dtype != torch.uint8:
            x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        if x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3):
            x = x.permute(0, 2, 3, 1)
        x = x.cpu().numpy()
    x = np.asarray(x)
    n, h, w, c = x.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    rows = int(math.ceil(n / nrow))
    grid = np.zeros((rows * h, nrow * w, c), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = x[i]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.squeeze(-1) if c == 1 else grid).save(path)
    return path
