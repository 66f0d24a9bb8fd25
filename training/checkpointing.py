"""Checkpoints: atomic writes, ``latest`` resolution, keep-last-K, exact resume, hand-off, export.

Layout of ``<output_dir>/checkpoint-<step>/`` (``<step>`` = optimizer steps done):

    model.safetensors          full model weights (unwrapped; 16-bit under DeepSpeed, as the engine holds them)
    optimizer.pt               optimizer state (single process / DDP; tensors + numbers, read weights_only)
    deepspeed/                 engine-owned sharded optimizer state under DeepSpeed (see below)
    scheduler.json             LR-scheduler state
    rng_rank<r>.json/.safetensors   per-rank python / numpy / torch / cuda RNG + the run's own generators
    data_rank<r>.json          per-rank data-loader position (loader ``state_dict()``)
    meta.json                  global step, world size, backend, run state -- written LAST

Atomicity: every rank writes into ``.tmp-checkpoint-<step>/``; after a barrier rank 0 writes
``meta.json`` and renames the folder into place with ``os.replace``. A crash at any point before the
rename leaves only a temp folder, which ``latest`` ignores (it also ignores folders without
``meta.json`` and non-numeric names such as the official ``checkpoint-final``; quirk 6). The filesystem
must be shared between ranks (multi-node runs write to one shared ``output_dir``).

Security: nothing we read is unpickled with code execution: safetensors + JSON, and ``torch.load(...,
weights_only=True)`` for the optimizer (FSDP: gathered full state). Exception: DeepSpeed's sharded
optimizer states are written and read by DeepSpeed (pickle-based); only resume from checkpoints you produced.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from training.optim import name_matches

__all__ = [
    "CHECKPOINT_RE",
    "list_checkpoints",
    "latest_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "load_init_weights",
    "export_model",
    "rng_state",
    "set_rng_state",
    "save_state_dict",
]

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
META = "meta.json"
MODEL_FILE = "model.safetensors"


# ----------------------------------------------------------------------------------------------
# discovery


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints ``(step, path)`` sorted by step (temp / partial / non-numeric ignored)."""
    out: list[tuple[int, Path]] = []
    d = Path(output_dir)
    if not d.is_dir():
        return out
    for p in d.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and p.is_dir() and (p / META).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1][1] if ckpts else None


def resolve_checkpoint(spec: str | None, output_dir: str | Path) -> Path | None:
    """``None``/``""``/``false`` -> None; ``latest`` -> newest complete checkpoint (or None); else a path."""
    if spec in (None, "", False, "false", "none", "None"):
        return None
    if str(spec) == "latest":
        return latest_checkpoint(output_dir)
    p = Path(str(spec))
    if not (p / META).is_file():
        raise FileNotFoundError(f"not a complete checkpoint (no {META}): {p}")
    return p


# ----------------------------------------------------------------------------------------------
# RNG state (per rank): python / numpy / torch / cuda + named generators of the run


def rng_state(generators: Mapping[str, torch.Generator] | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """(JSON part, tensor part) of every RNG stream that can influence the next step."""
    py = random.getstate()
    npst = np.random.get_state()
    js = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [npst[0], npst[1].tolist(), int(npst[2]), int(npst[3]), float(npst[4])],
    }
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    for name, g in (generators or {}).items():
        tensors[f"gen.{name}"] = g.get_state()
    return js, tensors


