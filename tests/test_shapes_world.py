"""The synthetic shapes world: files readable in the real formats, deterministic, holdouts respected."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets import shapes

HOLDOUT = ["blue triangle", "circle above square", "three squares"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("world")
    return shapes.write_shapes_world(out, n_train=60, n_eval=20, n_videos=6, n_stories=4, resolution=64,
                                     video_frames=5, holdout=HOLDOUT, seed=3)


def test_image_text_jsonl(world: dict[str, str]) -> None:
    assert world["und_text"] == world["image_text"]  # no images of their own outside the canonical layout
    rows = [json.loads(line) for line in Path(world["image_text"]).read_text().splitlines()]
    assert len(rows) == 60
    for r in rows:
        assert set(r) == {"path", "prompt"}
        img = Image.open(r["path"])
        assert img.size == (64, 64) and img.mode == "RGB"
        shapes.parse_caption(r["prompt"])  # every caption is in the grammar
    kinds = {shapes.parse_caption(r["prompt"]).kind for r in rows}
    assert kinds == {"single", "pair", "relation", "count"}


def test_holdouts_absent_from_training(world: dict[str, str]) -> None:
    holdouts = shapes.parse_holdout(HOLDOUT)
    captions = [json.loads(line)["prompt"] for line in Path(world["image_text"]).read_text().splitlines()]
    captions += [c for s in json.loads(Path(world["vist"]).read_text()) for c in s["captions"]]
    captions += [json.loads(line)["prompt"] for line in Path(world["video_text"]).read_text().splitlines()]
    # nor in the conversations' text, not even as a pair that is absent
    conversations = json.loads(Path(world["llava_train"]).read_text())
    assert not any("blue triangle" in t["value"] for e in conversations for t in e["conversations"])
    assert any(t["value"].startswith("Is there") for e in conversations for t in e["conversations"])
    for c in captions:
        assert "blue triangle" not in c and "three squares" not in c and "three blue squares" not in c
        if "moving" not in c:
            assert not shapes.is_held_out(shapes.parse_caption(c.rstrip(".")), None, holdouts), c
    # image content too: no blue triangle pixels anywhere in training images (checked with the layout
    # sampler directly: many draws never produce a held-out scene)
    for i in range(300):
        spec, objs = shapes._sample_scene(random.Random(i), holdouts, 0.3)
        assert not shapes.is_held_out(spec, objs, holdouts)
        assert not any(o.color == "blue" and o.shape == "triangle" for o in objs)


def test_llava_json(world: dict[str, str]) -> None:
    root = Path(world["image_root"])
    train = json.loads(Path(world["llava_train"]).read_text())
    assert len(train) == 60
    for s in train:
        assert {"id", "image", "conversations"} <= set(s)
        conv = s["conversations"]
        assert conv[0]["from"] == "human" and conv[0]["value"].startswith("<image>\n")
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
        assert all(len(t["value"].split()) == 1 for t in conv[1::2])  # one-word answers
        assert (root / s["image"]).is_file()
    ev = json.loads(Path(world["llava_eval"]).read_text())
    assert len(ev) == 20 and all(e["answer"] == e["conversations"][1]["value"] for e in ev)
    assert {e["category"] for e in ev} <= {"count", "color", "shape", "yesno", "position"}


def test_video_and_vist(world: dict[str, str]) -> None:
    rows = [json.loads(line) for line in Path(world["video_text"]).read_text().splitlines()]
    assert len(rows) == 6
    for r in rows:
        frames = sorted(Path(r["frames_dir"]).glob("*.png"))
        assert len(frames) == r["num_frames"] == 5
        arr = [np.asarray(Image.open(f)) for f in frames]
        # the object moves in the stated direction: centroid of non-white pixels
        def centroid(a: np.ndarray) -> tuple[float, float]:
            ys, xs = np.nonzero((a < 250).any(-1))
            return xs.mean(), ys.mean()
        (x0, y0), (x1, y1) = centroid(arr[0]), centroid(arr[-1])
        dx, dy = shapes.DIRECTIONS[r["direction"]]
        assert (x1 - x0) * dx + (y1 - y0) * dy > 10
        assert r["direction"] in r["prompt"]
    root = Path(world["image_root"])
    stories = json.loads(Path(world["vist"]).read_text())
    for s in stories:
        assert len(s["images"]) == len(s["captions"]) == 4
        assert all(p.endswith(".jpg") and (root / p).is_file() for p in s["images"])


def test_deterministic_and_caption_roundtrip(tmp_path: Path) -> None:
    a = shapes.write_shapes_world(tmp_path / "a", n_train=8, n_eval=2, n_videos=1, n_stories=1, seed=5)
    b = shapes.write_shapes_world(tmp_path / "b", n_train=8, n_eval=2, n_videos=1, n_stories=1, seed=5)
    pa = [json.loads(x)["prompt"] for x in Path(a["image_text"]).read_text().splitlines()]
    pb = [json.loads(x)["prompt"] for x in Path(b["image_text"]).read_text().splitlines()]
    assert pa == pb
    for i in range(8):
        ia = np.asarray(Image.open(tmp_path / "a/images/t2i" / f"{i:06d}.png"))
        ib = np.asarray(Image.open(tmp_path / "b/images/t2i" / f"{i:06d}.png"))
        assert (ia == ib).all()
    # palette colours are exact (no anti-aliasing)
    cols = {tuple(c) for c in ia.reshape(-1, 3)}
    assert cols <= set(shapes.PALETTE.values()) | {shapes.BACKGROUND}
    for cap in ["a red circle", "two yellow triangles", "a circle to the left of a blue square",
                "a green square and a triangle", "three squares", "a blue triangle below a red circle"]:
        assert shapes.parse_caption(cap).caption() == cap


def test_cli(tmp_path: Path) -> None:
    paths = shapes.main([f"out={tmp_path}", "n_train=4", "n_eval=2", "n_videos=1", "n_stories=1",
                         "resolution=32", "holdout=green circle,two squares"])
    man = json.loads(Path(paths["manifest"]).read_text())
    assert man["config"]["holdout"] == ["green circle", "two squares"] and man["config"]["resolution"] == 32
    assert Image.open(json.loads(Path(paths["image_text"]).read_text().splitlines()[0])["path"]).size == (32, 32)


def test_videos_readable_by_media_loader(world: dict[str, str]) -> None:
    media = pytest.importorskip("utils.media")
    man = json.loads(Path(world["manifest"]).read_text())
    rows = [json.loads(line) for line in Path(world["video_text"]).read_text().splitlines()]
    for r in rows[:2]:
        frames = media.read_video_frames(r["path"], None)
        assert frames.shape == (5, 64, 64, 3), (man["video_format"], frames.shape)
        ref = np.asarray(Image.open(sorted(Path(r["frames_dir"]).glob("*.png"))[0])).astype(int)
        assert np.abs(frames[0].astype(int) - ref).mean() < 12  # lossy codec, flat colours survive


def test_holdout_patterns() -> None:
    hs = shapes.parse_holdout("red circle left of square, two red circles ,green")
    assert [h.relation for h in hs] == ["left", None, None] and hs[1].count == 2
    rel = shapes.parse_caption("a red circle to the left of a blue square")
    inv = shapes.parse_caption("a blue square to the right of a red circle")
    other = shapes.parse_caption("a red circle above a blue square")
    assert hs[0].matches(rel) and hs[0].matches(inv) and not hs[0].matches(other)
    assert hs[1].matches(shapes.parse_caption("two red circles"))
    assert not hs[1].matches(shapes.parse_caption("three red circles"))
    assert hs[2].matches(shapes.parse_caption("a square and a green triangle"))
    with pytest.raises(ValueError):
        shapes.parse_holdout(["purple circle"])


def test_heldout_prompts_feed_the_benchmark(world: dict[str, str]) -> None:
    from evaluation.shapes_bench import load_prompts

    rows = load_prompts(world["heldout_prompts"])
    assert {r["prompt"] for r in rows} == {"a blue triangle", "a circle above a square", "three squares"}
    assert {r["tag"] for r in rows} == {"colors", "position", "counting"}


@pytest.mark.parametrize("grid", [2, 4])
@pytest.mark.parametrize("kind", ["single", "pair", "relation", "count"])
def test_grid_layout_one_object_per_cell(kind: str, grid: int) -> None:
    """Every object is centred in its own cell at 3/4 of the cell side, relations read along one row or
    column in the caption's order, and the checker sees every object as drawn (64 px)."""
    from evaluation.shapes_bench import check_image, detect_objects

    side = 64 // grid  # cell side in pixels; the object is 3/4 of it, with side/8 free on each side
    for i in range(40):
        rng = random.Random(f"{kind}/{i}")
        spec = shapes.sample_spec(rng, kind, p_no_color=0.0)
        objs = shapes.layout_scene(spec, rng, grid=grid)
        cells = [(round(o.cx * grid - 0.5), round(o.cy * grid - 0.5)) for o in objs]
        assert len(set(cells)) == len(objs) == (spec.count if kind == "count" else len(spec.objects))
        for o, (c, r) in zip(objs, cells):
            assert (o.cx, o.cy, o.size) == ((c + 0.5) / grid, (r + 0.5) / grid, 0.75 / grid)
        if kind == "relation":
            (ca, ra), (cb, rb) = cells
            assert {"left": ra == rb and ca < cb, "right": ra == rb and ca > cb,
                    "above": ca == cb and ra < rb, "below": ca == cb and ra > rb}[spec.relation]
        img = shapes.render_scene(objs, 64)
        arr = np.asarray(img)
        for c, r in cells:
            cell = arr[r * side:(r + 1) * side, c * side:(c + 1) * side]
            ys, xs = np.nonzero((cell < 250).any(-1))
            lo, hi = side // 8, side - side // 8 - 1
            assert (ys.min(), ys.max(), xs.min(), xs.max()) == (lo, hi, lo, hi)
        assert len(detect_objects(img)) == len(objs)
        assert check_image(img, spec)["correct"], (spec.caption(), cells)


