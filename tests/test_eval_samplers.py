"""GenEval / DPG samplers on a fake pipeline: exact evaluator layouts, resume, sharding, seeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from evaluation import dpg, geneval
from evaluation.common import shard_indices

ROOT = Path(__file__).resolve().parents[1]


class SeedColourPipe:
    """Fake pipeline: each image is a flat colour derived from its seed (so seeds are visible)."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.kwargs: list[dict[str, Any]] = []

    def text_to_image(self, prompts: list[str], *, seeds: list[int] | None = None, resolution: int | None = None,
                      **kw: Any) -> list[Image.Image]:
        assert seeds is not None and len(seeds) == len(prompts)
        self.prompts += prompts
        self.kwargs.append(dict(kw, resolution=resolution))
        r = resolution or 32
        return [Image.new("RGB", (r, r), ((s * 37) % 256, (s * 11) % 256, (s // 7) % 256)) for s in seeds]


def _colour(path: Path) -> tuple[int, ...]:
    return tuple(np.asarray(Image.open(path))[0, 0].tolist())


def test_shard_indices_cover_once() -> None:
    for n, w in [(553, 8), (1065, 8), (7, 2), (3, 5)]:
        parts = [shard_indices(n, r, w) for r in range(w)]
        assert sorted(i for p in parts for i in p) == list(range(n))
        assert all(p == sorted(p) for p in parts)  # contiguous like numpy.array_split
    assert [len(shard_indices(553, r, 8)) for r in range(8)] == [70] + [69] * 7


def test_geneval_layout_and_protocol(tmp_path: Path) -> None:
    pipe = SeedColourPipe()
    out = tmp_path / "gen"
    geneval.main([f"outdir={out}", "max_prompts=5", "resolution=32", "n_samples=4", "batch_size=8"], pipe=pipe)
    rows = [json.loads(x) for x in (ROOT / "prompts/geneval_meta_data_rewritten.jsonl").read_text().splitlines()]
    assert sorted(p.name for p in out.iterdir()) == [f"{i:05d}" for i in range(5)]
    for i in range(5):
        d = out / f"{i:05d}"
        text = (d / "metadata.jsonl").read_text()
        assert not text.endswith("\n") and json.loads(text) == rows[i]
        assert sorted(p.name for p in (d / "samples").iterdir()) == [f"{k:05d}.png" for k in range(4)]
        im = Image.open(d / "samples" / "00000.png")
        assert im.size == (32, 32) and im.mode == "RGB"
        assert not (d / "grid.png").exists()
    # official defaults reach the pipeline: guidance 7.5, 100 grid points; rewritten prompts
    assert pipe.kwargs[0]["guidance_scale"] == 7.5 and pipe.kwargs[0]["num_steps"] == 100
    assert pipe.prompts[0] == rows[0]["prompt"] and len(pipe.prompts) == 20
    assert (tmp_path / "gen_config.yaml").is_file()


def test_geneval_resume_skips_finished(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    args = [f"outdir={out}", "max_prompts=4", "resolution=16", "n_samples=2", "save_grid=true"]
    geneval.main(args, pipe=SeedColourPipe())
    assert (out / "00000" / "grid.png").is_file()
    (out / "00002" / "samples" / "00001.png").unlink()  # an interrupted prompt
    pipe = SeedColourPipe()
    assert geneval.main(args, pipe=pipe) == [2]
    assert len(pipe.prompts) == 2
    assert geneval.main(args, pipe=SeedColourPipe()) == []


def test_geneval_sharding_two_ranks_matches_single(tmp_path: Path) -> None:
    common = ["max_prompts=7", "resolution=16", "n_samples=2", "batch_size=4", "seed=100"]
    single = tmp_path / "single"
    geneval.main([f"outdir={single}", *common], pipe=SeedColourPipe())
    sharded = tmp_path / "sharded"
    got = []
    for rank in range(2):
        got += geneval.main([f"outdir={sharded}", *common, f"device_id={rank}", "num_devices=2"], pipe=SeedColourPipe())
    assert sorted(got) == list(range(7)) and len(got) == 7  # every prompt exactly once
    for i in range(7):
        for k in range(2):
            f = f"{i:05d}/samples/{k:05d}.png"
            assert _colour(single / f) == _colour(sharded / f)  # seeds independent of sharding
    # different prompts/samples get different seeds
    assert len({_colour(single / f"{i:05d}/samples/{k:05d}.png") for i in range(7) for k in range(2)}) == 14


def test_dpg_grid_layout_resume_sharding(tmp_path: Path) -> None:
    out = tmp_path / "dpg"
    items = json.loads((ROOT / "prompts/dpg_bench_meta_data.json").read_text())[:5]
    done = []
    for rank in range(2):
        done += dpg.main([f"outdir={out}", "max_prompts=5", "resolution=16", f"device_id={rank}", "num_devices=2"],
                         pipe=SeedColourPipe())
    assert sorted(done) == list(range(5))
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{it['prompt_file_name']}.png" for it in items)
    grid = np.asarray(Image.open(out / f"{items[1]['prompt_file_name']}.png"))
    assert grid.shape == (32, 32, 3)
    # row-major tiles: seed of sample k of prompt 1 = 0 + 1 * 4 + k
    for k in range(4):
        s = 4 + k
        tile = grid[(k // 2) * 16:(k // 2 + 1) * 16, (k % 2) * 16:(k % 2 + 1) * 16]
        assert (tile == ((s * 37) % 256, (s * 11) % 256, (s // 7) % 256)).all()
    pipe = SeedColourPipe()
    assert dpg.main([f"outdir={out}", "max_prompts=5", "resolution=16"], pipe=pipe) == [] and not pipe.prompts
    # fewer images leave white tiles; more than 4 is an error
    out3 = tmp_path / "dpg3"
    dpg.main([f"outdir={out3}", "max_prompts=1", "resolution=8", "n_samples=3"], pipe=SeedColourPipe())
    g = np.asarray(Image.open(out3 / f"{items[0]['prompt_file_name']}.png"))
    assert (g[8:, 8:] == 255).all()
    with pytest.raises(ValueError):
        dpg.main([f"outdir={tmp_path / 'x'}", "n_samples=5"], pipe=SeedColourPipe())
    first = SeedColourPipe()
    dpg.main([f"outdir={tmp_path / 'y'}", "max_prompts=1", "resolution=8"], pipe=first)
    assert first.kwargs[0]["guidance_scale"] == 10.0 and first.kwargs[0]["num_steps"] == 50


@pytest.mark.parametrize("script,module", [("sample_geneval.sh", geneval), ("sample_dpg.sh", dpg)])
def test_shell_scripts_build_valid_commands(tmp_path: Path, script: str, module: Any) -> None:
    env = dict(os.environ, DRY_RUN="1", NUM_PROCESSES="1")
    cmd = subprocess.run(["bash", str(ROOT / "evaluation" / script), "CKPT", str(tmp_path / "o"), "seed=3"],
                         env=env, capture_output=True, text=True, check=True).stdout.split()
    i = cmd.index("-m")
    assert cmd[i + 1] == module.__name__
    args = [a for a in cmd[i + 2:] if not a.startswith("model_path=")]
    pipe = SeedColourPipe()
    module.main([*args, "max_prompts=1", "resolution=8"], pipe=pipe)  # every key in the script exists
    assert pipe.kwargs[0]["resolution"] == 8
    env["NUM_PROCESSES"] = "8"
    cmd8 = subprocess.run(["bash", str(ROOT / "evaluation" / script), "CKPT"], env=env, capture_output=True,
                          text=True, check=True).stdout
    assert "accelerate.commands.launch" in cmd8 and "--num_processes 8" in cmd8


def test_config_file_typos_and_help(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from utils.config import ConfigError

    y = tmp_path / "eval.yaml"
    y.write_text("n_samples: 2\nresolution: 8\nmax_prompts: 2\n")
    pipe = SeedColourPipe()
    geneval.main([f"config={y}", f"outdir={tmp_path / 'g'}", "guidance_scale=3"], pipe=pipe)
    assert len(pipe.prompts) == 4 and pipe.kwargs[0]["guidance_scale"] == 3.0  # YAML + defaults + CLI
    with pytest.raises(ConfigError, match="guidance_scal"):
        geneval.main(["guidance_scal=3"], pipe=pipe)
    y.write_text("n_sample: 2\n")
    with pytest.raises(ConfigError, match="n_sample"):
        dpg.main([f"config={y}"], pipe=pipe)
    with pytest.raises(SystemExit):
        dpg.main(["--help"])
    assert "num_inference_steps" in capsys.readouterr().out


SHARD_SCRIPT = '''
import sys
sys.path.insert(0, {root!r})
from PIL import Image
from evaluation import geneval

class Pipe:
    def text_to_image(self, prompts, *, seeds=None, resolution=None, **kw):
        return [Image.new("RGB", (8, 8), (s % 256, 0, 0)) for s in seeds]

done = geneval.sample_geneval(dict(geneval.DEFAULTS, outdir={out!r}, max_prompts=5, n_samples=1, resolution=8,
                                   validation_prompts_file={prompts!r}), pipe=Pipe())
from evaluation.common import process_rank
open({out!r} + f"/../rank{{process_rank()[0]}}.txt", "w").write(",".join(map(str, done)))
'''


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_two_processes_shard(tmp_path: Path) -> None:
    """Two real processes (torchrun, as ``accelerate launch`` uses on GPUs) split the prompts between them."""
    out = tmp_path / "g"
    script = tmp_path / "run.py"
    script.write_text(SHARD_SCRIPT.format(root=str(ROOT), out=str(out),
                                          prompts=str(ROOT / "prompts/geneval_meta_data_rewritten.jsonl")))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script)],
                   check=True, env=env, cwd=tmp_path, timeout=300, capture_output=True)
    parts = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert parts == ["0,1,2", "3,4"]
    assert sorted(p.name for p in out.iterdir()) == [f"{i:05d}" for i in range(5)]
