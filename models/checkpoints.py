"""Checkpoint I/O: official Show-o2 releases, the project's own format, and backbone initialisation.

Official layout (spec §8): `config.json` (diffusers ConfigMixin) plus `pytorch_model.bin`, or shards
`pytorch_model-0000k-of-0000n.bin` with an index named `diffusion_pytorch_model.bin.index.json` (official) or
`pytorch_model.bin.index.json`, or safetensors (single / sharded). Pickles are read with `weights_only=True`.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file as st_load
from safetensors.torch import save_file as st_save

from .config import Showo2Config
from .showo2 import Showo2Model

INDEX_NAMES = ("diffusion_pytorch_model.bin.index.json", "pytorch_model.bin.index.json",
               "model.safetensors.index.json", "pytorch_model.safetensors.index.json",
               "diffusion_pytorch_model.safetensors.index.json")
SINGLE_NAMES = ("pytorch_model.bin", "diffusion_pytorch_model.bin", "model.safetensors",
                "pytorch_model.safetensors", "diffusion_pytorch_model.safetensors")
LM_HEAD, EMBED = "showo.lm_head.weight", "showo.model.embed_tokens.weight"


class CheckpointKeyError(KeyError):
    """Missing / unexpected / mis-shaped keys; the message lists them."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


# ---------------------------------------------------------------------------------------------------------
# locating and reading files

def resolve_path(path_or_hub_id: str | os.PathLike, revision: str | None = None, cache_dir: str | None = None,
                 local_files_only: bool | None = None, token: str | None = None) -> Path:
    """A local folder as is; otherwise a Hub snapshot (cache only when offline or `local_files_only`)."""
    p = Path(path_or_hub_id)
    if p.is_dir():
        return p
    if p.exists():
        raise ValueError(f"{p} is a file; pass the checkpoint folder")
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(str(path_or_hub_id))
    except HFValidationError:  # e.g. a relative path with two slashes: say what is missing, not how ids look
        raise FileNotFoundError(f"no such folder {p.resolve()} (and {str(path_or_hub_id)!r} is not a Hub id)") from None
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    return Path(snapshot_download(str(path_or_hub_id), revision=revision, cache_dir=cache_dir,
                                  local_files_only=local_files_only, token=token,
                                  allow_patterns=["*.json", "*.bin", "*.safetensors"]))


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return st_load(str(path), device="cpu")
    return torch.load(str(path), map_location="cpu", weights_only=True)


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint folder, in load order."""
    for name in INDEX_NAMES:
        idx = folder / name
        if idx.exists():
            with open(idx) as f:
                wm = json.load(f)["weight_map"]
            return [folder / s for s in sorted(set(wm.values()))]
    for name in SINGLE_NAMES:
        if (folder / name).exists():
            return [folder / name]
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise FileNotFoundError(f"no weights (*.bin / *.safetensors) in {folder}")
    return files


def read_state_dict(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Merge every weight file of a checkpoint folder into one flat state dict (CPU)."""
    sd: dict[str, torch.Tensor] = {}
    for f in weight_files(Path(folder)):
        part = _load_file(f)
        dup = set(sd) & set(part)
        if dup:
            raise CheckpointKeyError(f"keys stored in more than one shard: {sorted(dup)[:10]}")
        sd.update(part)
    return sd


def read_config(folder: str | os.PathLike, **overrides) -> Showo2Config:
    """config.json of an official release or of the project format ({"config": {...}})."""
    with open(Path(folder) / "config.json") as f:
        d = json.load(f)
    if set(d) == {"config"}:   # PyTorchModelHubMixin layout
        d = d["config"]
    d.update(overrides)
    return Showo2Config.from_dict(d)


# ---------------------------------------------------------------------------------------------------------
# loading into a model

def _report(missing: Iterable[str], unexpected: Iterable[str], shapes: Iterable[str]) -> str:
    parts = []
    for title, keys in (("missing", sorted(missing)), ("unexpected", sorted(unexpected)),
                        ("shape mismatch", sorted(shapes))):
        if keys:
            more = f" ... (+{len(keys) - 20} more)" if len(keys) > 20 else ""
            parts.append(f"{len(keys)} {title} key(s): {', '.join(keys[:20])}{more}")
    return "; ".join(parts)


