"""The loop in-process on the tiny config: non-finite steps are skipped and stop the run when they
persist; the semantic-layer file is loaded strictly (training/distill.py)."""

from __future__ import annotations

import json

import pytest
import torch

import training.loop as loop
from models import Showo2Config, Showo2Model
from training.distill import SemanticStudent, build_teacher, cosine_distill_loss, load_semantic_layers, save_semantic_layers, teacher_features
from training.logging import NonFiniteLossError
from utils.config import load_config


def _cfg(out, *extra):
    return load_config(["config=configs/tiny/stage1.yaml", f"experiment.output_dir={out}", "experiment.save_every=0",
                        "experiment.save_final=false", *extra])


def test_nonfinite_steps_are_skipped_then_stop(tmp_path, monkeypatch):
    real = loop._model_loss
    calls = {"n": 0}

    def flaky(model, inputs, cfg):
        calls["n"] += 1
        loss, ntp, flow = real(model, inputs, cfg)
        return (loss * float("nan"), ntp, flow) if calls["n"] in (2, 3) else (loss, ntp, flow)

    monkeypatch.setattr(loop, "_model_loss", flaky)
    loop.train(_cfg(tmp_path / "a", "training.max_train_steps=3"))
    recs = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3] and all(r["loss"] == r["loss"] for r in recs)  # finite
    assert recs[-1]["nonfinite_total"] == 2 and calls["n"] == 5
    assert "non-finite loss" in (tmp_path / "a" / "train.log").read_text()

    monkeypatch.setattr(loop, "_model_loss", lambda m, i, c: tuple(x * float("inf") for x in real(m, i, c)))
    with pytest.raises(NonFiniteLossError):
        loop.train(_cfg(tmp_path / "b", "training.max_train_steps=3", "training.max_nonfinite_steps=2"))


def test_gradient_checkpointing_switch_takes_effect(tmp_path):
    cfg = _cfg(tmp_path, "model.gradient_checkpointing=true")
    model = loop.build_model(cfg, 512, log=lambda *_: None)
    assert model.config.gradient_checkpointing and model.showo.model.gradient_checkpointing


def test_semantic_layers_file_round_trip_and_strict_load(tmp_path):
    config = Showo2Config.preset("tiny")
    teacher = build_teacher("random", config.siglip)
    student = SemanticStudent(config)
    student.init_from_teacher(teacher)
    lat = torch.randn(2, 16, 8, 8)
    tgt = teacher_features(teacher, torch.rand(2, 3, 64, 64) * 2 - 1, student.grid(lat))
    loss = cosine_distill_loss(student(lat), tgt)
    loss.backward()
    assert loss.item() > 0 and student.image_embedder_und.proj.weight.grad is not None
    f = save_semantic_layers(student, tmp_path / "sem.safetensors")
    model = Showo2Model(config)
    keys = load_semantic_layers(model, f)
    assert {k.split(".")[0] for k in keys} == {"image_embedder_und", "position_embedding", "und_trans"}
    assert torch.equal(model.und_trans.layers[0].mlp.fc1.weight, student.und_trans.layers[0].mlp.fc1.weight)
    from safetensors.torch import load_file, save_file

    sd = load_file(str(f))
    sd.pop("position_embedding.weight")
    sd["und_trans.extra"] = torch.zeros(1)
    save_file(sd, str(tmp_path / "bad.safetensors"))
    with pytest.raises(KeyError, match="missing.*position_embedding.*unexpected.*und_trans.extra"):
        load_semantic_layers(model, tmp_path / "bad.safetensors")
