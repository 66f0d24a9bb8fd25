"""The loop in-process on the tiny config: non-finite steps are skipped and stop the run when they
persist; the semantic-layer file is loaded strictly (training/distill.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import training.loop as loop
from models import Showo2Config, Showo2Model
from training.distill import (
    SemanticStudent,
    build_teacher,
    cosine_distill_loss,
    load_semantic_layers,
    save_semantic_layers,
    teacher_features,
)
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


def test_accumulation_and_wandb_offline(tmp_path):
    out = tmp_path / "ga"
    loop.train(_cfg(out, "training.max_train_steps=2", "training.gradient_accumulation_steps=2", "logging.wandb.mode=offline"))
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2] and recs[0]["samples_per_s"] > 0
    assert list((out / "wandb").glob("offline-run-*")), "wandb offline run directory missing"


@pytest.mark.slow
def test_real_loaders_and_sample_grid(tmp_path):
    """Shapes world on disk -> datasets.mixed (image-text t2i + captioning, demo tokenizer) -> the loop;
    a sample grid PNG through generation.pipeline at step 1."""
    from datasets.shapes import write_shapes_world
    from datasets.tokenizer import build_demo_tokenizer

    paths = write_shapes_world(tmp_path / "world", n_train=12, n_eval=2, n_videos=1, n_stories=1, resolution=32,
                               video_format="frames")
    texts = [json.loads(line)["prompt"] for line in open(paths["image_text"])]
    tok = build_demo_tokenizer(texts * 10, tmp_path / "tok")
    yaml_text = f"""
_base_: {Path('configs/tiny/stage1.yaml').resolve()}
experiment: {{output_dir: {tmp_path / 'run'}, save_every: 0, generate_every: 1}}
data:
  source: mixed
  tokenizer: {tok}
  max_seq_len: 40
  resolution: 32
  sources:
    - {{name: t2i, type: image_text, path: {paths['image_text']}, task: t2i, batch_size: 2, cond_dropout_prob: 0.1}}
    - {{name: caption, type: image_text, path: {paths['image_text']}, task: caption, batch_size: 1}}
generation: {{prompts: [a red circle, a blue square], num_steps: 3, guidance_scale: 2.0}}
training: {{max_train_steps: 2}}
"""
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml_text)
    loop.train(load_config([f"config={cfg_file}"]))
    run = tmp_path / "run"
    assert (run / "samples" / "step-0000001.png").exists(), (run / "train.log").read_text()
    data_state = json.loads((run / "checkpoint-2" / "data_rank0.json").read_text())
    assert data_state["step"] == 2 and data_state["positions"] == [4, 2]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["t2v", "i2v", "video_und", "interleaved"])
def test_video_and_interleaved_configs_run(tmp_path, name):
    out = tmp_path / name
    loop.train(load_config([f"config=configs/tiny/{name}.yaml", f"experiment.output_dir={out}", "training.max_train_steps=2",
                            "experiment.save_every=0"]))
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2] and all(r["loss"] == r["loss"] for r in recs)
    if name != "video_und":
        assert all(r["loss_flow"] > 0 for r in recs)
    if name in ("video_und", "interleaved"):
        assert all(r["loss_ntp"] > 0 for r in recs)
    assert (out / "export" / "model.safetensors").exists()
