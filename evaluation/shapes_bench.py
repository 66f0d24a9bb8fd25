"""Shapes mini-benchmark: GenEval-like generation checks and one-word understanding questions on
the synthetic shapes world (``datasets/shapes.py``), scored by a deterministic pixel-level checker.

Generation categories (as in GenEval): single_object ("a triangle"), colors ("a green square"),
counting ("three circles", "two red squares"), two_object ("a circle and a square"), position
("a circle to the left of a square"), color_attr ("a red circle and a blue square"). Overall =
unweighted mean of the category accuracies (fraction of correct images).

The checker (:func:`detect_objects`, :func:`check_image`):

1. every pixel is assigned to the nearest of {white background, 4 palette colours} if its RGB
   distance is at most ``tol``, else to "other";
2. 4-connected components per palette colour with area >= ``min_area`` (fraction of the image)
   are objects;
3. shape = nearest prototype in (bounding-box fill ratio, smallest half-box area fraction, emptiest
   and fullest corner cell): square (1, .5, 1, 1), circle (pi/4, .5, .3, .3), triangle (.52, .26, 0, .85);
4. the caption's objects are matched (colour when the caption names one, shape always); count
   must be exact; relations compare centroids with a margin (fraction of the image size).

Understanding: questions with one-word answers, exact match after normalisation (lowercase, no
punctuation, no leading article, digits -> number words).

CLI (``python -m evaluation.shapes_bench --help``):
  generate + score:   model_path=CKPT outdir=OUT
  score images only:  images=DIR (GenEval layout: DIR/<00000>/samples/<00000>.png)
  score answers only: answers=FILE.jsonl ({"id", "answer"} per line)
Writes ``OUT/generation_results.jsonl``, ``OUT/understanding_results.jsonl``, ``OUT/summary.json``.
"""

from __future__ import annotations

import json
import math
import random
import re
import string
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from datasets.shapes import (
    COLORS,
    DIRECTIONS,
    NUMBER_WORDS,
    PALETTE,
    REL_INVERSE,
    SHAPES,
    Holdout,
    ObjSpec,
    Placed,
    SceneSpec,
    is_held_out,
    layout_scene,
    make_questions,
    parse_caption,
    parse_holdout,
    relation_holds,
    render_scene,
    render_video,
    video_track,
)
from evaluation.common import (
    geneval_prompt_complete,
    geneval_prompt_dir,
    read_jsonl,
    sample_seeds,
    write_geneval_prompt,
)

__all__ = [
    "Detection", "detect_objects", "classify_shape", "check_image", "default_prompt_set", "default_question_set",
    "normalize_answer", "palette_labels", "score_generation", "score_understanding", "summarize", "format_table", "run_benchmark",
    "main", "CATEGORIES",
]

CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
HERE = Path(__file__).resolve().parent
DEFAULT_PROMPTS = HERE / "shapes" / "prompts.jsonl"
DEFAULT_QUESTIONS = HERE / "shapes" / "questions.jsonl"
DEFAULT_VIDEO_QUESTIONS = HERE / "shapes" / "video_questions.jsonl"
GRID_QUESTION_SETS = (2, 4)  # grid layouts with a committed question set (questions_grid<N>.jsonl)


def question_file(grid: int = 0) -> Path:
    """The committed understanding question set for a world layout (0 = free placement)."""
    if grid and grid not in GRID_QUESTION_SETS:
        raise ValueError(f"no question set for grid={grid}; committed sets: free (0) and {list(GRID_QUESTION_SETS)}")
    return DEFAULT_QUESTIONS if not grid else HERE / "shapes" / f"questions_grid{grid}.jsonl"

# Shape prototypes in (fill ratio of the bounding box, smallest fraction of the area in one half of
# the box, emptiest and fullest corner cell (a quarter of the box side)). An axis-aligned triangle has
# only 1/4 of its area in its apex half and empty apex-side corners; a circle has all four corners
# about 30% full; a square's corners stay full even when blur rounds them (fill alone would not).
_PROTOTYPES = {"square": (1.0, 0.5, 1.0, 1.0), "circle": (math.pi / 4, 0.5, 0.3, 0.3),
               "triangle": (0.52, 0.26, 0.0, 0.85)}


