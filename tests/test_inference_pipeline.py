"""Showo2Pipeline and the inference entry points on a tiny exported model (demo tokenizer, tiny VAE).

Entry points run in-process here (fast: imports are shared); the subprocess runs are ``slow``, one of
them also ``ci_e2e``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "parity"
RES = 64  # tiny model: 4x4 token grid = 64 px




def export_tiny(folder: Path) -> Path:
    """Project export of the tiny parity model + demo tokenizer + tiny VAE (diffusers folder in vae/)."""
    from safetensors.torch import load_file

    from datasets.tokenizer import build_demo_tokenizer, load_tokenizer
    from models.config import Showo2Config
    from models.showo2 import Showo2Model
    from models.vae import WanVAE

    model = Showo2Model(Showo2Config.preset("tiny")).eval()
    model.load_state_dict(load_file(str(FIX / "weights.safetensors")))
    model.save_pretrained(str(folder))
    tdir = build_demo_tokenizer(["a red circle on a blue square", "the cat sat on the mat", "a story"] * 20,
                                folder.parent / (folder.name + "_tok"))
    tok, _ = load_tokenizer(str(tdir))
    tok.save_pretrained(str(folder))
    WanVAE.from_config(seed=0).vae.save_pretrained(str(folder / "vae"))
    return folder


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("tiny_export") / "model")


@pytest.fixture(scope="module")
def pipe(export):
    from generation.pipeline import Showo2Pipeline

    return Showo2Pipeline.from_pretrained(str(export), resolution=RES)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("media") / "img.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(p)
    return p


# ------------------------------------------------------------------------------------------ pipeline API
def test_text_to_image_seeded_and_batched(pipe):
    prompts = ["a red circle", "the cat sat on the mat", "a blue square"]
    a = pipe.text_to_image(prompts, num_steps=3, guidance_scale=5.0, seeds=[1, 2, 3], batch_size=2, progress=False)
    assert len(a) == 3 and all(im.size == (RES, RES) for im in a)
    b = pipe.text_to_image(prompts[1:2], num_steps=3, guidance_scale=5.0, seeds=[2], batch_size=1, progress=False)
    # batched == one-by-one up to float rounding of the left-padded batch (uint8 may flip by 1)
    assert np.abs(np.asarray(a[1], dtype=int) - np.asarray(b[0], dtype=int)).max() <= 1
    c = pipe.text_to_image(prompts[1:2], num_steps=3, guidance_scale=5.0, seeds=[2], batch_size=1, progress=False)
    assert np.array_equal(np.asarray(b[0]), np.asarray(c[0]))  # seeded runs reproduce exactly


def test_text_to_image_guidance_zero_and_long_prompt(pipe, caplog):
    long = " ".join(["the cat sat on the mat"] * 80)  # far beyond the 256-token caption budget
    with caplog.at_level("WARNING"):
        out = pipe.text_to_image(["a red circle", long], num_steps=3, guidance_scale=0.0, progress=False)
    assert len(out) == 2  # Q11 fixed: nothing halved
    assert any("truncat" in r.getMessage() for r in caplog.records)
    assert any("guidance" in r.getMessage() for r in caplog.records)


def test_cached_equals_uncached_pipeline(pipe):
    lat_c = pipe.text_to_image_latents(["a red circle", "the cat"], num_steps=3, seeds=[0, 1], progress=False)
    pipe.cached = False
    try:
        lat_u = pipe.text_to_image_latents(["a red circle", "the cat"], num_steps=3, seeds=[0, 1], progress=False)
    finally:
        pipe.cached = True
    torch.testing.assert_close(lat_c, lat_u, atol=3e-4, rtol=1e-4)


def test_understand_batched_equals_one_by_one(pipe, image_file):
    imgs = [str(image_file), None, Image.open(image_file)]
    qs = ["what is it?", "hello there", "describe the image in detail please"]
    batched = pipe.understand(imgs, qs, max_new_tokens=6)
    assert len(batched) == 3 and all(isinstance(a, str) for a in batched)
    for i in range(3):
        assert pipe.understand([imgs[i]], [qs[i]], max_new_tokens=6) == [batched[i]]
    demo = pipe.understand([imgs[0]], [qs[0]], max_new_tokens=6, layout="official_demo")
    assert isinstance(demo[0], str)
    sampled = pipe.understand(imgs, qs, max_new_tokens=6, temperature=1.0, top_p=0.9, seeds=[4, 5, 6])
    assert sampled == pipe.understand(imgs, qs, max_new_tokens=6, temperature=1.0, top_p=0.9, seeds=[4, 5, 6])


def test_video_modes(pipe, image_file):
    t2v = pipe.text_to_video(["a cat"], num_frames=5, num_steps=3, progress=False)
    assert t2v[0].shape == (5, RES, RES, 3) and t2v[0].dtype == np.uint8
    i2v = pipe.image_to_video([str(image_file)], ["a cat"], num_frames=5, num_steps=3, progress=False)
    assert i2v[0].shape == (5, RES, RES, 3)
    ans = pipe.understand_video([t2v[0]], ["what happens?"], num_frames=5, max_new_tokens=4)
    assert len(ans) == 1
    # official video-understanding layout: per-frame encodes, pooled 4x4 -> 2x2 tokens, any frame count
    ans = pipe.understand_video([t2v[0], t2v[0]], ["what?", "what happens here?"], num_frames=3,
                                video_mode="official", max_new_tokens=4)
    assert ans == [pipe.understand_video([t2v[0]], [q], num_frames=3, video_mode="official", max_new_tokens=4)[0]
                   for q in ("what?", "what happens here?")]


class _Scripted(torch.nn.Module):
    """Wraps the model and forces a scripted token sequence per text generation (a random tiny model
    never chooses to open an image), so the interleaved control flow can be tested."""

    def __init__(self, model, plans):
        super().__init__()
        self.model, self.plans, self.plan, self.k = model, list(plans), None, 0
        self.config = model.config
        self.encode_visual = model.encode_visual

    def forward(self, input_ids, **kw):
        out = self.model(input_ids, **kw)
        if kw.get("compute_logits", True) and out.logits is not None and not kw.get("compute_flow", True):
            if kw.get("past_key_values") is None:  # prefill = a new text segment
                self.plan, self.k = self.plans.pop(0), 0
            tok = self.plan[min(self.k, len(self.plan) - 1)]
            self.k += 1
            out.logits = out.logits.clone()
            out.logits[..., tok] = 1e4
        return out


def test_mixed_modality_story(pipe, tmp_path):
    sp = pipe.special
    real = pipe.model
    pipe.model = _Scripted(real, [[5, 6, sp.boi], [7, sp.boi], [8, 9, sp.eos]])
    try:
        story = pipe.mixed_modality("a story", rounds=4, num_steps=3, max_new_tokens=10, history_t=0.0)
    finally:
        pipe.model = real
    kinds = [k for k, _ in story.segments]
    assert kinds == ["text", "image", "text", "image", "text"] and story.finished
    paths = story.save(tmp_path)
    assert "<img" in paths["html"].read_text() and "![image 2]" in paths["markdown"].read_text()
    assert (tmp_path / "story_image1.png").is_file()


def test_pipeline_bad_inputs(pipe, tmp_path):
    from generation.pipeline import InputError

    with pytest.raises(InputError, match="empty prompt"):
        pipe.text_to_image(["ok", "  "], num_steps=2, progress=False)
    with pytest.raises(InputError, match="multiple of 16"):
        pipe.text_to_image(["ok"], num_steps=2, resolution=100, progress=False)
    with pytest.raises(InputError, match="image not found"):
        pipe.understand([str(tmp_path / "nope.png")], ["q"])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="cannot read image"):
        pipe.understand([str(bad)], ["q"])
    with pytest.raises(InputError, match="cannot read video"):
        pipe.understand_video([str(tmp_path / "nope.mp4")], ["q"], num_frames=5)
    garbage = tmp_path / "bad.mp4"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match="cannot read video"):
        pipe.understand_video([str(garbage)], ["q"], num_frames=5)
    with pytest.raises(InputError, match="num_frames"):
        pipe.text_to_video(["a"], num_frames=4, progress=False)
    with pytest.raises(InputError, match="sampler"):
        pipe.text_to_image(["a"], num_steps=2, sampler="rk45", progress=False)


# ------------------------------------------------------------------------------------------ entry points (in-process)
def _run(main, argv):
    from generation.cli import run_entry_point

    return run_entry_point(main, argv)


def test_entry_t2i(export, tmp_path):
    import inference_t2i

    out = tmp_path / "t2i"
    rc = _run(inference_t2i.main, [f"model_path={export}", f"resolution={RES}", "prompts=a red circle|the cat",
                                   "num_inference_steps=3", "batch_size=2", f"outdir={out}", "progress=false",
                                   "sampler=heun"])
    assert rc == 0
    rec = json.loads((out / "results.json").read_text())
    assert rec["prompts"] == ["a red circle", "the cat"] and rec["seeds"] == [0, 1]
    assert all((out / f).is_file() for f in rec["files"]) and (out / "grid.png").is_file()


def test_entry_mmu_video_mixed(export, tmp_path, image_file):
    import inference_mixed_modality
    import inference_mmu
    import inference_video

    video = ROOT / "tests" / "fixtures" / "media" / "video1.mp4"
    out = tmp_path / "mmu"
    assert _run(inference_mmu.main, [f"model_path={export}", f"resolution={RES}", f"images={image_file}",
                                     f"videos={video}", "num_frames=5", "questions=what? *** why?",
                                     "max_new_tokens=4", f"outdir={out}"]) == 0
    rec = json.loads((out / "answers.json").read_text())["answers"]
    assert len(rec) == 4 and {"image", "video"} <= {k for r in rec for k in r}
    out = tmp_path / "vid"
    assert _run(inference_video.main, [f"model_path={export}", f"resolution={RES}", "mode=i2v",
                                       f"images={image_file}", "prompts=a cat", "num_frames=5",
                                       "num_inference_steps=3", f"outdir={out}", "progress=false"]) == 0
    files = json.loads((out / "results.json").read_text())["files"]
    assert (out / files[0]).is_file() and files[0].endswith((".mp4", ".gif"))
    out = tmp_path / "mixed"
    assert _run(inference_mixed_modality.main, [f"model_path={export}", f"resolution={RES}", "rounds=2",
                                                "num_inference_steps=3", "max_new_tokens=6", f"outdir={out}"]) == 0
    assert (out / "story0.md").is_file() and (out / "story0.html").is_file()


def test_entry_bad_inputs(export, tmp_path, capsys, image_file):
    import inference_mmu
    import inference_t2i

    base = [f"model_path={export}", f"outdir={tmp_path}", "progress=false"]
    cases = [
        (inference_t2i.main, base + ["prompts=a", "foo=1"], "unknown config key 'foo'"),
        (inference_t2i.main, base + ["prompts=a", "resolution=100"], "multiple of 16"),
        (inference_t2i.main, base + ["prompts= | "], "no prompts"),
        (inference_t2i.main, [f"model_path={tmp_path}/missing", "prompts=a"], "does not exist"),
        (inference_mmu.main, [f"model_path={export}", f"images={tmp_path}/nope.png", f"outdir={tmp_path}"],
         "image not found"),
        (inference_mmu.main, [f"model_path={export}", f"videos={tmp_path}/nope.mp4", f"outdir={tmp_path}"],
         "video not found"),
    ]
    for main, argv, msg in cases:
        assert _run(main, argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert err and err[-1].startswith("error:") and msg in err[-1], (argv, err)
        assert "Traceback" not in "\n".join(err)
    with pytest.raises(SystemExit) as e:
        inference_t2i.main(["--help"])
    assert e.value.code == 0 and "guidance_scale" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ subprocesses
def _subprocess(script: str, args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.ci_e2e
def test_subprocess_t2i_end_to_end(export, tmp_path):
    out = tmp_path / "t2i"
    r = _subprocess("inference_t2i.py", [f"model_path={export}", f"resolution={RES}", "prompts=a red circle|a mat",
                                         "num_inference_steps=3", f"outdir={out}", "progress=false"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(json.loads((out / "results.json").read_text())["files"]) == 2
    r = _subprocess("inference_t2i.py", [f"model_path={export}", "prompts=a", "resolution=100", f"outdir={out}"])
    assert r.returncode == 2 and "Traceback" not in r.stderr and "multiple of 16" in r.stderr


@pytest.mark.slow
def test_subprocess_other_entry_points(export, tmp_path, image_file):
    r = _subprocess("inference_mmu.py", [f"model_path={export}", f"resolution={RES}", f"images={image_file}",
                                         "questions=what?", "max_new_tokens=4", f"outdir={tmp_path}/mmu"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "mmu" / "answers.json").is_file()
    r = _subprocess("inference_video.py", [f"model_path={export}", f"resolution={RES}", "prompts=a cat",
                                           "num_frames=5", "num_inference_steps=2", f"outdir={tmp_path}/vid",
                                           "progress=false"])
    assert r.returncode == 0, r.stderr[-2000:]
    r = _subprocess("inference_mixed_modality.py", [f"model_path={export}", f"resolution={RES}", "rounds=1",
                                                    "num_inference_steps=2", "max_new_tokens=4",
                                                    f"outdir={tmp_path}/mm"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "mm" / "story0.html").is_file()


def test_from_training_and_seed_kwarg(pipe, export):
    """training/loop.py builds a pipeline around the in-memory model for its periodic sample grids."""
    from omegaconf import OmegaConf

    from generation.pipeline import Showo2Pipeline

    cfg = OmegaConf.create({"data": {"tokenizer": str(export)}, "generation": {"seed": 3}})
    p2 = Showo2Pipeline.from_training(pipe.model, pipe.vae, cfg)
    assert p2.resolution == RES  # tiny model: 4x4 token grid x 16
    a = p2.text_to_image_latents(["a red circle", "a mat"], num_steps=2, seed=3, progress=False)
    b = pipe.text_to_image_latents(["a red circle", "a mat"], num_steps=2, seeds=[3, 4], progress=False)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