def set_rng_state(js: Mapping, tensors: Mapping[str, torch.Tensor], generators: Mapping[str, torch.Generator] | None = None) -> None:
    v, st, gauss = js["python"]
    random.setstate((v, tuple(st), gauss))
    n = js["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    for name, g in (generators or {}).items():
        key = f"gen.{name}"
        if key not in tensors:
            raise KeyError(f"checkpoint has no state for generator '{name}'")
        g.set_state(tensors[key])


# ----------------------------------------------------------------------------------------------
# helpers


def save_state_dict(state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """safetensors save that tolerates tied weights (shared storage is cloned) and non-contiguity."""
    seen: set[tuple[int, int]] = set()
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        v = v.detach()
        try:
            key = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else (id(v), 0)
        except RuntimeError:  # storage not addressable from python (e.g. gathered FSDP views): own copy
            key, v = (id(v), 0), v.clone()
        if key in seen or not v.is_contiguous():
            v = v.contiguous().clone()
        seen.add(key)
        out[k] = v.cpu()
    save_file(out, str(path))


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # not supported everywhere (e.g. some network filesystems)
        pass


def _backend(accelerator, model=None) -> str:
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return "deepspeed"
    if accelerator.distributed_type == DistributedType.FSDP:
        return "fsdp"
    if model is not None and any(hasattr(p, "placements") for p in model.parameters()):  # FSDP2 DTensors
        return "fsdp"
    return "plain"


def full_state_dict(accelerator, model) -> dict[str, torch.Tensor]:
    """Gathered full model state (collective). FSDP goes through torch.distributed.checkpoint directly
    (full tensors on CPU on rank 0); everything else through accelerate (ZeRO-3: 16-bit gather)."""
    if _backend(accelerator, model) == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=False))
        # tied weights (lm_head = embed_tokens) can come back still sharded: gather them on every rank
        sd = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in sd.items()}
        return {k: v.cpu() for k, v in sd.items()} if accelerator.is_main_process else {}
    return accelerator.get_state_dict(model)


def _fsdp_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def _write_meta(tmp: Path, meta: Mapping[str, Any]) -> None:
    """Completion marker. Separate function so tests can inject a crash right before it."""
    _write_json(tmp / META, dict(meta))


# ----------------------------------------------------------------------------------------------
# save / load


def save_checkpoint(
    accelerator,
    output_dir: str | Path,
    step: int,
    model,
    optimizer,
    scheduler,
    *,
    generators: Mapping[str, torch.Generator] | None = None,
    data_state: Any = None,
    run_state: Mapping[str, Any] | None = None,
    keep_last: int | None = None,
) -> Path:
    """Collective: every rank must call it. Returns the final checkpoint path."""
    out = Path(output_dir)
    final = out / f"checkpoint-{step}"
    tmp = out / f".tmp-checkpoint-{step}"
    rank = accelerator.process_index
    backend = _backend(accelerator, model)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if tmp.exists():  # leftover of a crashed write
            shutil.rmtree(tmp)
        tmp.mkdir()
    accelerator.wait_for_everyone()

    # weights: gathered full state dict (collective under ZeRO-3 / FSDP)
    state = full_state_dict(accelerator, model)
    if accelerator.is_main_process:
        save_state_dict(state, tmp / MODEL_FILE)
    del state
    if backend == "deepspeed":
        model.save_checkpoint(str(tmp / "deepspeed"), tag="state", save_latest=False)
    elif backend == "fsdp":  # full optimizer state gathered to rank 0 (fine for the sizes FSDP is used at here)
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        osd = get_optimizer_state_dict(model, optimizer.optimizer, options=_fsdp_options(cpu_offload=True))
        if accelerator.is_main_process:
            torch.save(osd, tmp / "optimizer.pt")
        del osd
    elif accelerator.is_main_process:  # DDP / single: optimizer state is identical on every rank
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if accelerator.is_main_process and scheduler is not None:
        _write_json(tmp / "scheduler.json", scheduler.state_dict())
    js, tensors = rng_state(generators)
    _write_json(tmp / f"rng_rank{rank}.json", js)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / f"rng_rank{rank}.safetensors"))
    _write_json(tmp / f"data_rank{rank}.json", data_state)
    accelerator.wait_for_everyone()

    if accelerator.is_main_process:
        meta = {
            "global_step": int(step),
            "world_size": accelerator.num_processes,
            "backend": backend,
            "time": time.time(),
            "state": dict(run_state or {}),
        }
        _write_meta(tmp, meta)
        _fsync_dir(tmp)
        old = out / f".old-checkpoint-{step}"
        if final.exists():  # re-saving a step (e.g. after resume): move the old one aside first
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(out)
        if old.exists():
            shutil.rmtree(old)
        if keep_last:
            for _, p in list_checkpoints(out)[: -int(keep_last)]:
                shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(
    accelerator,
    path: str | Path,
    model,
    optimizer,
    scheduler,
    *,
    generators: Mapping[str, torch.Generator] | None = None,
) -> dict[str, Any]:
    """Restore everything ``save_checkpoint`` wrote (collective). Returns meta + ``data_state``."""
    path = Path(path)
    meta = json.loads((path / META).read_text())
    backend = _backend(accelerator, model)
    if meta["world_size"] != accelerator.num_processes:
        raise ValueError(
            f"{path} was written by {meta['world_size']} processes, this run has {accelerator.num_processes}: "
            "exact resume needs the same world size (use init_from for a weights-only start)"
        )
    if meta["backend"] != backend:
        raise ValueError(f"{path} was written with backend {meta['backend']}, this run uses {backend}")
    if backend == "deepspeed":
        model.load_checkpoint(str(path / "deepspeed"), tag="state", load_optimizer_states=True, load_lr_scheduler_states=False)
    elif backend == "fsdp":
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        main = accelerator.is_main_process
        sd = load_file(str(path / MODEL_FILE)) if main else {}
        set_model_state_dict(model, sd, options=_fsdp_options(broadcast_from_rank0=True))
        osd = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True) if main else {}
        set_optimizer_state_dict(model, optimizer.optimizer, osd, options=_fsdp_options(broadcast_from_rank0=True))
    else:
        sd = load_file(str(path / MODEL_FILE))
        accelerator.unwrap_model(model).load_state_dict(sd, strict=True)
        opt = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(opt)
    if scheduler is not None:
        scheduler.load_state_dict(json.loads((path / "scheduler.json").read_text()))
    rank = accelerator.process_index
    js = json.loads((path / f"rng_rank{rank}.json").read_text())
    tensors = load_file(str(path / f"rng_rank{rank}.safetensors"))
    set_rng_state(js, tensors, generators)
    meta["data_state"] = json.loads((path / f"data_rank{rank}.json").read_text())
    return meta