@dataclass
class Detection:
    """One detected object; centre and box in fractions of the image size."""

    color: str
    shape: str
    cx: float
    cy: float
    area: float          # fraction of the image
    bbox: tuple[float, float, float, float]
    fill: float
    half: float
    corner_min: float
    corner_max: float


# ----------------------------------------------------------------------------------------------
# Pixel checker.
def palette_labels(arr: np.ndarray, tol: float) -> np.ndarray:
    """Per pixel: index into COLORS, -1 for background/other (nearest colour within ``tol``)."""
    refs = np.array([PALETTE[c] for c in COLORS] + [(255, 255, 255)], dtype=np.float32)
    x = arr.reshape(-1, 3).astype(np.float32)
    # squared distances via |x|^2 - 2 x.r + |r|^2 (one small matmul instead of an (H, W, 5, 3) tensor)
    d2 = (x * x).sum(1, keepdims=True) - 2.0 * x @ refs.T + (refs * refs).sum(1)
    nearest = d2.argmin(1)
    ok = d2[np.arange(len(x)), nearest] <= tol * tol
    return np.where(ok & (nearest < len(COLORS)), nearest, -1).reshape(arr.shape[:2])


def _components(mask: np.ndarray) -> np.ndarray:
    """4-connected component labels of a bool mask (0 = off, else 1 + flat index of a root pixel).

    Pure NumPy (no SciPy in the environment): min-label propagation with pointer jumping, so it
    converges in a few dozen vectorised steps for the compact blobs we care about."""
    h, w = mask.shape
    big = h * w
    idx = np.arange(h * w).reshape(h, w)
    lab = np.where(mask, idx, big)
    while True:
        m = lab.copy()
        m[1:, :] = np.minimum(m[1:, :], lab[:-1, :])
        m[:-1, :] = np.minimum(m[:-1, :], lab[1:, :])
        m[:, 1:] = np.minimum(m[:, 1:], lab[:, :-1])
        m[:, :-1] = np.minimum(m[:, :-1], lab[:, 1:])
        m = np.where(mask, m, big)
        flat = np.append(m.ravel(), big)
        for _ in range(4):  # pointer jumping: follow label -> label of that pixel
            m = np.where(mask, flat[m], big)
            flat = np.append(m.ravel(), big)
        if np.array_equal(m, lab):
            break
        lab = m
    return np.where(mask, lab + 1, 0)


def classify_shape(mask: np.ndarray) -> tuple[str, tuple[float, float, float, float]]:
    """(shape, (fill ratio, half fraction, min corner fill, max corner fill)) of one component's mask."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = mask[y0:y1, x0:x1].astype(np.float64)
    area = crop.sum()
    fill = area / crop.size
    hh, hw = crop.shape[0] / 2, crop.shape[1] / 2
    # area in each half (a middle row/column of an odd box is split evenly)
    rows, cols = crop.sum(1), crop.sum(0)

    def half_mass(v: np.ndarray, mid: float) -> float:
        i = np.arange(len(v)) + 0.5
        wgt = np.clip(mid - (i - 0.5), 0, 1)
        return float((v * wgt).sum())

    top, left = half_mass(rows, hh), half_mass(cols, hw)
    half = min(top, area - top, left, area - left) / area
    h, w = crop.shape
    bh, bw = max(1, round(h / 4)), max(1, round(w / 4))
    cells = [crop[:bh, :bw].mean(), crop[:bh, -bw:].mean(), crop[-bh:, :bw].mean(), crop[-bh:, -bw:].mean()]
    feats = (float(fill), float(half), float(min(cells)), float(max(cells)))
    shape = min(_PROTOTYPES, key=lambda s: sum((f - p) ** 2 for f, p in zip(feats, _PROTOTYPES[s])))
    return shape, feats


def detect_objects(image: Image.Image | np.ndarray, *, tol: float = 80.0, min_area: float = 0.01,
                   max_size: int = 128) -> list[Detection]:
    """Find palette-coloured objects on the white background (see module docstring)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image = image.convert("RGB")
    if max(image.size) > max_size:  # nearest keeps colours exact; thresholds are size fractions
        scale = max_size / max(image.size)
        image = image.resize((max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale))),
                             Image.NEAREST)
    arr = np.asarray(image)
    h, w = arr.shape[:2]
    labels = palette_labels(arr, tol)
    dets: list[Detection] = []
    for ci, color in enumerate(COLORS):
        mask = labels == ci
        if mask.sum() < min_area * h * w:
            continue
        comp = _components(mask)
        ids, counts = np.unique(comp[comp > 0], return_counts=True)
        for cid, cnt in zip(ids, counts):
            if cnt < min_area * h * w:
                continue
            m = comp == cid
            ys, xs = np.nonzero(m)
            shape, feats = classify_shape(m)
            dets.append(Detection(color, shape, float(xs.mean() + 0.5) / w, float(ys.mean() + 0.5) / h,
                                  float(cnt) / (h * w),
                                  (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h), *feats))
    dets.sort(key=lambda d: (d.cy, d.cx))
    return dets


