"""Training recipes and launcher configs: every official YAML resolves, its freezing / groups / schedule
build on the real (tiny) model, the §12 hyper-parameters are what the spec says; entry points parse."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from models import Showo2Config, Showo2Model
from training.loop import micro_batch_rows
from training.optim import build_optimizer, build_scheduler, freeze_params
from utils.config import load_config, load_yaml, to_plain

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs").glob("showo2_*.yaml"))
TINY = sorted((ROOT / "configs" / "tiny").glob("*.yaml"))
DEMO = sorted((ROOT / "configs" / "demo").glob("stage*.yaml"))


@pytest.fixture(scope="module")
def tiny_model_state():
    torch.manual_seed(0)
    return Showo2Model(Showo2Config.preset("tiny"))


def _tiny(model) -> Showo2Model:
    for p in model.parameters():  # shared module-scoped model: reset freezing
        p.requires_grad_(True)
    return model


@pytest.mark.parametrize("path", RECIPES + TINY + DEMO, ids=lambda p: p.name)
def test_recipe_builds_on_the_model(path, tiny_model_state):
    cfg = load_yaml(path)
    for section in ("experiment", "model", "data", "optimizer", "lr_scheduler", "training", "logging"):
        assert section in cfg, section
    if "distill" in cfg:
        return
    model = _tiny(tiny_model_state)
    freeze_params(model, list(cfg.model.frozen_params or []))
    opt = build_optimizer(model, to_plain(cfg.optimizer))       # no trainable parameter left ungrouped
    steps = cfg.training.max_train_steps
    build_scheduler(opt, to_plain(cfg.lr_scheduler), 1000 if isinstance(steps, str) else int(steps))
    assert cfg.data.source in ("mixed", "synthetic")
    if cfg.data.source == "mixed":
        rows = sum(int(s["batch_size"]) for s in cfg.data.sources)
        assert rows == micro_batch_rows(cfg.data) or cfg.data.get("mode") == "prob"


def _trainable(path, state) -> set[str]:
    cfg = load_yaml(ROOT / "configs" / path)
    model = _tiny(state)
    freeze_params(model, list(cfg.model.frozen_params or []))
    return {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}


def test_spec_section_12_numbers(tiny_model_state):
    c = {n: load_yaml(ROOT / "configs" / f"showo2_1.5b_stage_{n}.yaml") for n in ("1_a", "1_b", "2_a", "2_b", "2_c")}
    assert [c[n].training.max_train_steps for n in ("1_a", "1_b")] == [150000, 40000]
    assert [c[n].training.seed for n in c] == [10086, 10000, 10086, 10086, 1008]
    assert (c["1_a"].training.ntp_coeff, c["1_a"].training.flow_coeff) == (0.2, 1.0)
    assert all((c[n].training.ntp_coeff, c[n].training.flow_coeff) == (1.0, 1.0) for n in ("2_a", "2_b", "2_c"))
    assert c["1_a"].lr_scheduler.name == "constant_with_warmup" and c["1_a"].lr_scheduler.warmup_steps == 2000
    assert c["1_b"].lr_scheduler.warmup_steps == 0 and c["1_a"].optimizer.lr == 1e-4
    assert all(c[n].lr_scheduler.name == "cosine" and c[n].lr_scheduler.warmup_ratio == 0.03 for n in ("2_a", "2_b", "2_c"))
    assert [g.lr for g in c["2_b"].optimizer.groups] == [2e-6, 1e-5, 1e-5]
    assert [s["batch_size"] for s in c["1_a"].data.sources] == [6, 2]
    assert [s["batch_size"] for s in c["2_a"].data.sources] == [4, 4]
    assert c["1_a"].training.max_grad_norm is None and c["2_a"].training.max_grad_norm == 1.0   # quirk 3
    assert c["2_a"].training.max_train_steps == "epoch:und"
    assert _trainable("showo2_1.5b_stage_1_a.yaml", tiny_model_state) == {
        "image_embedder_gen", "fusion_proj", "time_embed", "time_embed_proj", "diff_proj", "diffusion_head_a", "diffusion_head_b"}
    assert _trainable("showo2_1.5b_stage_2_a.yaml", tiny_model_state) == {"fusion_proj"}
    assert "time_embed" not in _trainable("showo2_1.5b_stage_2_c.yaml", tiny_model_state)
    z = load_yaml(ROOT / "configs" / "showo2_7b_stage_1_a.yaml")
    assert list(z.experiment.params_not_load) == ["image_embedder_gen", "showo", "fusion_proj", "diff_proj", "time_embed_proj"]
    assert z.model.preset == "showo2-7b"
    v = load_yaml(ROOT / "configs" / "showo2_7b_stage_2_a.yaml")
    assert [s["batch_size"] for s in v.data.sources] == [2, 2]


def test_accelerate_configs_exist_and_parse():
    a = ROOT / "accelerate_configs"
    files = ["1_gpu.yaml", "8_gpus_deepspeed_zero2.yaml", "8_gpus_deepspeed_zero3.yaml", "fsdp_8_gpus.yaml",
             "cpu_2proc.yaml"] + [f"multi_nodes/8_gpus_node_{k}.yaml" for k in range(6)]
    docs = {f: yaml.safe_load((a / f).read_text()) for f in files}
    assert docs["8_gpus_deepspeed_zero2.yaml"]["deepspeed_config"]["zero_stage"] == 2
    z3 = docs["8_gpus_deepspeed_zero3.yaml"]["deepspeed_config"]
    assert z3["zero_stage"] == 3 and z3["zero3_save_16bit_model"] is True
    for k in range(6):
        d = docs[f"multi_nodes/8_gpus_node_{k}.yaml"]
        assert d["machine_rank"] == k and d["num_machines"] == 6 and d["num_processes"] == 48
        assert d["deepspeed_config"]["offload_optimizer_device"] == "cpu"
    assert docs["cpu_2proc.yaml"]["distributed_type"] == "MULTI_GPU" and docs["cpu_2proc.yaml"]["use_cpu"] is False
    assert docs["fsdp_8_gpus.yaml"]["fsdp_config"]["fsdp_version"] == 2


def test_cli_overrides_and_typos():
    cfg = load_config(["config=configs/tiny/stage1.yaml", "training.max_train_steps=3"])
    assert cfg.training.max_train_steps == 3
    with pytest.raises(Exception, match="max_train_step"):
        load_config(["config=configs/tiny/stage1.yaml", "training.max_train_step=3"])


@pytest.mark.parametrize("script", ["train_stage1.py", "train_stage2.py", "distill_semantic_layers.py"])
def test_entry_point_help(script):
    p = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "config=" in p.stdout and "training:" in p.stdout


def test_micro_batch_rows_derived_in_concat_mode():
    """Concat mode: the sum of the sources' rows (no second copy to keep in step); an explicit value must
    agree; prob mode and synthetic data take the configured value."""
    srcs = [{"name": "t2i", "batch_size": 16}, {"name": "und", "batch_size": 24}]
    assert micro_batch_rows({"source": "mixed", "mode": "concat", "sources": srcs}) == 40
    assert micro_batch_rows({"source": "mixed", "sources": srcs, "micro_batch_size": 40}) == 40
    with pytest.raises(ValueError, match="micro_batch_size=32 but the concat sources hold 40"):
        micro_batch_rows({"source": "mixed", "sources": srcs, "micro_batch_size": 32})
    assert micro_batch_rows({"source": "mixed", "mode": "prob", "sources": srcs, "micro_batch_size": 16}) == 16
    assert micro_batch_rows({"source": "synthetic", "micro_batch_size": 3}) == 3
    assert micro_batch_rows({"source": "synthetic"}) is None
