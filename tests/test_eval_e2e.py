"""End to end on a real (tiny, random) Showo2Pipeline: every evaluation entry point runs against the actual
pipeline interface (GenEval and DPG samplers, shapes benchmark incl. video questions, lmms-eval plugin)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from PIL import Image


@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory: pytest.TempPathFactory):
    import torch

    from datasets.shapes import sample_spec
    from datasets.tokenizer import build_demo_tokenizer, load_tokenizer
    from generation.pipeline import Showo2Pipeline
    from models.config import Showo2Config
    from models.showo2 import Showo2Model
    from models.vae import WanVAE

    d = tmp_path_factory.mktemp("tok")
    build_demo_tokenizer([sample_spec(random.Random(i)).caption() for i in range(200)], d)
    tok, special = load_tokenizer(str(d))
    torch.manual_seed(0)
    return Showo2Pipeline(Showo2Model(Showo2Config.preset("tiny")), WanVAE.from_config(), tok, special, resolution=64)


@pytest.mark.slow
@pytest.mark.ci_e2e
def test_eval_entry_points_on_tiny_pipeline(tiny_pipe, tmp_path: Path) -> None:
    from evaluation import dpg, geneval, shapes_bench
    from evaluation.lmms_eval_showo2 import Showo2

    fast = ["max_prompts=1", "n_samples=2", "num_inference_steps=2", "resolution=64"]
    geneval.main([f"outdir={tmp_path / 'g'}", *fast], pipe=tiny_pipe)
    assert Image.open(tmp_path / "g/00000/samples/00001.png").size == (64, 64)
    dpg.main([f"outdir={tmp_path / 'd'}", *fast[:-3], "n_samples=1", "num_inference_steps=2", "resolution=64"],
             pipe=tiny_pipe)
    name = json.loads(Path("prompts/dpg_bench_meta_data.json").read_text())[0]["prompt_file_name"]
    assert Image.open(tmp_path / "d" / f"{name}.png").size == (128, 128)

    summ = shapes_bench.main([f"outdir={tmp_path / 's'}", "max_items=1", "n_samples=1", "num_steps=2",
                              "max_new_tokens=2", f"video_questions={shapes_bench.DEFAULT_VIDEO_QUESTIONS}"],
                             pipe=tiny_pipe)
    assert summ["generation"]["n"] == 1 and summ["understanding"]["n"] == 2
    assert 0.0 <= summ["generation"]["overall"] <= 1.0

    class Req:
        def __init__(self, *args):
            self.args = args

    m = Showo2(pipe=tiny_pipe, max_new_tokens=2, num_frames=5)
    img = Image.new("RGB", (50, 40), "red")
    m.task_dict = {"t": {"s": {0: img}}}
    out = m.generate_until([Req("<image>\nWhat color?", {"until": ["\n"]}, lambda d: [d], 0, "t", "s")])
    assert len(out) == 1 and isinstance(out[0], str)