def _matches(d: Detection, o: ObjSpec) -> bool:
    return d.shape == o.shape and (o.color is None or d.color == o.color)


def check_image(image: Image.Image | np.ndarray, spec: SceneSpec | dict | str, *, margin: float = 0.1,
                strict: bool = False, tol: float = 80.0, min_area: float = 0.01) -> dict[str, Any]:
    """Judge one image against a caption spec (or a caption string / spec dict).

    GenEval-like semantics: the named objects must be present (``count`` scenes: exactly ``count``
    matching objects); extra objects are allowed unless ``strict`` (then the total number of
    detected objects must equal the number the caption implies). Returns ``{"correct", "reason",
    "detections"}``.
    """
    if isinstance(spec, str):
        spec = parse_caption(spec)
    elif isinstance(spec, dict):
        spec = SceneSpec.from_dict(spec)
    dets = detect_objects(image, tol=tol, min_area=min_area)
    ok, reason = True, "ok"
    a = spec.objects[0]
    if spec.kind == "single":
        if not any(_matches(d, a) for d in dets):
            ok, reason = False, f"no {a.phrase()}"
    elif spec.kind == "count":
        n = sum(_matches(d, a) for d in dets)
        if n != spec.count:
            ok, reason = False, f"{n} x {a.phrase()} (want {spec.count})"
    else:
        b = spec.objects[1]
        pairs = [(i, j) for i, di in enumerate(dets) for j, dj in enumerate(dets)
                 if i != j and _matches(di, a) and _matches(dj, b)]
        if not pairs:
            have_a = any(_matches(d, a) for d in dets)
            ok, reason = False, f"missing {b.phrase() if have_a else a.phrase()}"
        elif spec.kind == "relation":
            if not any(relation_holds((dets[i].cx, dets[i].cy), (dets[j].cx, dets[j].cy), spec.relation, margin,
                                      dominant=False) for i, j in pairs):
                ok, reason = False, f"relation '{spec.relation}' does not hold"
    if ok and strict and len(dets) != spec.num_objects:
        ok, reason = False, f"{len(dets)} objects detected (strict: want {spec.num_objects})"
    return {"correct": ok, "reason": reason, "detections": [asdict(d) for d in dets]}