def test_grid_world_and_question_set(tmp_path: Path) -> None:
    from evaluation import shapes_bench as sb

    paths = shapes.write_shapes_world(tmp_path, n_train=20, n_eval=4, n_videos=0, n_stories=0, grid=2,
                                      holdout=["blue triangle"], seed=1)
    assert json.loads(Path(paths["manifest"]).read_text())["config"]["grid"] == 2
    for r in (json.loads(x) for x in Path(paths["image_text"]).read_text().splitlines()):
        arr = np.asarray(Image.open(r["path"]))
        ink = (arr < 250).any(-1)
        # nothing is drawn on the cell borders (the 4 px frame of every 32 px cell)
        border = np.zeros_like(ink)
        for k in range(2):
            border[k * 32:k * 32 + 4] = border[k * 32 + 28:k * 32 + 32] = True
            border[:, k * 32:k * 32 + 4] = border[:, k * 32 + 28:k * 32 + 32] = True
        assert ink.any() and not (ink & border).any()
    for grid in (2, 4):
        qs = [json.loads(x) for x in sb.question_file(grid).read_text().splitlines()]
        assert qs == sb.default_question_set(grid=grid)
        assert all(o["cx"] * grid - 0.5 == round(o["cx"] * grid - 0.5) for q in qs for o in q["scene"])
    with pytest.raises(ValueError, match="grid=3"):
        sb.question_file(3)
    with pytest.raises(ValueError, match="grid must be"):
        shapes.write_shapes_world(tmp_path / "bad", n_train=1, grid=1)


