"""End-to-end training runs of the tiny CPU configs (subprocesses, generated data).

Slow; `test_stage1_then_stage2` is the one CI runs (ci_e2e). Multi-process runs go through the real
`accelerate_configs/` files with CPU overrides (`--num_processes 2 --mixed_precision no`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ACCELERATE = str(Path(PY).with_name("accelerate"))


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), WANDB_MODE="disabled", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    p = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(args)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"
    return p


def _metrics(out: Path) -> dict[int, dict]:
    recs = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():  # a resumed run appends; last record wins
        r = json.loads(line)
        recs[r["step"]] = r
    return recs


def _falls(losses: list[float]) -> bool:
    k = max(2, len(losses) // 3)
    return sum(losses[-k:]) / k < sum(losses[:k]) / k


def _launch(*flags: str, port: int) -> list[str]:
    return [ACCELERATE, "launch", *flags, "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port)]


@pytest.mark.slow
@pytest.mark.ci_e2e
def test_stage1_then_stage2(tmp_path):
    from models import Showo2Config, Showo2Model

    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    _run([PY, "train_stage1.py", f"experiment.output_dir={s1}", "training.max_train_steps=20", "experiment.save_every=10",
          "optimizer.lr=5e-3"])
    m1 = _metrics(s1)
    assert sorted(m1) == list(range(1, 21)) and _falls([m1[i]["loss"] for i in range(1, 21)])
    assert (s1 / "checkpoint-10" / "meta.json").exists() and (s1 / "checkpoint-20" / "meta.json").exists()
    exported = Showo2Model.from_pretrained(str(s1 / "export"))
    torch.manual_seed(0)
    init = Showo2Model(Showo2Config.preset("tiny")).state_dict()
    sd1 = exported.state_dict()
    assert all(torch.equal(sd1[k], init[k]) for k in init if k.startswith(("showo.", "und_trans.")))  # frozen in 1a
    assert not torch.equal(sd1["diffusion_head_b.linear.weight"], init["diffusion_head_b.linear.weight"])

    _run([PY, "train_stage2.py", f"experiment.output_dir={s2}", f"experiment.init_from={s1 / 'export'}",
          "training.max_train_steps=20", "experiment.save_every=10"])
    m2 = _metrics(s2)
    assert _falls([m2[i]["loss"] for i in range(1, 21)])
    assert {"lr_ve", "lr_proj", "lr_showo"} <= set(m2[1])                      # three groups, cosine
    assert m2[20]["lr_showo"] < m2[10]["lr_showo"]
    sd2 = Showo2Model.from_pretrained(str(s2 / "export")).state_dict()
    assert all(torch.equal(sd2[k], sd1[k]) for k in sd1 if k.startswith("time_embed."))   # quirk 2, explicit
    assert not torch.equal(sd2["fusion_proj.1.weight"], sd1["fusion_proj.1.weight"])
    assert not torch.equal(sd2["showo.model.layers.0.mlp.up_proj.weight"], sd1["showo.model.layers.0.mlp.up_proj.weight"])
    assert json.loads((s2 / "summary.json").read_text())["steps"] == 20


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    args = ["training.max_train_steps=8", "experiment.save_every=2", "experiment.keep_last=null"]
    _run([PY, "train_stage1.py", f"experiment.output_dir={ref}", *args])
    p = subprocess.Popen([PY, "train_stage1.py", f"experiment.output_dir={run}", *args], cwd=ROOT, env=_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill hard once step 5 is logged (a checkpoint exists at 4, maybe mid-write of 6)
        if (run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    from training.checkpointing import latest_checkpoint

    k = int(latest_checkpoint(run).name.split("-")[1])
    assert 4 <= k < 8
    _run([PY, "train_stage1.py", f"experiment.output_dir={run}", *args])  # resume_from_checkpoint: latest
    a, b = _metrics(ref), _metrics(run)
    assert [b[s]["loss"] for s in range(k + 1, 9)] == [a[s]["loss"] for s in range(k + 1, 9)]  # bitwise
    assert "resumed from" in (run / "train.log").read_text()
    ra, rb = load_file(str(ref / "export" / "model.safetensors")), load_file(str(run / "export" / "model.safetensors"))
    assert all(torch.equal(ra[n], rb[n]) for n in ra)


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    _run([*_launch("--config_file", "accelerate_configs/cpu_2proc.yaml", port=29611), "train_stage1.py",
          f"experiment.output_dir={out}", "training.max_train_steps=4", "experiment.save_every=2"])
    ck = out / "checkpoint-4"
    assert (ck / "data_rank1.json").exists() and json.loads((ck / "meta.json").read_text())["world_size"] == 2
    d0, d1 = (json.loads((ck / f"data_rank{r}.json").read_text()) for r in (0, 1))
    assert d0["rank"] == 0 and d1["rank"] == 1
    assert sorted(_metrics(out)) == [1, 2, 3, 4] and (out / "export" / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("zero", [2, 3])
def test_deepspeed_zero_cpu(tmp_path, zero):
    """The real 8-GPU ZeRO files, run with 2 CPU processes; then resumed from the DeepSpeed checkpoint."""
    out = tmp_path / f"z{zero}"
    cmd = [*_launch("--config_file", f"accelerate_configs/8_gpus_deepspeed_zero{zero}.yaml", "--num_processes", "2",
                    port=29620 + zero), "train_stage1.py", f"experiment.output_dir={out}", "experiment.save_every=2"]
    _run([*cmd, "training.max_train_steps=2"])
    assert (out / "checkpoint-2" / "deepspeed").is_dir() and json.loads((out / "checkpoint-2" / "meta.json").read_text())["backend"] == "deepspeed"
    _run([*cmd, "training.max_train_steps=4"])
    assert sorted(_metrics(out)) == [1, 2, 3, 4] and "resumed from" in (out / "train.log").read_text()
    from models import Showo2Model

    Showo2Model.from_pretrained(str(out / "export"))


@pytest.mark.slow
@pytest.mark.distributed
def test_gradient_clipping_applies_under_deepspeed(tmp_path):
    """Clipping at 0.01 (i.e. always active): DeepSpeed (gradient_clipping from the run config) follows the
    plain-PyTorch clipped trajectory, and differs from the unclipped one."""
    common = ["training.max_train_steps=3", "experiment.save_every=0", "experiment.save_final=false"]
    plain, ds, noclip = tmp_path / "plain", tmp_path / "ds", tmp_path / "noclip"
    _run([PY, "train_stage1.py", f"experiment.output_dir={plain}", "training.max_grad_norm=0.01", *common])
    _run([PY, "train_stage1.py", f"experiment.output_dir={noclip}", "training.max_grad_norm=null", *common])
    _run([*_launch("--use_deepspeed", "--zero_stage", "2", "--num_processes", "1", port=29631), "train_stage1.py",
          f"experiment.output_dir={ds}", "training.max_grad_norm=0.01", *common])
    a, b, c = _metrics(plain), _metrics(ds), _metrics(noclip)
    assert a[3]["loss"] == pytest.approx(b[3]["loss"], rel=1e-5, abs=1e-5)
    assert abs(a[3]["loss"] - c[3]["loss"]) > 1e-4


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp2_two_cpu_processes(tmp_path):
    out = tmp_path / "fsdp"
    _run([*_launch("--use_fsdp", "--fsdp_version", "2", "--num_processes", "2", port=29641), "train_stage1.py",
          f"experiment.output_dir={out}", "training.max_train_steps=3", "experiment.save_every=2"])
    assert (out / "checkpoint-2" / "optimizer.pt").exists() and sorted(_metrics(out)) == [1, 2, 3]
    from models import Showo2Model

    Showo2Model.from_pretrained(str(out / "export"))


@pytest.mark.slow
def test_distill_then_stage1_loads_semantic_layers(tmp_path):
    d, s1 = tmp_path / "distill", tmp_path / "s1"
    _run([PY, "distill_semantic_layers.py", f"experiment.output_dir={d}", "training.max_train_steps=3"])
    f = d / "semantic_layers.safetensors"
    keys = set(load_file(str(f)))
    assert {k.split(".")[0] for k in keys} == {"image_embedder_und", "position_embedding", "und_trans"}
    _run([PY, "train_stage1.py", f"experiment.output_dir={s1}", "training.max_train_steps=1",
          f"model.pretrained.semantic_layers={f}"])
    sd = load_file(str(s1 / "export" / "model.safetensors"))
    dist = load_file(str(f))
    assert all(torch.equal(sd[k], dist[k]) for k in keys)  # frozen in stage 1: still the distilled values
