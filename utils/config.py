"""Config loading for every entry point: ``python X.py config=path.yaml a.b=value ...``.

The YAML file is merged with the command-line dot-list. Overrides may only target keys that exist
(a typo must fail loudly, naming the key); ``+a.b=value`` adds a new key on purpose. A YAML file may
inherit from others with ``_base_: other.yaml`` (or a list), resolved relative to the file.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

__all__ = ["ConfigError", "load_config", "load_yaml", "parse_cli", "all_keys", "to_plain", "save_config"]


class ConfigError(ValueError):
    """A config problem that the user can fix (unknown key, bad file, bad value)."""


def load_yaml(path: str | Path) -> DictConfig:
    """Load a YAML config, resolving ``_base_`` inheritance (bases first, the file on top)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    bases = cfg.pop("_base_", None)
    if bases is None:
        return cfg
    if isinstance(bases, str):
        bases = [bases]
    merged = OmegaConf.create()
    for base in bases:
        merged = OmegaConf.merge(merged, load_yaml((path.parent / base).resolve()))
    return OmegaConf.merge(merged, cfg)


def all_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Every dotted key path of a config (leaves and inner nodes)."""
    keys: list[str] = []
    if isinstance(cfg, DictConfig | Mapping):
        items = cfg.items_ex(resolve=False) if isinstance(cfg, DictConfig) else cfg.items()
        for k, v in items:
            full = f"{prefix}.{k}" if prefix else str(k)
            keys.append(full)
            keys.extend(all_keys(v, full))
    return keys


def _check_key_exists(cfg: DictConfig, dotted: str) -> None:
    node: Any = cfg
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, ListConfig):
            if part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
        elif isinstance(node, DictConfig) and part in node:
            node = node._get_node(part)  # no interpolation resolution needed for a key check
            continue
        known = all_keys(cfg)
        close = difflib.get_close_matches(dotted, known, n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        where = ".".join(parts[: i + 1])
        raise ConfigError(
            f"unknown config key '{dotted}' ('{where}' does not exist).{hint} "
            f"Use '+{dotted}=...' to add a new key on purpose."
        )


def parse_cli(argv: Sequence[str]) -> tuple[str | None, list[str], list[str]]:
    """Split ``argv`` into (config path, overrides of existing keys, additions with '+')."""
    config_path = None
    overrides: list[str] = []
    additions: list[str] = []
    for arg in argv:
        if "=" not in arg:
            raise ConfigError(f"expected key=value, got '{arg}' (try --help)")
        key, _, _ = arg.partition("=")
        if key == "config":
            config_path = arg.split("=", 1)[1]
        elif key.startswith("+"):
            additions.append(arg[1:])
        else:
            overrides.append(arg)
    return config_path, overrides, additions


def load_config(
    argv: Sequence[str] | None = None,
    default_config: str | Path | Mapping | None = None,
    usage: str | None = None,
) -> DictConfig:
    """Build the run config from ``argv`` (default ``sys.argv[1:]``).

    ``default_config`` is used when no ``config=`` is given (a YAML path or a mapping). ``--help``
    prints ``usage`` and the available keys, then exits.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        base = None
        try:
            base = _base_config(None, default_config)
        except ConfigError:
            pass
        print((usage or "usage: python SCRIPT.py [config=path.yaml] [key=value ...] [+new.key=value ...]").rstrip())
        if base is not None:
            print("\nconfiguration (defaults; override any key with key=value):\n")
            print(OmegaConf.to_yaml(base, resolve=False))
        raise SystemExit(0)
    config_path, overrides, additions = parse_cli(argv)
    cfg = _base_config(config_path, default_config)
    for item in overrides:
        _check_key_exists(cfg, item.split("=", 1)[0])
    # one update per item (not a merge of the whole dot-list) so list entries (`a.0.b=1`) can be overridden
    for item, force_add in [(o, False) for o in overrides] + [(a, True) for a in additions]:
        key, _, raw = item.partition("=")
        try:
            value = OmegaConf.from_dotlist([f"v={raw}"])["v"]   # YAML typing: 4 -> int, 1e-4 -> float, ...
            OmegaConf.update(cfg, key, value, merge=True, force_add=force_add)
        except (ConfigAttributeError, ConfigKeyError, TypeError, ValueError) as e:
            raise ConfigError(f"cannot set '{key}' to {raw!r}: {e}") from e
    return cfg


def _base_config(config_path: str | None, default_config: str | Path | Mapping | None) -> DictConfig:
    if config_path is not None:
        return load_yaml(config_path)
    if default_config is None:
        return OmegaConf.create()
    if isinstance(default_config, Mapping | DictConfig):
        return OmegaConf.create(dict(default_config)) if not isinstance(default_config, DictConfig) else default_config
    return load_yaml(default_config)


def to_plain(cfg: DictConfig) -> dict:
    """Resolved plain-dict copy (for JSON records and trackers)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def save_config(cfg: DictConfig, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(OmegaConf.to_yaml(cfg, resolve=True))