def _cells(objs, grid: int) -> list[tuple[int, int]]:
    return [(round(o.cx * grid - 0.5), round(o.cy * grid - 0.5)) for o in objs]


@pytest.mark.parametrize("kind", ["single", "pair", "relation", "count"])
def test_grid_layouts_fix_what_the_caption_says(kind: str) -> None:
    """random: cells vary; reading: objects fill their cells in caption order, row by row; canonical:
    the caption alone fixes every cell (first cells in reading order; a relation's first noun top left for
    left / above and bottom right for right / below, so every cell holds the same noun)."""
    grid = 2
    seen: dict[str, set] = {"random": set(), "reading": set(), "canonical": set()}
    for layout in seen:
        for i in range(60):
            rng = random.Random(f"{kind}/{i}")
            spec = shapes.sample_spec(rng, kind, p_no_color=0.0)
            objs = shapes.layout_scene(spec, rng, grid=grid, layout=layout)
            cells = _cells(objs, grid)
            assert [o.shape for o in objs][:len(spec.objects)] == [o.shape for o in spec.objects]
            order = [r * grid + c for c, r in cells]
            if layout != "random" and kind != "relation":
                assert order == sorted(order), (layout, spec.caption(), cells)
            if layout == "canonical":
                expect = {"single": [(0, 0)], "pair": [(0, 0), (1, 0)], "count": [(0, 0), (1, 0), (0, 1)][:spec.num_objects],
                          "relation": {"left": [(0, 0), (1, 0)], "right": [(1, 1), (0, 1)],
                                       "above": [(0, 0), (0, 1)], "below": [(1, 1), (1, 0)]}.get(spec.relation)}[kind]
                assert cells == expect, (spec.caption(), cells)
                if kind == "relation":  # each cell holds the same noun whatever the relation
                    assert cells[0] in ((0, 0), (1, 1)) and cells[1] in ((1, 0), (0, 1))
                    assert shapes.relation_holds((objs[0].cx, objs[0].cy), (objs[1].cx, objs[1].cy), spec.relation, 0.2)
            seen[layout].add(tuple(cells))
    assert len(seen["canonical"]) <= (4 if kind == "relation" else 2)
    assert len(seen["random"]) > len(seen["canonical"])
    if kind == "pair":  # random order puts the first-named object in the later cell about half the time
        assert any([r * grid + c for c, r in cells] != sorted(r * grid + c for c, r in cells) for cells in seen["random"])
    with pytest.raises(ValueError, match="layout must be one of"):
        shapes.layout_scene(shapes.sample_spec(random.Random(0), kind), random.Random(0), grid=grid, layout="diagonal")
    with pytest.raises(ValueError, match="need a grid"):  # free placement has no cells to fix
        shapes.layout_scene(shapes.sample_spec(random.Random(0), kind), random.Random(0), layout="canonical")