def load_state_dict_into(model: Showo2Model, sd: dict[str, torch.Tensor], strict: bool = True,
                         dtype: torch.dtype | None = torch.float32, assign: bool = False) -> None:
    """Load an official-key state dict. The tied lm_head may be absent (tied) or present (must be equal)."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    tied = model.showo.config.tie_word_embeddings
    sd = dict(sd)
    if tied and LM_HEAD in sd:
        if EMBED not in sd:   # writers that de-duplicate shared tensors may keep only the head
            sd[EMBED] = sd[LM_HEAD]
        elif not torch.equal(sd[LM_HEAD], sd[EMBED]):
            raise CheckpointKeyError(f"{LM_HEAD} differs from {EMBED} but the model ties them")
        sd.pop(LM_HEAD)
    optional = {LM_HEAD} if tied else set()
    missing = set(expected) - set(sd) - optional
    unexpected = set(sd) - set(expected)
    shapes = {f"{k} {tuple(sd[k].shape)} vs {tuple(expected[k])}" for k in set(sd) & set(expected)
              if tuple(sd[k].shape) != tuple(expected[k])}
    if shapes or (strict and (missing or unexpected)):
        raise CheckpointKeyError("checkpoint does not match the model: " + _report(missing, unexpected, shapes))
    if dtype is not None:
        sd = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}
    for k in unexpected:
        sd.pop(k)
    model.load_state_dict(sd, strict=False, assign=assign)
    model.tie_weights()


def build_empty(config: Showo2Config) -> Showo2Model:
    """Model with parameters on the meta device (no memory, no init) for assign-style loading."""
    with torch.device("meta"):
        return Showo2Model(config)


def materialize(model: Showo2Model, device: torch.device | str = "cpu") -> Showo2Model:
    """After assign-loading: move to `device` and rebuild the non-persistent buffers (RoPE tables)."""
    meta = [n for n, p in model.named_parameters() if p.is_meta]
    if meta:
        raise CheckpointKeyError(f"parameters never loaded: {meta[:20]}")
    for mod in model.modules():
        for name, buf in list(mod._buffers.items()):
            if buf is not None and buf.is_meta:
                mod._buffers[name] = torch.zeros(buf.shape, dtype=torch.float32, device=device)
    model.to(device)
    model._refresh_rope()
    return model


def load_official_checkpoint(path_or_hub_id: str | os.PathLike, config: Showo2Config | None = None,
                             dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                             strict: bool = True, revision: str | None = None, local_files_only: bool | None = None,
                             token: str | None = None, **config_overrides) -> Showo2Model:
    """Official (or project-format) checkpoint folder / Hub id -> Showo2Model in `dtype` on `device`, eval mode.

    Like the reference loader, floating tensors are cast to `dtype` (default fp32) before any user cast.
    `config_overrides` (e.g. rope_bf16_parity=True) are applied on top of the stored config.
    """
    folder = resolve_path(path_or_hub_id, revision=revision, local_files_only=local_files_only, token=token)
    cfg = config if config is not None else read_config(folder, **config_overrides)
    sd = read_state_dict(folder)
    model = build_empty(cfg)
    load_state_dict_into(model, sd, strict=strict, dtype=dtype, assign=True)
    return materialize(model, device).eval()


# ---------------------------------------------------------------------------------------------------------
# writing

def _parse_size(size: int | str | None) -> int | None:
    if size is None or isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)\s*", size, re.I)
    if not m:
        raise ValueError(f"bad shard size {size!r}")
    unit = m.group(2).upper()
    mult = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return int(float(m.group(1)) * mult)


def _shards(sd: dict[str, torch.Tensor], max_bytes: int | None) -> list[dict[str, torch.Tensor]]:
    if max_bytes is None:
        return [sd]
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in sd.items():
        nb = v.numel() * v.element_size()
        if shards[-1] and size + nb > max_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nb
    return shards


def save_official_format(model: Showo2Model, folder: str | os.PathLike, max_shard_size: int | str | None = None,
                         safe_serialization: bool = False, index_name: str | None = None,
                         dtype: torch.dtype | None = None) -> Path:
    """Write the release layout: official config.json + weights with every key (both tied keys).

    `.bin` single `pytorch_model.bin`, or shards `pytorch_model-0000k-of-0000n.bin` + index
    `diffusion_pytorch_model.bin.index.json` (the name the official loader looks for);
    safetensors: `pytorch_model.safetensors` or shards `.safetensors` + `pytorch_model.safetensors.index.json`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(folder / "config.json", official=True)
    sd = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    if dtype is not None:
        sd = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}
    if safe_serialization:   # safetensors refuses aliased tensors; the tied pair is written twice
        sd = {k: v.clone().contiguous() for k, v in sd.items()}
    ext = "safetensors" if safe_serialization else "bin"
    shards = _shards(sd, _parse_size(max_shard_size))
    if len(shards) == 1:
        name = f"pytorch_model.{ext}"
        (st_save(shards[0], str(folder / name)) if safe_serialization else torch.save(shards[0], folder / name))
        return folder
    n = len(shards)
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"pytorch_model-{i:05d}-of-{n:05d}.{ext}"
        st_save(shard, str(folder / name)) if safe_serialization else torch.save(shard, folder / name)
        weight_map.update({k: name for k in shard})
    if index_name is None:
        index_name = "pytorch_model.safetensors.index.json" if safe_serialization else \
            "diffusion_pytorch_model.bin.index.json"
    total = sum(v.numel() * v.element_size() for v in sd.values())
    with open(folder / index_name, "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return folder


# ---------------------------------------------------------------------------------------------------------
# training initialisation from the backbones

def _strip(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def from_pretrained_backbones(config: Showo2Config, qwen_path: str | os.PathLike, siglip_path: str | os.PathLike,
                              semantic_layers_path: str | os.PathLike | None = None,
                              dtype: torch.dtype = torch.float32) -> Showo2Model:
    """A fresh Show-o2 for training: Qwen2.5 LLM weights and SigLIP position table + encoder layers from local
    folders (HF layout), vocabulary shrunk/grown to `llm_vocab_size` (first rows kept, like the official resize).

    `semantic_layers_path`: a pre-distilled file (safetensors / bin) with keys `und_trans.*` and optionally
    `position_embedding.weight` (or `layers.*` / `vision_model.encoder.layers.*`); loaded strictly: every
    expected `und_trans` key must be consumed and nothing may be left over.
    """
    model = Showo2Model(config).to(dtype)
    v = config.llm_vocab_size
    # --- Qwen ---
    qsd = read_state_dict(Path(qwen_path))
    qsd = {k: t.to(dtype) if t.is_floating_point() else t for k, t in qsd.items()}
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        if key in qsd:
            w = qsd[key]
            if w.shape[0] >= v:
                qsd[key] = w[:v].clone()
            else:   # growing: new rows keep the model's fresh init
                fresh = model.showo.state_dict()[key].clone()
                fresh[: w.shape[0]] = w
                qsd[key] = fresh
    res = model.showo.load_state_dict(qsd, strict=False)
    missing = [k for k in res.missing_keys if not (k == "lm_head.weight" and model.showo.config.tie_word_embeddings)]
    if missing or res.unexpected_keys:
        raise CheckpointKeyError("Qwen checkpoint mismatch: " + _report(missing, res.unexpected_keys, []))
    model.tie_weights()
    # --- SigLIP ---
    ssd = read_state_dict(Path(siglip_path))
    vis = _strip(ssd, "vision_model.") or _strip(ssd, "siglip.vision_model.")
    if not vis and "embeddings.position_embedding.weight" in ssd:   # a bare SiglipVisionModel / transformer
        vis = ssd
    if not vis:
        raise CheckpointKeyError(f"no vision_model.* keys in {siglip_path}")
    with torch.no_grad():
        model.position_embedding.weight.copy_(vis["embeddings.position_embedding.weight"])
    enc = _strip(vis, "encoder.")
    n_keep = config.num_semantic_layers
    enc = {k: t for k, t in enc.items() if int(k.split(".")[1]) < n_keep}
    res = model.und_trans.load_state_dict(enc, strict=True)
    if semantic_layers_path is not None:
        load_semantic_layers(model, semantic_layers_path)
    return model


SEMANTIC_PREFIXES = ("image_embedder_und.", "position_embedding.", "und_trans.")


def load_semantic_layers(model: Showo2Model, path: str | os.PathLike) -> list[str]:
    """Strictly load a (pre-)distilled semantic-layer file; returns the loaded keys.

    The official / distilled layout holds `image_embedder_und.*`, `position_embedding.weight` and `und_trans.*`
    (spec §8.1); then all three groups must be complete. An encoder-only file (`und_trans.*`, or HF SigLIP
    `vision_model.encoder.*` / `encoder.*`) fills `und_trans` only. Anything else is an error naming the keys
    (the official non-strict load would silently load nothing on a name mismatch).
    """
    sd = _load_file(Path(path))
    if isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    for prefix in ("vision_model.encoder.", "encoder."):   # HF SigLIP encoder naming
        if any(k.startswith(prefix) for k in sd):
            sd = {("und_trans." + k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}
    own = model.state_dict()
    full = any(k.startswith(SEMANTIC_PREFIXES[:2]) for k in sd)
    wanted = SEMANTIC_PREFIXES if full else ("und_trans.",)
    expected = {k for k in own if k.startswith(wanted)}
    missing, unexpected = expected - set(sd), set(sd) - expected
    shapes = {k for k in expected & set(sd) if tuple(sd[k].shape) != tuple(own[k].shape)}
    if missing or unexpected or shapes:
        raise CheckpointKeyError(f"semantic layers file {path}: " + _report(missing, unexpected, shapes))
    with torch.no_grad():
        for k in sorted(expected):
            own[k].copy_(sd[k].to(own[k].dtype))
    return sorted(expected)
