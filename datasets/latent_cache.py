"""On-disk cache of Wan2.1 VAE posteriors: format, writer and reader.

Encoding a dataset once (``scripts/cache_latents.py``) removes the VAE from every training step. The cache keeps
the **normalised posterior mean and the raw log-variance** of every sample, so training can still draw the
stochastic sample per step exactly like the official trainer (and like ``WanVAE.encode``):
``z = latent_mean + exp(0.5 * clamp(latent_logvar, -30, 20)) * eps`` (``models.vae.sample_from_posterior``).

Layout of a cache directory::

    meta.json                    format/version, VAE identity (source, fingerprint, dtype), resolution, frames,
                                 storage dtype, shard size, annotation file + sha256, what is stored
    shard-00000.safetensors      tensors ``latent_mean`` and ``latent_logvar``, each (N, 16, [T,] h, w), stacked;
                                 header metadata ``keys`` (JSON list of the N sample keys, row order)
    shards.jsonl                 one line per COMPLETED shard: {"shard", "file", "rows", "bad", "records": [a, b)}
    index.jsonl                  one line per cached sample: {"id", "key", "shard", "row", "shape", "caption",
                                 "source", "kind", "dtype", "vae", "resolution", "stored"}
    bad.jsonl                    one line per skipped sample: {"id", "key", "shard", "reason", "error"}

Shard ``i`` covers annotation records ``[i*S, (i+1)*S)`` (S = shard size), so a rerun knows what is done. A shard is
written under a ``.tmp`` name and renamed, then its index/bad lines are appended, then its ``shards.jsonl`` line:
only shards listed in ``shards.jsonl`` count, and stray lines of unfinished shards are dropped on resume.
Sample keys are the ``path`` strings of the annotation (what ``datasets.base.read_latent`` looks up).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["FORMAT", "VERSION", "LatentCache", "LatentCacheWriter", "CacheMismatchError", "shard_name"]

FORMAT = "showo2-latent-cache"
VERSION = 1
STORED = "posterior_mean_logvar"  # normalised posterior mean + raw clamped log-variance
_FREE_KEYS = ("created", "annotation", "vae")  # may differ on resume (paths); the VAE is compared by fingerprint
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CacheMismatchError(ValueError):
    """An existing cache was made with different settings (VAE, resolution, annotation, ...)."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Lines of a jsonl file; a torn last line (crash mid-write) is ignored."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _append_lines(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    if not rows:
        return
    with open(path, "a") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _completed(root: Path) -> dict[int, dict[str, Any]]:
    """Completed shards from ``shards.jsonl`` (a shard whose samples were all bad has ``file: null``)."""
    out = {}
    for r in _read_jsonl(root / "shards.jsonl"):
        if r.get("file") is None or (root / r["file"]).is_file():
            out[int(r["shard"])] = r
    return out


# ----------------------------------------------------------------------------------------------------------------
# writer
# ----------------------------------------------------------------------------------------------------------------
class LatentCacheWriter:
    """Creates or resumes a cache directory and writes whole shards atomically.

    Args:
        root: cache directory.
        meta: settings that define the cache (``vae`` identity dict, ``resolution``, ``num_frames``, ``kind``,
            ``dtype`` storage name, ``shard_size``, ``annotation_sha256``, ...). On resume they must equal the
            stored ones (else :class:`CacheMismatchError`), unless ``overwrite`` wipes the old cache.
    """

    def __init__(self, root: str | Path, meta: Mapping[str, Any], *, overwrite: bool = False) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "version": VERSION, "stored": STORED, **dict(meta)}
        if meta.get("dtype", "float32") not in _DTYPES:
            raise ValueError(f"storage dtype must be one of {sorted(_DTYPES)}, got {meta.get('dtype')!r}")
        meta.setdefault("dtype", "float32")
        meta_path = self.root / "meta.json"
        if overwrite:
            self._wipe()
        elif meta_path.is_file():
            old = json.loads(meta_path.read_text())
            diff = {k: (old.get(k), v) for k, v in meta.items() if k not in _FREE_KEYS and old.get(k) != v}
            old_vae, new_vae = old.get("vae") or {}, meta.get("vae") or {}
            for k in ("fingerprint", "dtype"):  # the weights matter, not the path they were loaded from
                if old_vae.get(k) != new_vae.get(k):
                    diff[f"vae.{k}"] = (old_vae.get(k), new_vae.get(k))
            if diff:
                lines = "; ".join(f"{k}: cached {a!r} vs now {b!r}" for k, (a, b) in diff.items())
                raise CacheMismatchError(
                    f"{self.root} holds a cache made with other settings ({lines}); use a new directory or overwrite"
                )
            meta = old
        self.meta = meta
        _write_atomic(meta_path, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        self._repair()

    def _wipe(self) -> None:
        for p in self.root.iterdir():
            if p.name in ("meta.json", "shards.jsonl", "index.jsonl", "bad.jsonl") or p.name.startswith("shard-"):
                p.unlink()

    def _repair(self) -> None:
        """Drop index/bad lines and temp files left by a shard that did not finish (crash or kill)."""
        for name in ("shards.jsonl", "index.jsonl", "bad.jsonl"):  # shards.jsonl first: it defines 'done'
            path = self.root / name
            if not path.is_file():
                continue
            rows = _read_jsonl(path)
            text = path.read_text()
            done = self.completed_shards()
            keep = rows if name == "shards.jsonl" else [r for r in rows if r.get("shard") in done]
            torn = bool(text) and not text.endswith("\n")  # a later append must not glue onto a torn line
            if len(keep) != len(rows) or torn or len(rows) != sum(1 for ln in text.splitlines() if ln.strip()):
                _write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep))
        for p in self.root.glob("shard-*.tmp"):
            p.unlink()

    def completed_shards(self) -> set[int]:
        """Indices of shards whose file and index lines are complete."""
        return set(_completed(self.root))

    @property
    def storage_dtype(self) -> torch.dtype:
        return _DTYPES[self.meta["dtype"]]

    def write_shard(
        self,
        shard: int,
        entries: Sequence[Mapping[str, Any]],
        latent_mean: torch.Tensor | None,
        latent_logvar: torch.Tensor | None,
        *,
        bad: Sequence[Mapping[str, Any]] = (),
        records: tuple[int, int] | None = None,
    ) -> None:
        """Write shard ``shard``: ``entries[i]`` describes row ``i`` of ``latent_mean``/``latent_logvar``
        ((N, 16, [T,] h, w), any float dtype, stored in the cache dtype). Each entry needs ``key``; ``id``,
        ``caption``, ``source``, ``kind`` are recorded when given. ``bad`` lists skipped samples
        (``{"id", "key", "reason", "error"}``). A shard with no good rows is recorded without a file."""
        from safetensors.torch import save_file

        n = len(entries)
        if n and (latent_mean is None or latent_logvar is None or latent_mean.shape[0] != n
                  or latent_logvar.shape != latent_mean.shape):
            raise ValueError(f"shard {shard}: {n} entries but tensors of shape "
                             f"{None if latent_mean is None else tuple(latent_mean.shape)} / "
                             f"{None if latent_logvar is None else tuple(latent_logvar.shape)}")
        name = shard_name(shard)
        if n:
            keys = [str(e["key"]) for e in entries]
            tensors = {
                "latent_mean": latent_mean.detach().to("cpu", self.storage_dtype).contiguous(),
                "latent_logvar": latent_logvar.detach().to("cpu", self.storage_dtype).contiguous(),
            }
            meta = {"format": FORMAT, "version": str(VERSION), "shard": str(shard), "keys": json.dumps(keys)}
            tmp = self.root / (name + ".tmp")
            save_file(tensors, str(tmp), metadata=meta)
            tmp.replace(self.root / name)  # a half-written shard never carries the real name
        shape = list(latent_mean.shape[1:]) if n else None
        vae_fp = (self.meta.get("vae") or {}).get("fingerprint")
        index_rows = [
            {
                "id": e.get("id"),
                "key": str(e["key"]),
                "shard": shard,
                "row": row,
                "shape": shape,
                "caption": e.get("caption"),
                "source": e.get("source"),
                "kind": e.get("kind", self.meta.get("kind")),
                "dtype": self.meta["dtype"],
                "vae": vae_fp,
                "resolution": self.meta.get("resolution"),
                "stored": STORED,
            }
            for row, e in enumerate(entries)
        ]
        _append_lines(self.root / "index.jsonl", index_rows)
        _append_lines(self.root / "bad.jsonl", [{**dict(b), "shard": shard} for b in bad])
        _append_lines(
            self.root / "shards.jsonl",
            [{"shard": shard, "file": name if n else None, "rows": n, "bad": len(bad),
              "records": list(records) if records is not None else None}],
        )

    def __repr__(self) -> str:
        return f"LatentCacheWriter({str(self.root)!r}, shards_done={len(self.completed_shards())})"


