"""Fast unit tests of the demo helpers: step bookkeeping, report writer, VAE training tricks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from demo.report import loss_series, read_metrics, score_table_text, svg_line_plot, write_report
from demo.steps import StepRunner


def _tiny_wan(seed: int = 0):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(base_dim=4, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                            temperal_downsample=[False, True, True]).eval()


def test_fold_latent_standardisation_is_exact(tmp_path: Path):
    """Folding the per-channel affine keeps decode(encode(x)) and standardises WanVAE's latents."""
    from demo.vae_train import fold_latent_standardisation
    from models.vae import WanVAE

    torch.set_num_threads(1)
    vae = _tiny_wan()
    images = (torch.rand(6, 3, 16, 16) * 255).to(torch.uint8)
    x = images.float() / 127.5 - 1
    before = WanVAE(vae)
    rec0 = before.decode(before.encode(x, sample=False))
    with torch.no_grad():
        fold_latent_standardisation(vae, images)
    vae.save_pretrained(str(tmp_path / "vae"))
    after = WanVAE.load(tmp_path / "vae")
    z = after.encode(x, sample=False)
    rec1 = after.decode(z)
    torch.testing.assert_close(rec1, rec0, rtol=1e-3, atol=2e-4)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(16), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(dim=(0, 2, 3)), torch.ones(16), atol=1e-3, rtol=0)


def test_vae_gate_retrains_longer_with_the_next_seed_only_below_the_gate():
    from demo.vae_train import train_until

    def run(scores, retries):
        calls, it = [], iter(scores)
        out = train_until(lambda s, n: calls.append((s, n)) or {"seed": s}, lambda: next(it), seed=7, steps=600,
                          min_quality=0.95, retries=retries, retry_steps=900)
        return calls, out

    calls, out = run([1.0], retries=1)  # passes: trained once, exactly as without a gate
    assert calls == [(7, 600)] and out["attempts"] == [{"seed": 7, "steps": 600, "quality": 1.0}]
    calls, out = run([0.83, 0.99], retries=1)
    assert calls == [(7, 600), (1007, 900)] and out["seed"] == 1007
    assert [a["quality"] for a in out["attempts"]] == [0.83, 0.99]
    calls, out = run([0.5, 0.6, 0.7], retries=1)  # gives up after the retries, keeps the last VAE
    assert calls == [(7, 600), (1007, 900)] and len(out["attempts"]) == 2


def test_step_runner_skip_redo_and_fingerprint(tmp_path: Path, capsys):
    calls: list[str] = []

    def make(name):
        return lambda: calls.append(name) or {"name": name}

    def run_all(redo=(), a_settings=1):
        r = StepRunner(tmp_path, ("a", "b", "c"), redo=set(redo))
        r.run("a", make("a"), settings=a_settings)
        r.run("b", make("b"), settings=None)
        r.run("c", make("c"), settings=None, always=False)
        return r

    run_all()
    assert calls == ["a", "b", "c"]
    calls.clear()
    r = run_all()
    assert calls == [] and r.statuses() == {"a": "skipped", "b": "skipped", "c": "skipped"}
    assert r.records["a"].result == {"name": "a"}  # JSON result comes back from the marker
    calls.clear()
    run_all(redo={"b"})  # b and everything after it
    assert calls == ["b", "c"]
    calls.clear()
    run_all(a_settings=2)  # changed settings re-run the step and its successors
    assert calls == ["a", "b", "c"]
    calls.clear()
    run_all(redo={"all"})
    assert calls == ["a", "b", "c"]
    with pytest.raises(ValueError, match="unknown step"):
        StepRunner(tmp_path, ("a",), redo={"zzz"})
    # a failing step leaves no marker, so the next run retries it
    r = StepRunner(tmp_path, ("a", "b", "c"), redo={"b"})
    with pytest.raises(RuntimeError):
        r.run("b", lambda: (_ for _ in ()).throw(RuntimeError("boom")), settings=None)
    assert not (tmp_path / ".steps" / "b.json").exists()
    assert "b" in r.summary()


def test_report_writer(tmp_path: Path):
    from PIL import Image

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": i, "loss_flow": 2.0 / i, "loss_ntp": 5.0 / i, "lr": 1e-3}) + "\n"
                               for i in range(1, 60)) + '{"step": 60, "loss_fl')  # torn last line is skipped
    rows = read_metrics(metrics)
    assert len(rows) == 59
    series = loss_series(rows)
    assert set(series) == {"loss_flow", "loss_ntp"} and series["loss_flow"][0] == (1.0, 2.0)
    svg = svg_line_plot(series, "stage 1")
    assert svg.startswith("<svg") and svg.count("<polyline") == 4 and "stage 1" in svg
    assert "no data" in svg_line_plot({}, "empty")
    assert "<polyline" in svg_line_plot({"x": [(0, 0.0), (1, -1.0)]}, "non-positive", log_y=True)
    img = tmp_path / "a.png"
    Image.new("RGB", (64, 64), (220, 40, 40)).save(img)
    scores = {"generation": {"colors": 0.5, "overall": 0.5}, "understanding": {"color": 1.0, "overall": 1.0}}
    html, md = write_report({
        "scores": scores, "targets": {"generation": 0.9, "understanding": 0.95}, "curves": {"stage 1": series},
        "t2i": [{"prompt": "a red square <b>", "image": str(img), "correct": False, "note": "no square"}],
        "mmu": [{"image": str(img), "question": "What color?", "answer": "red", "target": "red", "correct": True}],
        "timings": {"world": 1.0}, "notes": ["n"], "config": {"a": 1},
    }, tmp_path / "out")
    text = html.read_text()
    assert "data:image/png;base64," in text and "<svg" in text and "a red square &lt;b&gt;" in text
    assert "| generation" in md.read_text()
    table = score_table_text(scores, {"generation": 0.9})
    assert "0.500" in table and ">= 0.90" in table