# ----------------------------------------------------------------------------------------------
# Fixed prompt and question sets (deterministic; the files under evaluation/shapes/ are their output).
def default_prompt_set(per_category: int = 24, seed: int = 0) -> list[dict[str, Any]]:
    """GenEval-like prompt list: ``{"tag", "prompt", "spec"}``. Small categories are enumerated in full,
    large ones subsampled to ``per_category`` with a fixed seed."""
    rng = random.Random(f"shapes-bench/{seed}")
    cats: dict[str, list[SceneSpec]] = {
        "single_object": [SceneSpec("single", (ObjSpec(s),)) for s in SHAPES],
        "colors": [SceneSpec("single", (ObjSpec(s, c),)) for c in COLORS for s in SHAPES],
        "counting": [SceneSpec("count", (ObjSpec(s),), count=n) for n in (2, 3) for s in SHAPES]
        + [SceneSpec("count", (ObjSpec(s, c),), count=n) for n in (2, 3) for c in COLORS for s in SHAPES],
        "two_object": [SceneSpec("pair", (ObjSpec(s1), ObjSpec(s2))) for s1 in SHAPES for s2 in SHAPES if s1 != s2],
        "position": [SceneSpec("relation", (ObjSpec(s1), ObjSpec(s2)), relation=r)
                     for s1 in SHAPES for s2 in SHAPES if s1 != s2 for r in REL_INVERSE],
        "color_attr": [SceneSpec("pair", (ObjSpec(s1, c1), ObjSpec(s2, c2)))
                       for s1 in SHAPES for s2 in SHAPES if s1 != s2 for c1 in COLORS for c2 in COLORS if c1 != c2],
    }
    out = []
    for tag in CATEGORIES:
        specs = cats[tag]
        if len(specs) > per_category:
            specs = rng.sample(specs, per_category)
        out += [{"tag": tag, "prompt": s.caption(), "spec": s.to_dict()} for s in specs]
    return out


def default_question_set(n: int = 240, seed: int = 0, grid: int = 0) -> list[dict[str, Any]]:
    """Understanding questions ``{"id", "question", "answer", "category", "caption", "scene"}``; the
    image is rendered from ``scene`` (placed objects, resolution-free) at scoring time. ``grid``: the
    world's layout (``datasets.shapes.layout_scene``): 0 free placement, N one object per grid cell."""
    from datasets.shapes import _sample_scene  # the world's own scene sampler

    out = []
    for i in range(n):
        rng = random.Random(f"shapes-bench-q/{seed}/{i}")
        spec, objs = _sample_scene(rng, (), 0.0, grid=grid)
        q, a, cat = make_questions(spec, objs, rng, 1)[0]
        out.append({"id": f"q{i:04d}", "question": q, "answer": a, "category": cat, "caption": spec.caption(),
                    "scene": [asdict(o) for o in objs]})
    return out


def write_default_sets(directory: str | Path = HERE / "shapes") -> None:
    """Regenerate ``prompts.jsonl`` and ``questions.jsonl`` (kept in git so they never drift)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in default_prompt_set()))
    for grid in (0, *GRID_QUESTION_SETS):
        (d / question_file(grid).name).write_text("".join(json.dumps(r) + "\n" for r in default_question_set(grid=grid)))
    (d / "video_questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in default_video_question_set()))


def load_prompts(path: str | Path) -> list[dict[str, Any]]:
    """Prompt file: jsonl of ``{"tag", "prompt", "spec"?}`` (spec parsed from the prompt when absent),
    or a plain text file with one caption per line (tag = scene kind)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        rows = read_jsonl(path)
    else:
        rows = [{"prompt": line.strip()} for line in path.read_text().splitlines() if line.strip()]
    for r in rows:
        if "spec" not in r:
            spec = parse_caption(r["prompt"])
            r["spec"] = spec.to_dict()
            r.setdefault("tag", _tag_of(spec))
    return rows


def _tag_of(spec: SceneSpec) -> str:
    colored = all(o.color for o in spec.objects)
    return {"single": "colors" if colored else "single_object", "count": "counting",
            "pair": "color_attr" if colored else "two_object", "relation": "position"}[spec.kind]


def load_questions(path: str | Path, image_root: str | Path | None = None) -> list[dict[str, Any]]:
    """Question file: our jsonl (``scene`` rendered on the fly) or a LLaVA-style eval json from the
    shapes world (``image`` relative to ``image_root``, default ``<json dir>/images``)."""
    path = Path(path)
    if path.suffix == ".json":
        root = Path(image_root) if image_root else path.parent / "images"
        items = []
        for e in json.loads(path.read_text()):
            q = re.sub(r"<(image|video)>\n?", "", e["conversations"][0]["value"]).strip()
            media = {"video_path": str(root / e["video"])} if "video" in e else {"image_path": str(root / e["image"])}
            items.append({"id": e["id"], "question": q, "answer": e.get("answer", e["conversations"][1]["value"]),
                          "category": e.get("category", "all"), **media, "heldout": e.get("heldout")})
        return items
    return read_jsonl(path)


