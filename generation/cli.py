"""Shared plumbing of the ``inference_*.py`` entry points: config -> pipeline, clean error exits.

Every entry point is ``python inference_X.py [config=configs/inference/X.yaml] key=value ...``
(``utils.config.load_config``: unknown keys fail naming the key). User errors (bad paths, empty
prompts, bad resolution, unknown keys, unreadable media, ...) are printed as one line
``error: ...`` on stderr with exit code 2, never as a stack trace (set ``SHOWO2_DEBUG=1`` to see it).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["run_entry_point", "build_pipeline", "resolve_device", "resolve_dtype", "split_list", "read_lines",
           "write_json"]

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def _user_error_types() -> tuple[type[BaseException], ...]:
    from datasets.sequence import SampleError
    from generation.pipeline import InputError
    from utils.config import ConfigError

    types: list[type[BaseException]] = [InputError, ConfigError, SampleError, FileNotFoundError, OSError,
                                        ValueError, KeyError]
    try:
        from utils.media import MediaError

        types.append(MediaError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def run_entry_point(main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> int:
    """Run ``main(argv)``; user errors -> one line on stderr and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        rc = main(argv)
        return int(rc or 0)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _user_error_types() as e:
        if os.environ.get("SHOWO2_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2


def resolve_device(name: str | None) -> torch.device:
    """``auto`` -> cuda if available, else cpu; otherwise the name as given (cpu, cuda, cuda:1, mps)."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(str(name))
    except RuntimeError as e:
        from generation.pipeline import InputError

        raise InputError(f"bad device {name!r}: {e}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        from generation.pipeline import InputError

        raise InputError(f"device {name!r} requested but CUDA is not available")
    return dev


def resolve_dtype(name: str | None, device: torch.device, default_gpu: str = "bf16") -> torch.dtype:
    """``auto`` -> ``default_gpu`` on CUDA, fp32 elsewhere; else fp32 | bf16 | fp16."""
    from generation.pipeline import InputError

    if name in (None, "", "auto"):
        name = default_gpu if device.type == "cuda" else "fp32"
    key = str(name).lower()
    if key not in DTYPES:
        raise InputError(f"unknown dtype {name!r} (fp32 | bf16 | fp16 | auto)")
    return DTYPES[key]


def build_pipeline(cfg: Any, **pipe_kwargs: Any):
    """``Showo2Pipeline.from_pretrained`` from the common config keys."""
    from generation.pipeline import InputError, Showo2Pipeline

    if not cfg.get("model_path"):
        raise InputError("model_path is required (hub id, official checkpoint folder or project export)")
    device = resolve_device(cfg.get("device"))
    dtype = resolve_dtype(cfg.get("dtype"), device, default_gpu=cfg.get("gpu_dtype", "bf16") or "bf16")
    mp = str(cfg.model_path)
    if (mp.startswith((".", "/", "~")) or os.sep in mp and Path(mp).parts[0] in (".", "..")) and not Path(mp).exists():
        raise InputError(f"model_path {mp} does not exist")
    t0 = time.time()
    pipe = Showo2Pipeline.from_pretrained(
        mp, vae_path=cfg.get("vae_path") or None, tokenizer_path=cfg.get("tokenizer_path") or None, device=device,
        dtype=dtype, **pipe_kwargs,
    )
    logging.getLogger("inference").info("loaded %s (%s, %s) in %.1fs", mp, device, str(dtype).replace("torch.", ""),
                                        time.time() - t0)
    return pipe


def split_list(value: Any, seps: tuple[str, ...] = ("|", " *** ")) -> list[str]:
    """``"a|b"`` / ``"a *** b"`` / a YAML list -> list of non-empty stripped strings (None -> [])."""
    if value is None:
        return []
    if isinstance(value, list | tuple) or hasattr(value, "__iter__") and not isinstance(value, str):
        return [str(v).strip() for v in value if str(v).strip()]
    s = str(value)
    for sep in seps[1:]:
        s = s.replace(sep, seps[0])
    return [p.strip() for p in s.split(seps[0]) if p.strip()]


def read_lines(path: str | os.PathLike) -> list[str]:
    """Non-empty lines of a text file, or the ``prompt`` field of each JSON line / list entry."""
    from generation.pipeline import InputError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"prompts file not found: {p}")
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".json":
        data = json.loads(text)
        return [d["prompt"] if isinstance(d, dict) else str(d) for d in data]
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if p.suffix == ".jsonl":
            d = json.loads(line)
            out.append(d["prompt"] if isinstance(d, dict) else str(d))
        else:
            out.append(line)
    return out


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=2, ensure_ascii=False))
    return p
