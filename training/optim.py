"""Freezing, parameter groups, AdamW and learning-rate schedules (spec: training §10).

Parameter selection is by **name pattern**, as in the released recipes: a plain string matches any
parameter whose name *contains* it (official semantics); a string starting with ``re:`` is a regular
expression searched in the name (used where a substring would be ambiguous, e.g. ``re:^time_embed\\.``
must not also hit ``time_embed_proj``).

Design decision (quirk 2): the official stage-2 optimizer has no group for ``time_embed.*``, so the
timestep MLP silently never updates after stage 1. We reproduce that *explicitly*: stage-2 configs list
``re:^time_embed\\.`` in ``frozen_params``, and ``build_optimizer`` refuses trainable parameters that
match no group instead of dropping them silently.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

__all__ = [
    "name_matches",
    "freeze_params",
    "trainable_summary",
    "param_groups",
    "build_optimizer",
    "lr_lambda",
    "build_scheduler",
    "group_lrs",
]


def name_matches(name: str, patterns: Iterable[str] | None) -> bool:
    """True if ``name`` contains any plain pattern or matches any ``re:`` pattern."""
    for p in patterns or ():
        if p.startswith("re:"):
            if re.search(p[3:], name):
                return True
        elif p in name:
            return True
    return False


def freeze_params(model: nn.Module, patterns: Sequence[str] | None) -> list[str]:
    """``requires_grad=False`` for every parameter matching a pattern; returns the frozen names.

    A pattern that matches nothing is an error: a typo would otherwise train a module meant frozen.
    """
    patterns = list(patterns or [])
    frozen: list[str] = []
    used = set()
    for name, p in model.named_parameters():
        hits = [pat for pat in patterns if name_matches(name, [pat])]
        if hits:
            p.requires_grad_(False)
            frozen.append(name)
            used.update(hits)
    unused = [p for p in patterns if p not in used]
    if unused:
        raise ValueError(f"frozen_params patterns match no parameter: {unused}")
    return frozen


def trainable_summary(model: nn.Module) -> dict[str, int]:
    """Counts of trainable / frozen parameters (numel), for the start-of-run log line."""
    t = sum(p.numel() for p in model.parameters() if p.requires_grad)
    f = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {"trainable": t, "frozen": f}


def param_groups(
    model: nn.Module, groups: Sequence[Mapping[str, Any]] | None, default_lr: float
) -> list[dict[str, Any]]:
    """Split trainable parameters into optimizer groups.

    ``groups``: list of ``{name, patterns, lr}``; a parameter goes to the *first* group that matches.
    None/empty -> one group with every trainable parameter at ``default_lr`` (stage 1, VIST).
    Trainable parameters matching no group raise (see module docstring); empty groups are dropped
    (official 2a has all three learning rates equal, so dropping is harmless there too).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not groups:
        return [{"name": "all", "params": [p for _, p in named], "lr": float(default_lr)}]
    out = [{"name": str(g["name"]), "params": [], "lr": float(g.get("lr", default_lr)), "_names": []} for g in groups]
    orphans = []
    for n, p in named:
        for g, spec in zip(out, groups):
            if name_matches(n, spec["patterns"]):
                g["params"].append(p)
                g["_names"].append(n)
                break
        else:
            orphans.append(n)
    if orphans:
        raise ValueError(
            f"{len(orphans)} trainable parameters match no optimizer group (e.g. {orphans[:5]}); "
            "add them to a group or to frozen_params"
        )
    for g in out:
        g.pop("_names")
    return [g for g in out if g["params"]]


def build_optimizer(model: nn.Module, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """AdamW over ``param_groups``; cfg keys: lr, betas, eps, weight_decay, groups (official defaults)."""
    groups = param_groups(model, cfg.get("groups"), cfg["lr"])
    if not groups:
        raise ValueError("no trainable parameters: everything is frozen")
    return torch.optim.AdamW(
        groups,
        lr=float(cfg["lr"]),
        betas=tuple(cfg.get("betas", (0.9, 0.999))),
        eps=float(cfg.get("eps", 1e-8)),
        weight_decay=float(cfg.get("weight_decay", 0.0)),
    )


def lr_lambda(name: str, warmup_steps: int, total_steps: int, decay_steps: int = 0):
    """Multiplicative LR factor per optimizer step (diffusers-style, spec §10.3).

    constant: 1; constant_with_warmup: linear 0->1 over warm-up then 1; cosine: warm-up then half
    cosine to 0 at ``total_steps``; warmup_stable_decay: warm-up, 1, then linear to 0 over the last
    ``decay_steps`` (the full rate for as long as possible, and still a decayed end point).
    """
    w = int(warmup_steps)

    def warm(step: int) -> float:
        return step / max(1, w)

    if name == "constant":
        return lambda step: 1.0
    if name == "constant_with_warmup":
        return lambda step: warm(step) if step < w else 1.0
    if name == "cosine":

        def f(step: int) -> float:
            if step < w:
                return warm(step)
            p = (step - w) / max(1, total_steps - w)
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * p)))

        return f
    if name == "warmup_stable_decay":
        d = int(decay_steps)
        if d <= 0:
            raise ValueError(f"warmup_stable_decay needs decay steps > 0 (got {d}; decay_ratio x max_train_steps)")

        def wsd(step: int) -> float:  # a run shorter than warm-up + decay gets the lower of the two ramps
            return max(0.0, min(1.0, warm(step) if step < w else 1.0, (total_steps - step) / d))

        return wsd
    raise ValueError(f"unknown lr scheduler '{name}' (constant, constant_with_warmup, cosine, warmup_stable_decay)")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any], total_steps: int) -> LambdaLR:
    """LambdaLR stepped once per optimizer step. Warm-up: ``warmup_steps`` or ``warmup_ratio`` x total;
    the decay of ``warmup_stable_decay``: ``decay_ratio`` x total (default 0.2)."""
    warmup = cfg.get("warmup_steps")
    if warmup is None:
        warmup = int(math.floor(float(cfg.get("warmup_ratio", 0.0)) * total_steps))
    decay = max(1, int(math.floor(float(cfg.get("decay_ratio", 0.2)) * total_steps)))
    return LambdaLR(optimizer, lr_lambda(str(cfg.get("name", "constant")), int(warmup), int(total_steps), decay))


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """``lr`` or ``lr_<group>`` per group, for logging."""
    groups = optimizer.param_groups
    if len(groups) == 1:
        return {"lr": float(groups[0]["lr"])}
    return {f"lr_{g.get('name', i)}": float(g["lr"]) for i, g in enumerate(groups)}