# ----------------------------------------------------------------------------------------------------------------
# reader
# ----------------------------------------------------------------------------------------------------------------
class LatentCache:
    """Read a latent cache. ``cache[i]`` (position) or ``cache[key]`` / ``cache.get(key)`` (annotation path) ->

    ``{"latent_mean": (16, [T,] h, w) float32, "latent_logvar": same, "latent": latent_mean, "caption", "key",
    "source", "id", "kind"}``. ``latent`` is the deterministic latent (``encode(sample=False)``) for callers that
    want one tensor; training should draw per step with :meth:`sample` / ``models.vae.sample_from_posterior``.
    Rows are read lazily (one row per access, memory-mapped) and shard handles reopened after a fork.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.root} is not a latent cache (no meta.json)")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{self.root}: unknown cache format {self.meta.get('format')!r}")
        if int(self.meta.get("version", 0)) > VERSION:
            raise ValueError(f"{self.root}: cache version {self.meta['version']} is newer than this reader ({VERSION})")
        self.shards = _completed(self.root)
        self.entries: list[dict[str, Any]] = [
            r for r in _read_jsonl(self.root / "index.jsonl") if r.get("shard") in self.shards
        ]
        self.entries.sort(key=lambda r: (r["shard"], r["row"]))
        self._by_key = {r["key"]: i for i, r in enumerate(self.entries)}
        # loaders name media relative to different roots (jsonl path vs LLaVA `image`): the absolute source
        # path recorded at caching time is an alias that every loader can compute
        for i, r in enumerate(self.entries):
            if r.get("source"):
                self._by_key.setdefault(os.path.abspath(r["source"]), i)
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()

    # -------------------------------------------------------------- basics
    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def keys(self) -> list[str]:
        return [r["key"] for r in self.entries]

    @property
    def vae_identity(self) -> dict[str, Any]:
        return dict(self.meta.get("vae") or {})

    @property
    def bad(self) -> list[dict[str, Any]]:
        """Samples skipped while caching (with reasons)."""
        return [r for r in _read_jsonl(self.root / "bad.jsonl") if r.get("shard") in self.shards]

    def check_vae(self, vae: Any) -> None:
        """Raise :class:`CacheMismatchError` unless ``vae`` (a ``WanVAE``) made this cache."""
        want = self.vae_identity.get("fingerprint")
        got = vae.fingerprint()
        if want != got:
            raise CacheMismatchError(f"{self.root} was made with VAE {want} ({self.vae_identity.get('source')}), "
                                     f"this VAE is {got} ({getattr(vae, 'source', '?')})")

    # -------------------------------------------------------------- access
    def _handle(self, shard: int):
        from safetensors import safe_open

        if os.getpid() != self._pid:  # forked into a data-loader worker: do not share mmaps across processes
            self._handles, self._pid = {}, os.getpid()
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.root / shard_name(shard)), framework="pt", device="cpu")
        return self._handles[shard]

    def _position(self, item: int | str) -> int:
        if isinstance(item, str):
            if item not in self._by_key:
                raise KeyError(f"{item!r} is not in latent cache {self.root}")
            return self._by_key[item]
        n = len(self.entries)
        if not -n <= item < n:
            raise IndexError(f"index {item} out of range for a cache of {n} samples")
        return item % n

    def __getitem__(self, item: int | str) -> dict[str, Any]:
        e = self.entries[self._position(item)]
        h = self._handle(e["shard"])
        mean = h.get_slice("latent_mean")[e["row"]].float()
        logvar = h.get_slice("latent_logvar")[e["row"]].float()
        return {
            "latent_mean": mean,
            "latent_logvar": logvar,
            "latent": mean,
            "caption": e.get("caption"),
            "key": e["key"],
            "source": e.get("source"),
            "id": e.get("id"),
            "kind": e.get("kind"),
        }

    def get(self, key: str, default: Any = None) -> dict[str, Any] | Any:
        """``cache[key]`` or ``default`` when the key is absent (e.g. the sample was bad when caching)."""
        return self[key] if key in self._by_key else default

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]

    def sample(self, item: int | str | Mapping[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``z`` exactly as ``WanVAE.encode(sample=True)`` would: mean + exp(0.5*logvar) * eps (fp32)."""
        from models.vae import sample_from_posterior

        rec = item if isinstance(item, Mapping) else self[item]
        return sample_from_posterior(rec["latent_mean"], rec["latent_logvar"], generator)

    def load_shard(self, shard: int) -> dict[str, torch.Tensor]:
        """All rows of one shard at once (``latent_mean``, ``latent_logvar`` in the storage dtype)."""
        h = self._handle(shard)
        return {k: h.get_tensor(k) for k in ("latent_mean", "latent_logvar")}

    def __getstate__(self) -> dict[str, Any]:  # picklable for spawn-based data-loader workers
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def __repr__(self) -> str:
        return (f"LatentCache({str(self.root)!r}, samples={len(self)}, shards={len(self.shards)}, "
                f"vae={self.vae_identity.get('fingerprint')}, dtype={self.meta.get('dtype')})")
