"""End-to-end demo (demo.py): a shortened run through every step, then a re-run that skips them all."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# fast=true plus smaller sizes still: every step runs for real (world, tokenizer, VAE training, latent
# cache, train_stage1.py, train_stage2.py, pipeline + benchmark, report), just briefly.
TINY = [
    "fast=true", "threads=1",
    "world.n_train=96", "world.n_eval=4",
    "vae.steps=6", "vae.batch_size=4",
    "stage1.steps=6", "stage2.steps=4",
    "eval.per_category=1", "eval.questions=5", "eval.num_steps=3",
    "stage1.overrides=[demo.batch.t2i=4,demo.batch.caption=2,logging.log_every=2]",
    "stage2.overrides=[demo.batch.t2i=2,demo.batch.und=4,logging.log_every=2]",
]


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "demo.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"})


@pytest.mark.slow
@pytest.mark.ci_e2e
def test_demo_fast_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo_out"
    t0 = time.time()
    r = _run([*TINY, f"out={out}"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    first = time.time() - t0
    # every step left its marker and its outputs
    for step in ("world", "tokenizer", "vae", "latents", "stage1", "stage2", "eval"):
        assert (out / ".steps" / f"{step}.json").is_file(), step
    assert (out / "data" / "t2i_rel.jsonl").is_file()
    und = [json.loads(x) for x in (out / "data" / "und_rel.jsonl").read_text().splitlines()]
    assert und and all(r["path"].startswith("und/") and (out / "data" / "images" / r["path"]).is_file() for r in und)
    assert (out / "vae" / "config.json").is_file() and (out / "vae" / "recon.png").is_file()
    assert (out / "latents" / "meta.json").is_file()
    # canonical layout (the default): the conversations have images of their own, and the cache holds both sets
    llava = json.loads((out / "data" / "llava_train.json").read_text())
    assert len(llava) == 96 and all(e["image"].startswith("und/") for e in llava)
    assert json.loads((out / "latents" / "last_run.json").read_text())["summary"]["records"] == 2 * 96
    for stage in ("stage1", "stage2"):
        assert (out / stage / "export").is_dir()
        rows = [json.loads(line) for line in (out / stage / "metrics.jsonl").read_text().splitlines() if line]
        assert rows and all("loss_flow" in r and "loss_ntp" in r for r in rows)
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert set(summary["generation"]["categories"]) == {"single_object", "two_object", "counting", "colors",
                                                        "position", "color_attr"}
    assert summary["understanding"]["n"] >= 5
    html = (out / "report.html").read_text()
    assert "<svg" in html and "data:image/png;base64," in html and "Scores" in html
    assert (out / "report.md").is_file()
    assert "scores (held-out shapes mini-benchmark)" in r.stdout

    # a second run skips every finished step and only rewrites the report
    t0 = time.time()
    r2 = _run([*TINY, f"out={out}"])
    assert r2.returncode == 0, r2.stdout[-3000:] + r2.stderr[-3000:]
    assert r2.stdout.count("skipping") == 7, r2.stdout
    assert time.time() - t0 < first

    # an unknown step name in redo= is a clean config error
    r3 = _run([*TINY, f"out={out}", "redo=stage3"])
    assert r3.returncode == 2 and "unknown step" in r3.stderr