def test_canonical_layout_fixes_colours_the_caption_leaves_open() -> None:
    """Uncoloured objects take the first palette colour that is not held out for their shape; colours
    the caption names are kept, and the random layout still draws them."""
    holdouts = shapes.parse_holdout("red triangle, two green squares")
    first = shapes.COLORS[0]
    drawn = set()
    for i in range(40):
        rng = random.Random(i)
        spec = shapes.sample_spec(rng, ["single", "pair", "relation", "count"][i % 4], p_no_color=0.5)
        if shapes.is_held_out(spec, None, holdouts):  # named colours that are held out
            continue
        objs = shapes.layout_scene(spec, random.Random(i), holdouts, grid=2, layout="canonical")
        for o, p in zip(spec.objects, objs):
            want = o.color or (shapes.COLORS[1] if o.shape == "triangle" else first)
            assert p.color == want, (spec.caption(), p)
        drawn |= {p.color for o, p in zip(spec.objects, shapes.layout_scene(
            spec, random.Random(i), holdouts, grid=2)) if o.color is None}
    assert len(drawn) > 1
    with pytest.raises(ValueError, match="every colour of a circle is held out"):
        shapes.layout_scene(shapes.SceneSpec("single", (shapes.ObjSpec("circle"),)), random.Random(0),
                            shapes.parse_holdout(",".join(f"{c} circle" for c in shapes.COLORS)), grid=2, layout="canonical")


def test_random_layout_is_the_default_and_unchanged() -> None:
    """The layout option must not move a single object of the default (random) world: the committed
    question sets and earlier runs depend on it."""
    for i in range(30):
        a = shapes.layout_scene(shapes.sample_spec(random.Random(i), "pair"), random.Random(i), grid=2)
        b = shapes.layout_scene(shapes.sample_spec(random.Random(i), "pair"), random.Random(i), grid=2, layout="random")
        assert a == b
    from evaluation import shapes_bench as sb

    assert [json.loads(x) for x in sb.question_file(2).read_text().splitlines()] == sb.default_question_set(grid=2)


def test_canonical_world_gives_conversations_images_of_their_own(tmp_path: Path) -> None:
    paths = shapes.write_shapes_world(tmp_path, n_train=30, n_eval=2, n_videos=0, n_stories=0, grid=2,
                                      layout="canonical", seed=3)
    assert json.loads(Path(paths["manifest"]).read_text())["config"]["layout"] == "canonical"
    t2i = [json.loads(x) for x in Path(paths["image_text"]).read_text().splitlines()]
    llava = json.loads(Path(paths["llava_train"]).read_text())
    assert all(e["image"].startswith("und/") and (Path(paths["image_root"]) / e["image"]).is_file() for e in llava)
    # a lone object is always top left in the pairs, but the conversations' images use every cell
    singles = [np.asarray(Image.open(r["path"])) for r in t2i if shapes.parse_caption(r["prompt"]).kind == "single"]
    assert singles and all((a[:32, :32] < 250).any() and not (a[32:] < 250).any() and not (a[:, 32:] < 250).any()
                           for a in singles)
    inked = np.zeros((2, 2), bool)
    for e in llava:
        a = np.asarray(Image.open(Path(paths["image_root"]) / e["image"])) < 250
        inked |= np.array([[a[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32].any() for c in range(2)] for r in range(2)])
    assert inked.all()
    # the conversations' images come with captions of their own (stage 1's captioning rows read them)
    und = [json.loads(x) for x in Path(paths["und_text"]).read_text().splitlines()]
    assert [Path(r["path"]).relative_to(paths["image_root"]).as_posix() for r in und] == [e["image"] for e in llava]
    for r in und:
        spec = shapes.parse_caption(r["prompt"])
        ink = np.asarray(Image.open(r["path"])) < 250
        cells = sum(ink[rr * 32:(rr + 1) * 32, c * 32:(c + 1) * 32].any() for rr in range(2) for c in range(2))
        assert cells == spec.num_objects  # one object per used cell, as many as the caption names
        assert not shapes.is_held_out(spec, None, shapes.parse_holdout(shapes.DEFAULT_HOLDOUT))
    with pytest.raises(ValueError, match="need a grid"):
        shapes.write_shapes_world(tmp_path / "x", n_train=1, n_eval=1, n_videos=0, n_stories=0, layout="reading")