# ----------------------------------------------------------------------------------------------
# stage hand-off and export


def _weights_file(path: Path) -> Path:
    """The safetensors weights inside a checkpoint folder, an export folder, or the file itself."""
    if path.is_file():
        return path
    for name in (MODEL_FILE, "model.safetensors", "diffusion_pytorch_model.safetensors"):
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"no {MODEL_FILE} in {path} (expected a checkpoint-<step>/ or export/ folder)")


def load_init_weights(
    model: torch.nn.Module, path: str | Path, params_not_load: Sequence[str] | None = None, strict: bool = True
) -> dict[str, list[str]]:
    """Stage hand-off: load weights only (fresh optimizer/schedule/step) from a checkpoint or export.

    Keys matching ``params_not_load`` are dropped first (official 1.5B -> 7B); the remaining keys must
    then cover the model exactly, except for the dropped names (strict by default, as the official
    strict load). Dtypes are cast to the model's.
    """
    sd = load_file(str(_weights_file(Path(path))))
    dropped = [k for k in sd if name_matches(k, params_not_load)]
    for k in dropped:
        del sd[k]
    own = model.state_dict()
    sd = {k: v.to(own[k].dtype) if k in own else v for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not name_matches(k, params_not_load)]
    if strict and (missing or unexpected):
        raise KeyError(f"init_from {path}: missing {missing[:10]} ({len(missing)}), unexpected {unexpected[:10]} ({len(unexpected)})")
    return {"dropped": dropped, "missing": list(missing), "unexpected": list(unexpected)}


def export_model(accelerator, model, export_dir: str | Path) -> Path | None:
    """HF-style ``save_pretrained`` export of the unwrapped model (collective; atomic replace).

    The weights are the gathered full state dict (correct under ZeRO-3 / FSDP too), overwriting what
    ``save_pretrained`` wrote from the possibly partitioned module.
    """
    export_dir = Path(export_dir)
    state = full_state_dict(accelerator, model)
    if accelerator.is_main_process:
        tmp = export_dir.with_name(f".tmp-{export_dir.name}")
        if tmp.exists():
            shutil.rmtree(tmp)
        unwrapped = accelerator.unwrap_model(model)
        # PyTorchModelHubMixin.save_pretrained writes config.json + README, then calls _save_pretrained
        # for the weights: route that to the gathered state (the module itself may be partitioned or
        # flattened by DeepSpeed, which safetensors' save_model refuses).
        unwrapped._save_pretrained = lambda d: save_state_dict(state, Path(d) / MODEL_FILE)
        try:
            unwrapped.save_pretrained(str(tmp))
        finally:
            del unwrapped._save_pretrained
        old = export_dir.with_name(f".old-{export_dir.name}")
        if export_dir.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(export_dir, old)
        os.replace(tmp, export_dir)
        if old.exists():
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return export_dir if accelerator.is_main_process else None
