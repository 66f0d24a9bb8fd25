"""Atomic checkpoints, `latest` resolution, keep-last-K, exact state round trip, crash during a write,
weights-only hand-off (training/checkpointing.py). Single process, small stand-in model: fast."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from torch import nn

from training import checkpointing as ckpt
from training.optim import build_scheduler


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    acc = Accelerator(cpu=True)
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = build_scheduler(opt, {"name": "constant_with_warmup", "warmup_steps": 3}, 10)
    model, opt = acc.prepare(model, opt)
    return acc, model, opt, sched


def _train(model, opt, sched, gen, n):
    losses = []
    for _ in range(n):
        x = torch.randn(5, 4, generator=gen)
        loss = model(x).pow(2).mean() + 0.01 * torch.rand(()).item() + 0.01 * random.random() + 0.01 * float(np.random.rand())
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    return losses


def test_latest_ignores_temp_partial_and_non_numeric(tmp_path):
    for name, complete in [("checkpoint-9", True), ("checkpoint-10", True), ("checkpoint-11", False),
                           (".tmp-checkpoint-12", True), ("checkpoint-final", True), ("checkpoint-x3", True)]:
        (tmp_path / name).mkdir()
        if complete:
            (tmp_path / name / "meta.json").write_text("{}")
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "checkpoint-10"  # integer order, 10 > 9
    assert ckpt.resolve_checkpoint("latest", tmp_path / "missing") is None
    assert ckpt.resolve_checkpoint(None, tmp_path) is None
    with pytest.raises(FileNotFoundError):
        ckpt.resolve_checkpoint(str(tmp_path / "checkpoint-11"), tmp_path)


def test_exact_resume_round_trip_and_keep_last(tmp_path):
    acc, model, opt, sched = _setup()
    gen = torch.Generator().manual_seed(1)
    _train(model, opt, sched, gen, 3)
    for step in (3, 4, 5):
        ckpt.save_checkpoint(acc, tmp_path, step, model, opt, sched, generators={"flow": gen},
                             data_state={"index": step}, run_state={"x": 1}, keep_last=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [4, 5]
    expected = _train(model, opt, sched, gen, 4)  # uninterrupted continuation from the state at "step 5"

    acc2, model2, opt2, sched2 = _setup(seed=123)  # different init: everything must come from the checkpoint
    gen2 = torch.Generator().manual_seed(999)
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    meta = ckpt.load_checkpoint(acc2, tmp_path / "checkpoint-5", model2, opt2, sched2, generators={"flow": gen2})
    assert meta["global_step"] == 5 and meta["data_state"] == {"index": 5} and meta["state"] == {"x": 1}
    assert _train(model2, opt2, sched2, gen2, 4) == expected  # bitwise: weights, Adam moments, LR, all RNGs
    files = {p.name for p in (tmp_path / "checkpoint-5").iterdir()}
    assert {"model.safetensors", "optimizer.pt", "scheduler.json", "rng_rank0.json", "rng_rank0.safetensors",
            "data_rank0.json", "meta.json"} <= files


def test_crash_during_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    acc, model, opt, sched = _setup()
    gen = torch.Generator().manual_seed(0)
    _train(model, opt, sched, gen, 2)
    ckpt.save_checkpoint(acc, tmp_path, 2, model, opt, sched, generators={"flow": gen}, data_state={"i": 2})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train(model, opt, sched, gen, 2)

    def crash(*a, **k):
        raise OSError("disk died mid-write")

    monkeypatch.setattr(ckpt, "_write_meta", crash)  # weights/optimizer already written, marker not yet
    with pytest.raises(OSError):
        ckpt.save_checkpoint(acc, tmp_path, 4, model, opt, sched, generators={"flow": gen}, data_state={"i": 4})
    assert (tmp_path / ".tmp-checkpoint-4" / "model.safetensors").exists()  # the partial write is there ...
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "checkpoint-2"   # ... and ignored
    acc2, model2, opt2, sched2 = _setup(seed=7)
    meta = ckpt.load_checkpoint(acc2, ckpt.resolve_checkpoint("latest", tmp_path), model2, opt2, sched2,
                                generators={"flow": torch.Generator()})
    assert meta["global_step"] == 2 and meta["data_state"] == {"i": 2}
    assert all(torch.equal(before[k], v) for k, v in model2.state_dict().items())
    monkeypatch.undo()
    ckpt.save_checkpoint(acc, tmp_path, 4, model, opt, sched, generators={"flow": gen}, data_state={"i": 4})
    assert not (tmp_path / ".tmp-checkpoint-4").exists() and ckpt.latest_checkpoint(tmp_path).name == "checkpoint-4"


def test_untrusted_pickle_is_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    acc, model, opt, sched = _setup()
    ckpt.save_checkpoint(acc, tmp_path, 1, model, opt, sched, data_state={})

    class Evil:
        def __reduce__(self):
            return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))

    torch.save({"state": {}, "param_groups": [], "evil": Evil()}, tmp_path / "checkpoint-1" / "optimizer.pt")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        ckpt.load_checkpoint(acc, tmp_path / "checkpoint-1", model, opt, sched)
    assert not (tmp_path / "PWNED").exists()


def test_init_from_drops_params_not_load(tmp_path):
    acc, model, opt, sched = _setup()
    ckpt.save_checkpoint(acc, tmp_path, 1, model, opt, sched, data_state={})
    torch.manual_seed(3)
    fresh = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
    keep = fresh[2].weight.detach().clone()
    rep = ckpt.load_init_weights(fresh, tmp_path / "checkpoint-1", params_not_load=["2.weight"])
    assert rep["dropped"] == ["2.weight"]
    assert torch.equal(fresh[2].weight, keep) and torch.equal(fresh[0].weight, model.state_dict()["0.weight"])
    bigger = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2), nn.Linear(2, 2))
    with pytest.raises(KeyError, match="missing"):
        ckpt.load_init_weights(bigger, tmp_path / "checkpoint-1")
    assert json.loads((tmp_path / "checkpoint-1" / "meta.json").read_text())["world_size"] == 1