def test_kind_weights_steer_the_image_text_pairs(tmp_path: Path) -> None:
    paths = shapes.write_shapes_world(tmp_path, n_train=40, n_eval=2, n_videos=0, n_stories=0, grid=2,
                                      layout="canonical", kind_weights={"relation": 1.0, "single": 0.0}, seed=2)
    kinds = {shapes.parse_caption(json.loads(x)["prompt"]).kind for x in Path(paths["image_text"]).read_text().splitlines()}
    assert kinds == {"relation"}
    assert json.loads(Path(paths["manifest"]).read_text())["config"]["kind_weights"] == {"relation": 1.0, "single": 0.0}
    for bad in ({"relations": 1.0}, {"single": -1.0}, {"single": 0.0}, {}):
        with pytest.raises(ValueError, match="kind_weights"):
            shapes.write_shapes_world(tmp_path / "x", n_train=1, n_eval=1, n_videos=0, n_stories=0, grid=2, kind_weights=bad)


def test_yesno_near_misses_share_a_colour_or_shape() -> None:
    """With near_miss=1 every "no" names a pair one attribute away from an object in the scene, which is
    what forces a model to bind colour to shape; the plain draw also asks about unrelated pairs."""
    objs = [shapes.Placed("circle", "red", 0.25, 0.25, 0.375), shapes.Placed("square", "blue", 0.75, 0.25, 0.375)]
    spec = shapes.SceneSpec("pair", (shapes.ObjSpec("circle", "red"), shapes.ObjSpec("square", "blue")))

    def noes(near_miss: float) -> set[tuple[str, str]]:
        out = set()
        for i in range(400):
            for q, a, cat in shapes.make_questions(spec, objs, random.Random(i), n=9, near_miss=near_miss):
                if cat == "yesno" and a == "no":
                    c, s = shapes.parse_yesno_question(q)
                    out.add((c, s))
        return out

    near = noes(1.0)
    assert near and all(c in ("red", "blue") or s in ("circle", "square") for c, s in near)
    assert not near & {("red", "circle"), ("blue", "square")}
    assert {("red", "square"), ("blue", "circle")} <= near  # the pure binding cases are among them
    assert any(c not in ("red", "blue") and s not in ("circle", "square") for c, s in noes(0.0))


def test_questions_never_name_a_held_out_pair_when_told() -> None:
    objs = [shapes.Placed("circle", "red", 0.25, 0.25, 0.375)]
    spec = shapes.SceneSpec("single", (shapes.ObjSpec("circle", "red"),))
    hold = shapes.parse_holdout(HOLDOUT)

    def asked(**kw) -> set[str]:
        return {q for i in range(300) for q, _, _ in shapes.make_questions(spec, objs, random.Random(i), n=9, **kw)}

    assert "Is there a blue triangle?" in asked()  # evaluation sets ask about it on purpose
    assert "Is there a blue triangle?" not in asked(holdouts=hold) | asked(holdouts=hold, near_miss=1.0)
    assert "Is there a blue square?" in asked(holdouts=hold)


def test_world_near_misses_only_in_training_conversations(tmp_path: Path) -> None:
    kw = dict(n_train=40, n_eval=20, n_videos=0, n_stories=0, grid=2, layout="canonical", seed=5)
    plain = shapes.write_shapes_world(tmp_path / "a", **kw)
    near = shapes.write_shapes_world(tmp_path / "b", yesno_near_miss=1.0, **kw)
    assert json.loads(Path(near["manifest"]).read_text())["config"]["yesno_near_miss"] == 1.0
    for key in ("llava_eval",):  # the world's own evaluation questions keep the plain draw
        assert Path(plain[key]).read_text().replace(str(tmp_path / "a"), "") == \
            Path(near[key]).read_text().replace(str(tmp_path / "b"), "")
    for sub in ("t2i", "und"):  # and no image moves
        for f in sorted((Path(plain["image_root"]) / sub).iterdir()):
            assert f.read_bytes() == (Path(near["image_root"]) / sub / f.name).read_bytes()
    assert Path(plain["llava_train"]).read_text() != Path(near["llava_train"]).read_text()