def question_image(item: dict[str, Any], resolution: int) -> Image.Image:
    if "image_path" in item:
        return Image.open(item["image_path"]).convert("RGB")
    return render_scene([Placed(**o) for o in item["scene"]], resolution)


def is_video_item(item: dict[str, Any]) -> bool:
    return "video_path" in item or "track" in item


def question_video(item: dict[str, Any], resolution: int) -> str | np.ndarray:
    """A video path (world eval json) or rendered frames ``(T, H, W, 3)`` uint8 of a stored track."""
    if "video_path" in item:
        return item["video_path"]
    return render_video([Placed(**o) for o in item["track"]], resolution)


def default_video_question_set(n: int = 48, num_frames: int = 5, seed: int = 0) -> list[dict[str, Any]]:
    """Direction questions on single-object clips (``track`` = the object per frame, resolution-free)."""
    out = []
    for i in range(n):
        rng = random.Random(f"shapes-bench-v/{seed}/{i}")
        direction = rng.choice(list(DIRECTIONS))
        track = video_track(rng, direction, num_frames, rng.choice(SHAPES), rng.choice(COLORS))
        out.append({"id": f"v{i:04d}", "question": "Which direction is the shape moving?", "answer": direction,
                    "category": "direction", "track": [asdict(p) for p in track]})
    return out


_ARTICLES = {"a", "an", "the"}


def normalize_answer(text: str) -> str:
    """Lowercase, strip punctuation and leading articles, digits -> number words, squash spaces."""
    t = text.lower().strip()
    t = t.translate(str.maketrans({c: " " for c in string.punctuation}))
    words = t.split()
    while words and words[0] in _ARTICLES:
        words = words[1:]
    words = [NUMBER_WORDS.get(int(w), w) if w.isdigit() else w for w in words]
    return " ".join(words)


# ----------------------------------------------------------------------------------------------
# Scoring and reporting.
def score_generation(prompts: Sequence[dict[str, Any]], images_dir: str | Path, *, holdouts: Sequence[Holdout] = (),
                     **check_kw: Any) -> list[dict[str, Any]]:
    """Check every ``<images_dir>/<00000>/samples/*.png`` against its prompt; one result per image."""
    results = []
    for i, p in enumerate(prompts):
        sdir = geneval_prompt_dir(images_dir, i) / "samples"
        files = sorted(sdir.glob("*.png")) if sdir.is_dir() else []
        if not files:
            results.append({"index": i, "tag": p["tag"], "prompt": p["prompt"], "file": None, "correct": False,
                            "reason": "no image", "detections": []})
        spec = SceneSpec.from_dict(p["spec"])
        held = bool(holdouts) and is_held_out(spec, None, holdouts)
        for f in files:
            r = check_image(Image.open(f), spec, **check_kw)
            results.append({"index": i, "tag": p["tag"], "prompt": p["prompt"], "file": str(f), "heldout": held, **r})
    return results


