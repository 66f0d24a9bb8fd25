"""Shapes mini-benchmark: the pixel checker passes ground truth and fails corrupted images; the runner
generates (fake pipeline), resumes, scores image folders and answer files, and writes its outputs."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from datasets import shapes
from evaluation import shapes_bench as sb


class RenderingPipe:
    """Fake pipeline: draws exactly what the caption says (seeded layout); answers a fixed word."""

    def __init__(self, answer: str = "Red.") -> None:
        self.t2i_calls = 0
        self.answer = answer

    def text_to_image(self, prompts: list[str], *, seeds: list[int] | None = None, resolution: int | None = None,
                      **kw: Any) -> list[Image.Image]:
        self.t2i_calls += 1
        out = []
        for p, s in zip(prompts, seeds or [0] * len(prompts)):
            objs = shapes.layout_scene(shapes.parse_caption(p), random.Random(s))
            out.append(shapes.render_scene(objs, resolution or 64))
        return out

    def understand(self, images: list, questions: list[str], **kw: Any) -> list[str]:
        assert all(isinstance(im, Image.Image) for im in images) and len(images) == len(questions)
        return [self.answer] * len(questions)

    def understand_video(self, videos: list, questions: list[str], num_frames: int = 5, **kw: Any) -> list[str]:
        """Answers direction questions from the motion of the non-white centroid (first vs last frame)."""
        out = []
        for v in videos:
            if isinstance(v, str):
                from utils.media import read_video_frames

                v = read_video_frames(v, None)
            ys0, xs0 = np.nonzero((v[0] < 200).any(-1))
            ys1, xs1 = np.nonzero((v[-1] < 200).any(-1))
            dx, dy = xs1.mean() - xs0.mean(), ys1.mean() - ys0.mean()
            out.append(("Right." if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "UP"))
        return out


def test_checker_ground_truth_and_corruptions() -> None:
    prompts = sb.default_prompt_set()[::3]
    acc = sb.validate_checker(prompts, resolutions=(64,), reps=1)
    for kind, v in acc.items():
        if kind == "ground_truth" or kind.startswith("gt_"):
            assert v["accuracy"] >= 0.99, (kind, v)
        else:
            assert v["accuracy"] <= 0.02, (kind, v)
    assert {"wrong_color", "wrong_shape", "wrong_count", "swapped", "blank", "noise"} <= set(acc)


def test_detect_objects_details() -> None:
    objs = [shapes.Placed("triangle", "blue", 0.25, 0.5, 0.3), shapes.Placed("square", "yellow", 0.75, 0.5, 0.25),
            shapes.Placed("circle", "green", 0.5, 0.15, 0.22)]
    for res in (64, 432):  # large images are analysed at <= 128 px
        dets = sb.detect_objects(shapes.render_scene(objs, res))
        got = {(d.color, d.shape) for d in dets}
        assert got == {("blue", "triangle"), ("yellow", "square"), ("green", "circle")}
    assert sb.check_image(shapes.render_scene(objs, 64), "a blue triangle to the left of a yellow square")["correct"]
    assert not sb.check_image(shapes.render_scene(objs, 64), "a blue triangle to the right of a square")["correct"]
    assert sb.check_image(shapes.render_scene(objs, 64), "a circle above a square")["correct"]
    assert not sb.check_image(shapes.render_scene(objs, 64), "a circle", strict=True)["correct"]


def test_normalize_answer() -> None:
    assert sb.normalize_answer(" The Red.") == "red"
    assert sb.normalize_answer("3") == sb.normalize_answer("Three!") == "three"
    assert sb.normalize_answer("Yes,") == "yes"


def test_default_sets_match_files() -> None:
    rows = [json.loads(x) for x in sb.DEFAULT_PROMPTS.read_text().splitlines()]
    assert rows == sb.default_prompt_set()
    assert {r["tag"] for r in rows} == set(sb.CATEGORIES)
    qs = [json.loads(x) for x in sb.DEFAULT_QUESTIONS.read_text().splitlines()]
    assert qs == sb.default_question_set()


def test_run_generate_resume_and_score(tmp_path: Path) -> None:
    pipe = RenderingPipe(answer="Red.")
    argv = [f"outdir={tmp_path}", "max_items=40", "n_samples=2", "batch_size=4", "holdout=blue triangle"]
    summ = sb.main(argv, pipe=pipe)
    gen = summ["generation"]
    assert gen["overall"] == 1.0 and gen["n"] == 80
    # layout: GenEval-style folders; understanding scored against "red"
    assert sorted(p.name for p in (tmp_path / "images" / "00000" / "samples").iterdir()) == ["00000.png", "00001.png"]
    qs = [json.loads(x) for x in sb.DEFAULT_QUESTIONS.read_text().splitlines()][:40]
    want = sum(q["answer"] == "red" for q in qs) / 40
    res = [json.loads(x) for x in (tmp_path / "understanding_results.jsonl").read_text().splitlines()]
    assert abs(sum(r["correct"] for r in res) / 40 - want) < 1e-9
    assert json.loads((tmp_path / "summary.json").read_text())["generation"]["overall"] == 1.0
    # resume: nothing left to generate
    calls = pipe.t2i_calls
    sb.main(argv, pipe=pipe)
    assert pipe.t2i_calls == calls


def test_score_existing_images_and_answers(tmp_path: Path) -> None:
    # a folder of blank images scores 0; a gold answer file (with noise in case/punctuation) scores 1
    prompts = sb.default_prompt_set()[:6]
    pf = tmp_path / "p.jsonl"
    pf.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    for i in range(6):
        d = tmp_path / "imgs" / f"{i:05d}" / "samples"
        d.mkdir(parents=True)
        Image.new("RGB", (64, 64), "white").save(d / "00000.png")
    qs = sb.default_question_set(10)
    qf = tmp_path / "q.jsonl"
    qf.write_text("".join(json.dumps(q) + "\n" for q in qs))
    af = tmp_path / "a.jsonl"
    af.write_text("".join(json.dumps({"id": q["id"], "answer": q["answer"].upper() + "."}) + "\n" for q in qs))
    summ = sb.main([f"outdir={tmp_path / 'out'}", f"prompts={pf}", f"images={tmp_path / 'imgs'}", f"questions={qf}",
                    f"answers={af}"])
    assert summ["generation"]["overall"] == 0.0
    assert summ["understanding"]["overall"] == 1.0


def test_world_eval_json_as_questions(tmp_path: Path) -> None:
    paths = shapes.write_shapes_world(tmp_path / "w", n_train=4, n_eval=6, n_videos=1, n_stories=1)
    items = sb.load_questions(paths["llava_eval"])
    assert len(items) == 6 and all(Path(i["image_path"]).is_file() for i in items)
    summ = sb.main([f"outdir={tmp_path / 'o'}", "prompts=", f"questions={paths['llava_eval']}"],
                   pipe=RenderingPipe("yes"))
    assert 0.0 <= summ["understanding"]["overall"] <= 1.0


def test_video_questions(tmp_path: Path) -> None:
    rows = [json.loads(x) for x in sb.DEFAULT_VIDEO_QUESTIONS.read_text().splitlines()]
    assert rows == sb.default_video_question_set()
    summ = sb.main([f"outdir={tmp_path / 'o'}", "prompts=", "questions=", f"video_questions={sb.DEFAULT_VIDEO_QUESTIONS}",
                    "max_items=12"], pipe=RenderingPipe())
    assert summ["understanding"]["categories"]["direction"] == {"accuracy": 1.0, "n": 12}
    paths = shapes.write_shapes_world(tmp_path / "w", n_train=2, n_eval=2, n_videos=10, n_stories=1)
    summ = sb.main([f"outdir={tmp_path / 'o2'}", "prompts=", "questions=", f"video_questions={paths['video_qa_eval']}"],
                   pipe=RenderingPipe())
    assert summ["understanding"]["overall"] == 1.0 and summ["understanding"]["n"] == 1


def test_cli_validate_checker(tmp_path: Path) -> None:
    summ = sb.main([f"outdir={tmp_path}", "validate_checker=true", "max_items=6"])
    val = summ["checker_validation"]
    assert val["ground_truth"]["accuracy"] == 1.0 and val["blank"]["accuracy"] == 0.0