def test_targets_are_judged_on_the_value_not_its_rounded_text(tmp_path: Path):
    """0.9498 prints as 0.950 but misses a 0.95 target (the default demo run scored exactly that)."""
    scores = {"understanding": {"overall": 0.9498}, "generation": {"overall": 0.925}}
    rows = {r.split("|")[1].strip(): r for r in score_table_text(scores, {"understanding": 0.95, "generation": 0.9})
            .splitlines()[2:]}
    assert "0.950" in rows["understanding"] and rows["understanding"].rstrip(" |").endswith("no")
    assert rows["generation"].rstrip(" |").endswith("yes")
    html, _ = write_report({"scores": {"understanding": {"overall": 0.9498}}, "targets": {"understanding": 0.95}},
                           tmp_path / "r")
    cell = html.read_text().split("0.950</td><td>")[1].split("</td>")[0]
    assert "bad" in cell and "ok" not in cell


def _demo_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_script", Path(__file__).resolve().parents[1] / "demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_threads_auto_measures_the_cores_in_use_now():
    """threads=auto looks at CPU use over the last half second (not the 1-minute load average)."""
    import os
    import subprocess
    import sys

    m = _demo_script()
    assert m.resolve_threads(3) == 3 and m.resolve_threads("1") == 1
    if not Path("/proc/stat").is_file():
        pytest.skip("no /proc/stat")
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = m._busy_cores(0.5)
    finally:
        spin.kill()
        spin.wait()
    assert busy is not None and 0.5 < busy <= (os.cpu_count() or 1) + 1e-6
    assert m.resolve_threads("auto") in (1, os.cpu_count())


class _IdentityVAE:
    """A perfect 'VAE': the latent is the image itself."""

    def encode(self, x, sample=False):
        return x

    def decode(self, z):
        return z

    @staticmethod
    def to_uint8(x):
        from models.vae import WanVAE

        return WanVAE.to_uint8(x)


class _BlurVAE(_IdentityVAE):
    """Loses everything below 16 px (objects become blobs): far from the checker's ground truth."""

    def decode(self, z):
        small = torch.nn.functional.avg_pool2d(z, 16)
        return torch.nn.functional.interpolate(small, scale_factor=16, mode="nearest")


def test_vae_ceiling_is_one_for_a_perfect_round_trip_and_low_for_a_blurry_one():
    from demo.probes import vae_ceiling

    perfect = vae_ceiling(_IdentityVAE(), per_category=4)
    assert perfect["overall"] == 1.0 and set(perfect) >= {"single_object", "counting", "position", "overall"}
    assert vae_ceiling(_BlurVAE(), per_category=4)["overall"] < 0.3


class _PaintPipe:
    """Renders a square of the colour ``pick`` chooses from the prompt's colour word."""

    def __init__(self, pick):
        self.pick = pick

    def text_to_image(self, prompts, **kw):
        from datasets.shapes import PALETTE

        out = []
        for p in prompts:
            img = np.full((64, 64, 3), 255, np.uint8)
            img[20:40, 20:40] = PALETTE[self.pick(p.split()[1])]
            out.append(img)
        return out


def test_colour_adherence_scores_the_dominant_colour():
    from demo.probes import colour_adherence, dominant_colour

    assert colour_adherence(_PaintPipe(lambda c: c))["accuracy"] == 1.0
    assert colour_adherence(_PaintPipe(lambda c: "red"))["accuracy"] == 0.25  # one colour in four
    assert dominant_colour(np.full((8, 8, 3), 255, np.uint8)) is None


class _LookPipe:
    """Answers yes/no questions from what the benchmark's detector sees; ``bind`` = colour and shape on
    one object, otherwise the shape alone (the failure the probe is for)."""

    def __init__(self, bind: bool):
        self.bind = bind

    def understand(self, images, questions, **kw):
        from datasets.shapes import parse_yesno_question
        from evaluation.shapes_bench import detect_objects

        out = []
        for img, q in zip(images, questions):
            color, shape = parse_yesno_question(q)
            dets = detect_objects(img)
            hit = any(d.shape == shape and (d.color == color or not self.bind) for d in dets)
            out.append("Yes." if hit else "no")
        return out


def test_yesno_binding_tells_binding_from_shape_only_answers():
    from demo.probes import yesno_binding, yesno_items

    items = yesno_items(n=120, grid=2)
    kinds = {it["kind"] for it in items}
    assert kinds >= {"yes", "no_unrelated", "no_shape_present", "no_colour_present"}
    assert not any(it["question"] == "Is there a blue triangle?" and it["answer"] == "yes" for it in items)
    good = yesno_binding(_LookPipe(bind=True), items)
    assert good["overall"]["accuracy"] == 1.0 and good["overall"]["n"] == 120
    shape_only = yesno_binding(_LookPipe(bind=False), items)
    assert shape_only["yes"]["accuracy"] == 1.0 and shape_only["no_unrelated"]["accuracy"] == 1.0
    assert shape_only["no_colour_present"]["accuracy"] == 1.0
    assert shape_only["no_shape_present"]["accuracy"] == 0.0