def score_understanding(items: Sequence[dict[str, Any]], answers: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for it in items:
        pred = answers.get(it["id"])
        ok = pred is not None and normalize_answer(pred) == normalize_answer(it["answer"])
        out.append({"id": it["id"], "category": it["category"], "question": it["question"], "answer": it["answer"],
                    "prediction": pred, "correct": bool(ok), **({"heldout": it["heldout"]} if it.get("heldout")
                                                                is not None else {})})
    return out


def summarize(results: Sequence[dict[str, Any]], key: str = "tag") -> dict[str, Any]:
    """Per-category accuracy, counts, and overall = unweighted mean of the category accuracies."""
    by: dict[str, list[bool]] = defaultdict(list)
    for r in results:
        by[r[key]].append(bool(r["correct"]))
    order = [c for c in CATEGORIES if c in by] + sorted(c for c in by if c not in CATEGORIES)
    cats = {c: {"accuracy": float(np.mean(by[c])), "n": len(by[c])} for c in order}
    summ: dict[str, Any] = {"categories": cats, "overall": float(np.mean([v["accuracy"] for v in cats.values()]))
                            if cats else 0.0, "n": len(results)}
    held = [r for r in results if r.get("heldout") is not None]
    if any(r["heldout"] for r in held):
        summ["heldout"] = float(np.mean([r["correct"] for r in held if r["heldout"]]))
        summ["seen"] = float(np.mean([r["correct"] for r in held if not r["heldout"]] or [0.0]))
    return summ


def format_table(summary: dict[str, Any], title: str) -> str:
    lines = [f"{title}", f"{'category':<16}{'accuracy':>10}{'n':>7}", "-" * 33]
    for c, v in summary["categories"].items():
        lines.append(f"{c:<16}{v['accuracy']:>10.4f}{v['n']:>7d}")
    lines.append("-" * 33)
    lines.append(f"{'overall':<16}{summary['overall']:>10.4f}{summary['n']:>7d}")
    for k in ("seen", "heldout"):
        if k in summary:
            lines.append(f"{k:<16}{summary[k]:>10.4f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Checker validation: rendered ground truth should pass, deliberately wrong images should fail.
# gt_* are harmless degradations a generator produces (should still pass); the rest should fail.
CORRUPTIONS = ("ground_truth", "gt_blur", "gt_jpeg", "gt_jitter", "wrong_color", "wrong_shape", "wrong_count", "missing_object", "swapped", "blank",
               "noise")


def _corrupt(kind: str, spec: SceneSpec, objs: list[Placed], rng: random.Random, res: int) -> Image.Image | None:
    """An image that should fail ``spec`` (None when the corruption does not apply to this spec)."""
    from dataclasses import replace

    if kind == "ground_truth":
        return render_scene(objs, res)
    if kind == "gt_blur":
        from PIL import ImageFilter

        return render_scene(objs, res).filter(ImageFilter.GaussianBlur(res / 64))
    if kind == "gt_jpeg":
        import io

        buf = io.BytesIO()
        render_scene(objs, res).save(buf, "JPEG", quality=70)
        return Image.open(buf).convert("RGB")
    if kind == "gt_jitter":
        arr = np.asarray(render_scene(objs, res)).astype(np.int16)
        arr = arr + np.random.default_rng(rng.randrange(2**32)).integers(-25, 26, arr.shape)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if kind == "blank":
        return Image.new("RGB", (res, res), (255, 255, 255))
    if kind == "noise":
        return Image.fromarray(np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (res, res, 3), np.uint8))
    if kind == "wrong_color":
        a = spec.objects[0]
        if a.color is None:
            return None
        new = rng.choice([c for c in COLORS if c != a.color])
        k = len(objs) if spec.kind == "count" else 1  # count scenes: every copy is the named object
        return render_scene([replace(o, color=new) for o in objs[:k]] + objs[k:], res)
    if kind == "wrong_shape":
        taken = {o.shape for o in spec.objects}
        new = rng.choice([s for s in SHAPES if s not in taken] or [s for s in SHAPES if s != spec.objects[0].shape])
        k = len(objs) if spec.kind == "count" else 1
        return render_scene([replace(o, shape=new) for o in objs[:k]] + objs[k:], res)
    if kind == "wrong_count":
        if spec.kind != "count":
            return None
        other = replace(spec, count=spec.count + rng.choice((-1, 1)))
        a = ObjSpec(objs[0].shape, objs[0].color)
        other = replace(other, objects=(a,))
        if other.count == 1:
            return render_scene(objs[:1], res)
        return render_scene(layout_scene(other, rng), res)
    if kind == "missing_object":
        if spec.kind not in ("pair", "relation"):
            return None
        return render_scene([objs[rng.randrange(2)]], res)
    if kind == "swapped":
        if spec.kind != "relation":
            return None
        a, b = objs
        return render_scene([replace(a, cx=b.cx, cy=b.cy), replace(b, cx=a.cx, cy=a.cy)], res)
    raise ValueError(kind)


def validate_checker(prompts: Sequence[dict[str, Any]] | None = None, resolutions: Sequence[int] = (64,),
                     reps: int = 1, seed: int = 0, **check_kw: Any) -> dict[str, dict[str, float]]:
    """Fraction of images judged correct per corruption kind (ground_truth and gt_* should be ~1,
    the others ~0)."""
    prompts = prompts if prompts is not None else default_prompt_set()
    hits: dict[str, list[bool]] = defaultdict(list)
    for res in resolutions:
        for rep in range(reps):
            for p in prompts:
                spec = SceneSpec.from_dict(p["spec"])
                rng = random.Random(f"validate/{seed}/{res}/{rep}/{p['prompt']}")
                objs = layout_scene(spec, rng)
                for kind in CORRUPTIONS:
                    img = _corrupt(kind, spec, objs, rng, res)
                    if img is not None:
                        hits[kind].append(check_image(img, spec, **check_kw)["correct"])
    return {k: {"accuracy": float(np.mean(v)), "n": len(v)} for k, v in hits.items()}


# ----------------------------------------------------------------------------------------------
# Running the benchmark.
DEFAULTS: dict[str, Any] = {
    "outdir": "outputs/shapes_bench",
    "prompts": str(DEFAULT_PROMPTS),     # "" skips the generation part
    "questions": str(DEFAULT_QUESTIONS),  # "" skips the understanding part
    "video_questions": "",               # e.g. evaluation/shapes/video_questions.jsonl (needs understand_video)
    "video_frames": 5,
    "image_root": "",                    # for LLaVA-style question json (default <json dir>/images)
    "images": "",                        # score this GenEval-layout folder instead of generating
    "answers": "",                       # score these answers ({"id","answer"} jsonl) instead of asking
    "model_path": "", "vae_path": "", "tokenizer_path": "", "device": "auto", "dtype": "auto",
    "n_samples": 4, "guidance_scale": 5.0, "num_steps": 50, "sampler": "euler", "seed": 0, "batch_size": 8,
    "resolution": 64,                    # image size for generation and for rendering question images
    "question_suffix": "",               # appended to each question, e.g. " Answer with one word."
    "max_new_tokens": 8,
    "max_items": -1,                     # first N prompts / questions only (smoke tests)
    "tol": 80.0, "min_area": 0.01, "margin": 0.1, "strict": False,
    "holdout": "",                       # comma-separated held-out compositions -> seen/heldout split
    "validate_checker": False,           # only validate the checker on rendered/corrupted images and exit
}

USAGE = """usage: python -m evaluation.shapes_bench [key=value ...]
  generate + score:   model_path=CKPT [outdir=OUT] [prompts=FILE] [questions=FILE]
  score images only:  images=DIR (GenEval layout) questions=""
  score answers only: answers=FILE.jsonl prompts=""
  validate checker:   validate_checker=true [resolution=64]
A model trained on the grid world (datasets/shapes.py grid=4) is asked about grid scenes:
  questions=evaluation/shapes/questions_grid4.jsonl
Writes OUT/generation_results.jsonl, OUT/understanding_results.jsonl, OUT/summary.json and prints tables."""


def generate_images(pipe: Any, prompts: Sequence[dict[str, Any]], outdir: str | Path, *, n_samples: int,
                    seed: int, batch_size: int, **t2i_kw: Any) -> None:
    """Sample ``n_samples`` images per prompt into the GenEval layout (resumable, seeded per prompt)."""
    todo = [i for i in range(len(prompts)) if not geneval_prompt_complete(outdir, i, n_samples)]
    per_call = max(1, batch_size // n_samples)
    for s in range(0, len(todo), per_call):
        idx = todo[s:s + per_call]
        texts = [prompts[i]["prompt"] for i in idx for _ in range(n_samples)]
        seeds = [x for i in idx for x in sample_seeds(seed, i, n_samples)]
        images = pipe.text_to_image(texts, seeds=seeds, batch_size=batch_size, progress=False, **t2i_kw)
        for j, i in enumerate(idx):
            write_geneval_prompt(outdir, i, {k: v for k, v in prompts[i].items()},
                                 images[j * n_samples:(j + 1) * n_samples])


def answer_questions(pipe: Any, items: Sequence[dict[str, Any]], *, resolution: int, suffix: str,
                     batch_size: int, max_new_tokens: int, num_frames: int = 5) -> dict[str, str]:
    """Greedy answers: image items through ``pipe.understand``, video items through ``pipe.understand_video``."""
    out: dict[str, str] = {}
    imgs = [it for it in items if not is_video_item(it)]
    vids = [it for it in items if is_video_item(it)]
    if imgs:
        answers = pipe.understand([question_image(it, resolution) for it in imgs],
                                  [it["question"] + suffix for it in imgs], max_new_tokens=max_new_tokens,
                                  temperature=0.0, batch_size=batch_size)
        out.update({it["id"]: a for it, a in zip(imgs, answers)})
    if vids:
        answers = pipe.understand_video([question_video(it, resolution) for it in vids],
                                        [it["question"] + suffix for it in vids], num_frames=num_frames,
                                        max_new_tokens=max_new_tokens, temperature=0.0)
        out.update({it["id"]: a for it, a in zip(vids, answers)})
    return out


def run_benchmark(cfg: dict[str, Any], pipe: Any = None) -> dict[str, Any]:
    """Run whatever ``cfg`` asks for (see DEFAULTS); ``pipe`` overrides loading from ``model_path``."""
    out = Path(cfg["outdir"])
    out.mkdir(parents=True, exist_ok=True)
    holdouts = parse_holdout(cfg.get("holdout") or None)
    check_kw = {k: cfg[k] for k in ("tol", "min_area", "margin", "strict")}
    n = cfg["max_items"] if cfg["max_items"] and cfg["max_items"] > 0 else None

    def get_pipe() -> Any:
        nonlocal pipe
        if pipe is None:
            from evaluation.common import load_pipeline

            pipe = load_pipeline(cfg["model_path"], cfg["vae_path"], cfg["tokenizer_path"], cfg["device"], cfg["dtype"])
        return pipe

    summary: dict[str, Any] = {"config": dict(cfg)}
    if cfg.get("validate_checker"):
        prompts = load_prompts(cfg["prompts"] or DEFAULT_PROMPTS)[:n]
        val = validate_checker(prompts, resolutions=(cfg["resolution"],), reps=2, **check_kw)
        summary["checker_validation"] = val
        print(f"checker validation at {cfg['resolution']} px (fraction judged correct; gt* should be 1, others 0)")
        for k, v in val.items():
            print(f"  {k:<16}{v['accuracy']:>8.4f}{v['n']:>6d}")
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary
    if cfg["prompts"]:
        prompts = load_prompts(cfg["prompts"])[:n]
        images_dir = Path(cfg["images"]) if cfg["images"] else out / "images"
        if not cfg["images"]:
            generate_images(get_pipe(), prompts, images_dir, n_samples=cfg["n_samples"], seed=cfg["seed"],
                            batch_size=cfg["batch_size"], guidance_scale=cfg["guidance_scale"],
                            num_steps=cfg["num_steps"], sampler=cfg["sampler"], resolution=cfg["resolution"])
        res = score_generation(prompts, images_dir, holdouts=holdouts, **check_kw)
        (out / "generation_results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in res))
        summary["generation"] = summarize(res, "tag")
        print(format_table(summary["generation"], "shapes generation (GenEval-style)"))
    items: list[dict[str, Any]] = []
    for key in ("questions", "video_questions"):  # one understanding table over both files
        if cfg[key]:
            items += load_questions(cfg[key], cfg["image_root"] or None)[:n]
    if items:
        if cfg["answers"]:
            answers = {r["id"]: r["answer"] for r in read_jsonl(cfg["answers"])}
        else:
            answers = answer_questions(get_pipe(), items, resolution=cfg["resolution"], suffix=cfg["question_suffix"],
                                       batch_size=cfg["batch_size"], max_new_tokens=cfg["max_new_tokens"],
                                       num_frames=cfg["video_frames"])
        res = score_understanding(items, answers)
        (out / "understanding_results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in res))
        summary["understanding"] = summarize(res, "category")
        print(format_table(summary["understanding"], "shapes understanding (exact match)"))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: Sequence[str] | None = None, pipe: Any = None) -> dict[str, Any]:
    from evaluation.common import load_eval_config
    from utils.config import to_plain

    cfg = to_plain(load_eval_config(argv, DEFAULTS, USAGE))
    return run_benchmark(cfg, pipe)


if __name__ == "__main__":
    main(sys.argv[1:])
