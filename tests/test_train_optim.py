"""Freezing, parameter groups, schedules (training/optim.py) on the real tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from models import Showo2Config, Showo2Model
from training.optim import build_optimizer, build_scheduler, freeze_params, lr_lambda, name_matches, param_groups

STAGE2_GROUPS = [
    {"name": "ve", "patterns": ["und_trans", "image_embedder", "position_embedding"], "lr": 2e-6},
    {"name": "proj", "patterns": ["fusion_proj"], "lr": 1e-5},
    {"name": "showo", "patterns": ["showo", "diffusion", "diff_proj", "time_embed_proj"], "lr": 1e-5},
]


@pytest.fixture()
def model() -> Showo2Model:
    torch.manual_seed(0)
    return Showo2Model(Showo2Config.preset("tiny"))


def test_name_patterns_substring_and_regex():
    assert name_matches("time_embed_proj.weight", ["time_embed"])           # official substring semantics
    assert not name_matches("time_embed_proj.weight", [r"re:^time_embed\."])
    assert name_matches("time_embed.mlp.0.weight", [r"re:^time_embed\."])


def test_stage1_freezing_leaves_generation_side_trainable(model):
    frozen = freeze_params(model, ["image_embedder_und", "und_trans", "showo", "position_embedding"])
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"image_embedder_gen", "fusion_proj", "time_embed", "time_embed_proj", "diff_proj",
                         "diffusion_head_a", "diffusion_head_b"}
    assert all(n.startswith(("image_embedder_und", "und_trans", "showo", "position_embedding")) for n in frozen)
    with pytest.raises(ValueError, match="match no parameter"):
        freeze_params(model, ["no_such_module"])


def test_stage2_groups_and_time_embed_frozen_explicitly(model):
    freeze_params(model, [r"re:^time_embed\."])  # quirk 2 made explicit
    groups = param_groups(model, STAGE2_GROUPS, 1e-5)
    names = {g["name"]: g for g in groups}
    assert [g["lr"] for g in groups] == [2e-6, 1e-5, 1e-5]
    ids = {id(p) for g in groups for p in g["params"]}
    by_name = dict(model.named_parameters())
    assert id(by_name["time_embed_proj.weight"]) in {id(p) for p in names["showo"]["params"]}
    assert not any(id(p) in ids for n, p in by_name.items() if n.startswith("time_embed."))
    assert id(by_name["image_embedder_gen.proj.weight"]) in {id(p) for p in names["ve"]["params"]}  # official: both embedders


def test_ungrouped_trainable_parameter_is_an_error(model):
    with pytest.raises(ValueError, match="match no optimizer group"):
        param_groups(model, STAGE2_GROUPS, 1e-5)  # time_embed.* trainable but in no group (official silently drops it)


def test_adamw_defaults(model):
    opt = build_optimizer(model, {"lr": 1e-4})
    g = opt.param_groups[0]
    assert g["betas"] == (0.9, 0.999) and g["eps"] == 1e-8 and g["weight_decay"] == 0.0


def test_schedules():
    f = lr_lambda("constant_with_warmup", 2000, 150000)
    assert f(0) == 0 and f(1000) == 0.5 and f(2000) == 1 and f(10**6) == 1
    total = 1000
    warm = math.floor(0.03 * total)
    c = lr_lambda("cosine", warm, total)
    assert c(warm // 2) == pytest.approx(0.5, abs=0.04) and c(warm) == 1.0
    assert c((warm + total) // 2) == pytest.approx(0.5, abs=1e-2) and c(total) == pytest.approx(0.0, abs=1e-12)
    assert lr_lambda("constant", 0, 10)(5) == 1.0
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sch = build_scheduler(opt, {"name": "cosine", "warmup_steps": None, "warmup_ratio": 0.03}, total)
    assert opt.param_groups[0]["lr"] == 0.0
    for _ in range(warm):
        opt.step()
        sch.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        lr_lambda("linear_decay", 0, 1)
    # warm-up 100, full rate until 800, linear to 0 at 1000
    w = lr_lambda("warmup_stable_decay", 100, 1000, 200)
    assert w(50) == 0.5 and w(100) == 1.0 and w(800) == 1.0 and w(900) == pytest.approx(0.5) and w(1000) == 0.0
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sch = build_scheduler(opt, {"name": "warmup_stable_decay", "warmup_steps": 0, "decay_ratio": 0.25}, 8)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    assert lrs == pytest.approx([2.0] * 7 + [1.0])  # the 8th (last) step runs at (8 - 7) / 2 of the rate
    # shorter than warm-up + decay (a smoke-test run of a real recipe): the lower of the two ramps
    short = lr_lambda("warmup_stable_decay", 100, 40, 12)
    assert short(10) == pytest.approx(0.1) and short(34) == pytest.approx(0.34) and short(36) == pytest.approx(4 / 12)
    assert short(39) == pytest.approx(1 / 12)
    with pytest.raises(ValueError, match="decay steps > 0"):
        lr_lambda("warmup_stable_decay", 10, 1000, 0)
