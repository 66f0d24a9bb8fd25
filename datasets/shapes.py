"""The synthetic "shapes" world: tiny, exactly checkable data written in the real on-disk formats.

A scene is a few flat-coloured shapes (circle / square / triangle in four palette colours) on a white
background. Everything is deterministic given a seed, rendered with PIL without anti-aliasing (so a
pixel checker can find objects by exact palette colour, see ``evaluation/shapes_bench.py``), and
written in the formats the real loaders read:

* image-text pairs: ``t2i_train.jsonl`` with ``{"path", "prompt"}`` per line (absolute PNG paths,
  reference section 2.1);
* LLaVA-style instruction data: ``llava_train.json`` / ``llava_eval.json`` (image paths relative to
  ``images/``; the eval file adds ``answer``/``category``/``heldout`` keys that loaders ignore);
* video-text pairs: ``video_train.jsonl`` with ``{"path", "prompt", "frames_dir", "num_frames",
  "direction"}``; ``path`` is an mp4 when ``utils.media.write_video`` is available, else the PNG
  frame folder (``frames_dir`` is always written, lossless);
* VIST-style stories: ``vist_train.json`` = ``[{"images": [...], "captions": [...]}]`` with JPEG
  paths relative to ``images/`` (the VIST loader appends ``.jpg`` unless present).

Layouts: by default objects are placed anywhere at varying sizes. ``grid=N`` puts one fixed-size object
in each used cell of an N x N grid instead (``layout_scene``). With cells that are whole visual tokens
(grid 2 at 64 px: each object covers the same 2x2 tokens) a tiny model learns where objects go in
minutes, which is what the CPU demo needs.

Held-out compositions (``holdout=["blue triangle", "circle above square", "three squares"]``) never
appear in any training image or caption; the eval files and the benchmark test them.

CLI: ``python -m datasets.shapes out=DIR n_train=2000 resolution=64 grid=2 holdout="blue triangle"``.
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "PALETTE", "BACKGROUND", "SHAPES", "COLORS", "RELATIONS", "DIRECTIONS", "NUMBER_WORDS", "DEFAULT_HOLDOUT",
    "ObjSpec", "SceneSpec", "Placed", "Holdout",
    "parse_caption", "parse_holdout", "sample_spec", "layout_scene", "render_scene", "render_video",
    "make_questions", "yesno_question", "parse_yesno_question", "write_shapes_world", "main",
]

# ----------------------------------------------------------------------------------------------
# The world's vocabulary. The palette is far apart in RGB so nearest-colour assignment is robust.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
}
BACKGROUND: tuple[int, int, int] = (255, 255, 255)
COLORS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# relation phrase as it appears in captions -> canonical key
RELATIONS: dict[str, str] = {"to the left of": "left", "to the right of": "right", "above": "above", "below": "below"}
REL_PHRASE: dict[str, str] = {v: k for k, v in RELATIONS.items()}
REL_INVERSE: dict[str, str] = {"left": "right", "right": "left", "above": "below", "below": "above"}
DIRECTIONS: dict[str, tuple[float, float]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three"}
WORD_NUMBERS: dict[str, int] = {v: k for k, v in NUMBER_WORDS.items()}
DEFAULT_HOLDOUT: tuple[str, ...] = ("blue triangle",)

# Object size as a fraction of the resolution: 0.22-0.34 -> 14-22 px at 64 px (reliably detectable).
SIZE_RANGE = (0.22, 0.34)
COUNT_SIZE_RANGE = (0.22, 0.28)  # three objects must fit without touching
GAP = 0.05  # minimum free space between object bounding boxes (fraction), keeps components separate
EDGE = 0.03  # minimum distance to the border (fraction)


def _plural(shape: str) -> str:
    return shape + "s"


@dataclass(frozen=True)
class ObjSpec:
    """One object in a caption: a shape and (optionally, captions may omit it) a colour."""

    shape: str
    color: str | None = None

    def phrase(self) -> str:
        return f"{self.color} {self.shape}" if self.color else self.shape


@dataclass(frozen=True)
class SceneSpec:
    """What a caption says. ``kind``: single | pair | relation | count.

    single: ``objects=(A,)``; pair: ``(A, B)`` ("a A and a B"); relation: ``(A, B)`` with
    ``relation`` in left/right/above/below meaning "A <relation> B"; count: ``(A,)`` with ``count``
    identical copies (2 or 3).
    """

    kind: str
    objects: tuple[ObjSpec, ...]
    count: int = 1
    relation: str | None = None

    @property
    def num_objects(self) -> int:
        """Objects the scene shows (a count scene repeats its one object)."""
        return self.count if self.kind == "count" else len(self.objects)

    def caption(self) -> str:
        a = self.objects[0]
        if self.kind == "single":
            return f"a {a.phrase()}"
        if self.kind == "count":
            words = NUMBER_WORDS[self.count]
            return f"{words} {a.color + ' ' if a.color else ''}{_plural(a.shape)}"
        b = self.objects[1]
        if self.kind == "pair":
            return f"a {a.phrase()} and a {b.phrase()}"
        if self.kind == "relation":
            return f"a {a.phrase()} {REL_PHRASE[self.relation]} a {b.phrase()}"
        raise ValueError(f"unknown scene kind {self.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "objects": [asdict(o) for o in self.objects], "count": self.count,
                "relation": self.relation}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> SceneSpec:
        return SceneSpec(d["kind"], tuple(ObjSpec(o["shape"], o.get("color")) for o in d["objects"]),
                         int(d.get("count", 1)), d.get("relation"))


@dataclass(frozen=True)
class Placed:
    """A concrete object: centre and side length as fractions of the image size (resolution-free)."""

    shape: str
    color: str
    cx: float
    cy: float
    size: float

    def box(self) -> tuple[float, float, float, float]:
        h = self.size / 2
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)


# ----------------------------------------------------------------------------------------------
# Caption parsing (the inverse of SceneSpec.caption) -- the benchmark uses it for free-form prompts.
_COLOR_RE = "|".join(COLORS)
_SHAPE_RE = "|".join(SHAPES)
_OBJ = rf"(?:(?P<{{n}}c>{_COLOR_RE})\s+)?(?P<{{n}}s>{_SHAPE_RE})"
_REL_RE = "|".join(re.escape(p) for p in RELATIONS)
_PATTERNS = [
    ("relation", re.compile(rf"^an?\s+{_OBJ.format(n='a')}\s+(?P<rel>{_REL_RE})\s+an?\s+{_OBJ.format(n='b')}$")),
    ("pair", re.compile(rf"^an?\s+{_OBJ.format(n='a')}\s+and\s+an?\s+{_OBJ.format(n='b')}$")),
    ("count", re.compile(rf"^(?P<num>two|three|2|3)\s+(?:(?P<ac>{_COLOR_RE})\s+)?(?P<as>{_SHAPE_RE})s$")),
    ("single", re.compile(rf"^(?:an?|one|1)\s+{_OBJ.format(n='a')}$")),
]


def parse_caption(text: str) -> SceneSpec:
    """Parse a shapes-world caption ("two yellow triangles", "a red circle above a square", ...)."""
    t = re.sub(r"[.!]+$", "", " ".join(text.lower().strip().split()))
    t = re.sub(r"^(a photo of|an image of|a picture of)\s+", "", t)
    for kind, pat in _PATTERNS:
        m = pat.match(t)
        if not m:
            continue
        g = m.groupdict()
        a = ObjSpec(g["as"], g.get("ac"))
        if kind == "single":
            return SceneSpec("single", (a,))
        if kind == "count":
            n = WORD_NUMBERS.get(g["num"], None) or int(g["num"])
            return SceneSpec("count", (a,), count=n)
        b = ObjSpec(g["bs"], g.get("bc"))
        if kind == "pair":
            return SceneSpec("pair", (a, b))
        return SceneSpec("relation", (a, b), relation=RELATIONS[g["rel"]])
    raise ValueError(f"not a shapes-world caption: {text!r}")


# ----------------------------------------------------------------------------------------------
# Held-out compositions.
@dataclass(frozen=True)
class Holdout:
    """A held-out composition pattern. Forms (colour and shape each optional, at least one given):

    * ``"blue triangle"`` -- any scene containing such an object (image content, any caption);
    * ``"circle above square"`` / ``"red circle left of square"`` -- relation scenes A rel B, and
      also the equivalent B inverse-rel A (the *configuration* is never seen);
    * ``"three squares"`` / ``"two red circles"`` -- count scenes with that count.
    """

    text: str
    a: ObjSpec | None = None
    b: ObjSpec | None = None
    relation: str | None = None
    count: int | None = None

    def matches_object(self, color: str | None, shape: str, pat: ObjSpec | None = None) -> bool:
        pat = pat or self.a
        assert pat is not None
        return (pat.shape in ("", shape)) and (pat.color is None or pat.color == color)

    def matches(self, spec: SceneSpec, placed: Sequence[Placed] | None = None) -> bool:
        """True if the scene (caption spec and, when given, its concrete objects) shows this composition."""
        if self.relation is not None:
            if spec.kind != "relation":
                return False
            objs = list(placed[:2]) if placed is not None else None
            ca, cb = (objs[0].color, objs[1].color) if objs else (spec.objects[0].color, spec.objects[1].color)
            sa, sb = spec.objects[0].shape, spec.objects[1].shape
            fwd = (self.matches_object(ca, sa, self.a) and self.matches_object(cb, sb, self.b)
                   and spec.relation == self.relation)
            inv = (self.matches_object(cb, sb, self.a) and self.matches_object(ca, sa, self.b)
                   and REL_INVERSE[spec.relation] == self.relation)
            return fwd or inv
        if self.count is not None:
            if spec.kind != "count" or spec.count != self.count:
                return False
            color = placed[0].color if placed else spec.objects[0].color
            return self.matches_object(color, spec.objects[0].shape)
        # plain object pattern: any object in the scene (concrete colours when known)
        if placed is not None:
            return any(self.matches_object(p.color, p.shape) for p in placed)
        return any(self.matches_object(o.color, o.shape) for o in spec.objects)


def _parse_obj_words(words: list[str], text: str) -> ObjSpec:
    color = shape = None
    for w in words:
        if w in PALETTE:
            color = w
        elif w.rstrip("s") in SHAPES:
            shape = w.rstrip("s")
        elif w not in ("a", "an", "the"):
            raise ValueError(f"bad holdout pattern {text!r}: unknown word {w!r}")
    if color is None and shape is None:
        raise ValueError(f"bad holdout pattern {text!r}: needs a colour or a shape")
    return ObjSpec(shape or "", color)


def parse_holdout(items: str | Iterable[str] | None) -> list[Holdout]:
    """Parse holdout patterns (a list, or one comma-separated string; see :class:`Holdout`)."""
    if items is None:
        return []
    if isinstance(items, str):
        items = [s for s in items.split(",")]
    out = []
    for raw in items:
        text = " ".join(str(raw).lower().replace("to the ", "").split())
        if not text:
            continue
        words = text.split()
        rel_idx = [i for i, w in enumerate(words) if w in ("left", "right", "above", "below")]
        if rel_idx:
            i = rel_idx[0]
            rel = words[i]
            right = words[i + 1:]
            if right and right[0] == "of":
                right = right[1:]
            out.append(Holdout(text, _parse_obj_words(words[:i], text), _parse_obj_words(right, text), rel))
        elif words[0] in WORD_NUMBERS or words[0].isdigit():
            n = WORD_NUMBERS.get(words[0]) or int(words[0])
            out.append(Holdout(text, _parse_obj_words(words[1:], text), count=n))
        else:
            out.append(Holdout(text, _parse_obj_words(words, text)))
    return out


def is_held_out(spec: SceneSpec, placed: Sequence[Placed] | None, holdouts: Sequence[Holdout]) -> bool:
    return any(h.matches(spec, placed) for h in holdouts)


# ----------------------------------------------------------------------------------------------
# Sampling and layout.
KIND_WEIGHTS: dict[str, float] = {"single": 0.3, "pair": 0.2, "relation": 0.3, "count": 0.2}


def sample_spec(rng: random.Random, kind: str | None = None, p_no_color: float = 0.15,
                kind_weights: dict[str, float] | None = None) -> SceneSpec:
    """Draw a caption spec. With probability ``p_no_color`` the caption names shapes only."""
    if kind is None:
        w = kind_weights or KIND_WEIGHTS
        kind = rng.choices(list(w), weights=list(w.values()))[0]
    with_color = rng.random() >= p_no_color

    def obj() -> ObjSpec:
        return ObjSpec(rng.choice(SHAPES), rng.choice(COLORS) if with_color else None)

    if kind == "single":
        return SceneSpec("single", (obj(),))
    if kind == "count":
        return SceneSpec("count", (obj(),), count=rng.choice((2, 3)))
    a, b = obj(), obj()
    while a == b and with_color:  # "a red circle and a red circle" is a count scene, not a pair
        b = obj()
    if kind == "pair":
        return SceneSpec("pair", (a, b))
    return SceneSpec("relation", (a, b), relation=rng.choice(list(REL_INVERSE)))


def _boxes_apart(p: Placed, q: Placed, gap: float) -> bool:
    a, b = p.box(), q.box()
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _rand_center(rng: random.Random, size: float) -> tuple[float, float]:
    lo, hi = EDGE + size / 2, 1 - EDGE - size / 2
    return rng.uniform(lo, hi), rng.uniform(lo, hi)


def relation_holds(a: tuple[float, float], b: tuple[float, float], relation: str, margin: float = 0.1,
                   dominant: bool = True) -> bool:
    """Does centre ``a`` stand in ``relation`` to centre ``b``? Image coordinates (y grows downward),
    as fractions of the image size. The offset along the relation's axis must exceed ``margin`` and,
    with ``dominant``, be at least the cross-axis offset (so the relation is the obvious one)."""
    dx, dy = b[0] - a[0], b[1] - a[1]  # b minus a
    along, cross = {"left": (dx, dy), "right": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[relation]
    return along > margin and (not dominant or along >= abs(cross))


GRID_FILL = 0.75  # grid layout: object side as a fraction of the cell side (24 px in a 32 px cell at grid 2, 64 px)


LAYOUTS: tuple[str, ...] = ("random", "reading", "canonical")


def _check_layout(layout: str, grid: int) -> None:
    if layout not in LAYOUTS or (layout != "random" and not grid):
        raise ValueError(f"layout must be one of {LAYOUTS} ('reading' / 'canonical' need a grid); got {layout!r}")


def _reading_order(cells: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(column, row) cells sorted row by row, left to right."""
    return sorted(cells, key=lambda cr: (cr[1], cr[0]))


def _grid_cells(spec: SceneSpec, rng: random.Random, grid: int, layout: str = "random") -> list[tuple[int, int]]:
    """(column, row) cells for the objects of ``spec`` on a ``grid`` x ``grid`` board; relation scenes
    put both objects on one row (left/right) or one column (above/below), in the stated order.

    ``layout`` says how much of the placement the caption fixes (relations always fix their order):
    * ``random``: any cells, objects in any order;
    * ``reading``: any cells, but the objects fill them in the caption's order, read row by row (a pair
      "a A and a B" puts A in the earlier cell), so which object goes where is never a coin toss;
    * ``canonical``: the caption fixes the whole image: objects fill the first cells in reading order, a
      relation puts each noun in a cell of its own (below), and an object the caption leaves uncoloured
      takes a default colour (:func:`_default_color`). The generator never has to break a symmetry.
    """
    n = spec.num_objects
    if spec.kind != "relation":
        cells = [(c, r) for c in range(grid) for r in range(grid)]  # this order keeps random layouts as they were
        if layout == "canonical":
            return _reading_order(cells)[:n]
        chosen = rng.sample(cells, n)
        return _reading_order(chosen) if layout == "reading" else chosen
    if layout == "canonical":
        # A ("A right of B") sits in the first cell for left/above and in the last for right/below, B next
        # to it on the same row / column. So no cell holds A for one relation and B for another: the
        # relation word only picks which cells are used, never which noun goes where.
        a, b, line = (0, 1, 0) if spec.relation in ("left", "above") else (grid - 1, grid - 2, grid - 1)
        if spec.relation in ("left", "right"):
            return [(a, line), (b, line)]
        return [(line, a), (line, b)]
    line, (i, j) = rng.randrange(grid), sorted(rng.sample(range(grid), 2))
    first, second = (i, j) if spec.relation in ("left", "above") else (j, i)  # A's index, B's index
    if spec.relation in ("left", "right"):
        return [(first, line), (second, line)]
    return [(line, first), (line, second)]


def _pair_held_out(color: str, shape: str, holdouts: Sequence[Holdout]) -> bool:
    """Whether one ``color`` ``shape`` object is a held-out composition (as a one-object scene)."""
    return bool(holdouts) and is_held_out(SceneSpec("single", (ObjSpec(shape, color),)), None, holdouts)


def _default_color(shape: str, holdouts: Sequence[Holdout]) -> str:
    """Colour of an object its caption leaves uncoloured, in the canonical layout: the first palette colour
    not held out for that shape."""
    for c in COLORS:
        if not _pair_held_out(c, shape, holdouts):
            return c
    raise ValueError(f"every colour of a {shape} is held out")


def layout_scene(spec: SceneSpec, rng: random.Random, holdouts: Sequence[Holdout] = (),
                 max_tries: int = 1000, grid: int = 0, layout: str = "random") -> list[Placed]:
    """Place the objects of ``spec`` (colours left open by the caption are drawn, avoiding held-out
    compositions). Raises ValueError if no valid layout was found.

    ``grid`` > 0: every object sits centred in its own cell of a ``grid`` x ``grid`` board, at a fixed
    size (``GRID_FILL`` of the cell). When cells are whole visual tokens (a visual token is 16 px: 8x VAE,
    2x2 patches; so grid 2 or 4 at 64 px) an object always covers the same tokens in the same way.
    ``layout`` (grid only): how far the caption fixes the cells, see :func:`_grid_cells`."""
    _check_layout(layout, grid)
    for _ in range(max_tries):
        if layout == "canonical":  # the caption fixes the colours too (see _grid_cells)
            colors = [o.color or _default_color(o.shape, holdouts) for o in spec.objects]
        else:
            colors = [o.color or rng.choice(COLORS) for o in spec.objects]
        if grid:
            # a count scene repeats its single object (and colour) count times
            drawn = list(zip(spec.objects, colors)) * (spec.num_objects // len(spec.objects))
            objs = [Placed(o.shape, c, (x + 0.5) / grid, (y + 0.5) / grid, GRID_FILL / grid)
                    for (o, c), (x, y) in zip(drawn, _grid_cells(spec, rng, grid, layout))]
        elif spec.kind == "count":
            s = rng.uniform(*COUNT_SIZE_RANGE)
            objs: list[Placed] = []
            for _i in range(spec.count):
                for _t in range(200):
                    cand = Placed(spec.objects[0].shape, colors[0], *_rand_center(rng, s), s)
                    if all(_boxes_apart(cand, o, GAP) for o in objs):
                        objs.append(cand)
                        break
            if len(objs) != spec.count:
                continue
        else:
            objs = []
            for o, c in zip(spec.objects, colors):
                s = rng.uniform(*SIZE_RANGE)
                objs.append(Placed(o.shape, c, *_rand_center(rng, s), s))
            if len(objs) == 2:
                if not _boxes_apart(objs[0], objs[1], GAP):
                    continue
                if spec.kind == "relation":
                    # unambiguous: the stated relation holds with a clear margin and no other does
                    if not relation_holds((objs[0].cx, objs[0].cy), (objs[1].cx, objs[1].cy), spec.relation, 0.2):
                        continue
                    cross = abs(objs[1].cy - objs[0].cy) if spec.relation in ("left", "right") else \
                        abs(objs[1].cx - objs[0].cx)
                    if cross > 0.12:
                        continue
        if holdouts and is_held_out(spec, objs, holdouts):
            if layout == "canonical":  # nothing was drawn at random: another try gives the same scene
                break
            continue
        return objs
    raise ValueError(f"could not lay out {spec.caption()!r} (held out? {[h.text for h in holdouts]})")


# ----------------------------------------------------------------------------------------------
# Rendering (PIL, no anti-aliasing: every object pixel is exactly its palette colour).
def _draw(draw: ImageDraw.ImageDraw, p: Placed, res: int) -> None:
    x0, y0, x1, y1 = (v * res for v in p.box())
    # integer pixel boxes: inclusive PIL coordinates, so subtract one on the far side
    x0, y0, x1, y1 = round(x0), round(y0), round(x1) - 1, round(y1) - 1
    fill = PALETTE[p.color]
    if p.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif p.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif p.shape == "triangle":  # upright isosceles, base = height = size (bbox fill ratio ~0.5)
        draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {p.shape!r}")


def render_scene(objects: Sequence[Placed], resolution: int = 64) -> Image.Image:
    """Render placed objects on a white RGB canvas of ``resolution`` x ``resolution``."""
    img = Image.new("RGB", (resolution, resolution), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for p in objects:
        _draw(draw, p, resolution)
    return img


def video_track(rng: random.Random, direction: str, num_frames: int, shape: str, color: str) -> list[Placed]:
    """One object moving in a straight line in ``direction`` (image coords: up = -y) over the clip."""
    s = rng.uniform(*SIZE_RANGE)
    lo, hi = EDGE + s / 2, 1 - EDGE - s / 2
    travel = rng.uniform(0.3, hi - lo)  # at least 30% of the frame so the direction is obvious
    start = rng.uniform(lo, hi - travel)
    other = rng.uniform(lo, hi)
    dx, dy = DIRECTIONS[direction]
    out = []
    for f in range(num_frames):
        pos = start + travel * f / max(1, num_frames - 1)
        along = pos if (dx + dy) > 0 else (lo + hi - pos)  # negative directions run the path backwards
        cx, cy = (along, other) if dx else (other, along)
        out.append(Placed(shape, color, cx, cy, s))
    return out


def render_video(track: Sequence[Placed], resolution: int = 64) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 of a single-object track."""
    return np.stack([np.asarray(render_scene([p], resolution)) for p in track])


# ----------------------------------------------------------------------------------------------
# Understanding questions with one-word answers.
def yesno_question(color: str, shape: str) -> str:
    """The yes/no question about one colour-shape pair (its one template; see :func:`parse_yesno_question`)."""
    return f"Is there a {color} {shape}?"


def parse_yesno_question(question: str) -> tuple[str, str]:
    """(colour, shape) that :func:`yesno_question` asked about."""
    color, shape = question.removeprefix("Is there a ").rstrip("?").split()
    return color, shape


def make_questions(spec: SceneSpec, objs: Sequence[Placed], rng: random.Random, n: int = 2,
                   near_miss: float = 0.0, holdouts: Sequence[Holdout] = ()) -> list[tuple[str, str, str]]:
    """Up to ``n`` distinct (question, answer, category) triples about a scene; answers are one word.

    ``near_miss``: how often a yes/no question with answer "no" asks about a pair that shares its colour
    or its shape with an object in the scene (a blue square next to a red one), instead of any absent
    pair. Only near misses need colour and shape bound to the same object; a model that sees few of
    them learns to answer from the shape alone. 0 keeps the random stream of earlier versions.
    ``holdouts``: colour-shape pairs a question must not name (training text never mentions a held-out
    composition, not even as absent); empty for evaluation sets, which ask about them on purpose.
    """
    qs: list[tuple[str, str, str]] = []
    shapes = {o.shape for o in objs}
    colors = {o.color for o in objs}
    num = len(objs)
    qs.append(("How many shapes are there?", NUMBER_WORDS[num], "count"))
    if len(colors) == 1:
        qs.append(("What color is the shape?" if num == 1 else "What color are the shapes?", objs[0].color, "color"))
    if len(shapes) == 1:
        qs.append(("What shape is it?" if num == 1 else "What shape are they?", objs[0].shape, "shape"))
    # yes/no: balanced between a present and an absent colour-shape combination
    present = rng.choice(objs)
    if rng.random() < 0.5:
        qs.append((yesno_question(present.color, present.shape), "yes", "yesno"))
    else:
        absent = [(c, s) for c in COLORS for s in SHAPES if not any(o.color == c and o.shape == s for o in objs)
                  and not _pair_held_out(c, s, holdouts)]
        if near_miss and rng.random() < near_miss:
            absent = [(c, s) for c, s in absent if c in colors or s in shapes] or absent
        c, s = rng.choice(absent)
        qs.append((yesno_question(c, s), "no", "yesno"))
    if num == 2 and spec.kind in ("relation", "pair"):
        a, b = objs
        horizontal = abs(a.cx - b.cx) >= abs(a.cy - b.cy)
        if horizontal:
            first, pos = (a if a.cx < b.cx else b), "on the left"
        else:
            first, pos = (a if a.cy < b.cy else b), "on top"
        if a.shape != b.shape:
            qs.append((f"Which shape is {pos}?", first.shape, "position"))
        elif a.color != b.color:
            qs.append((f"What color is the shape {pos}?", first.color, "position"))
    rng.shuffle(qs)
    return qs[:n]


# ----------------------------------------------------------------------------------------------
# Writers.
@dataclass
class WorldConfig:
    """Settings of :func:`write_shapes_world` (also the CLI's keys)."""

    out: str = "outputs/shapes_world"
    n_train: int = 2000          # image-text pairs (also the images of the LLaVA training set)
    n_eval: int = 200            # held-out understanding questions (each on its own new image)
    n_videos: int = 200
    n_stories: int = 200
    resolution: int = 64
    video_frames: int = 5        # 1 + 4k so the causal VAE maps it to 1 + k latent frames
    story_length: int = 4        # images per VIST-style story (the official loader keeps at most 4)
    questions_per_image: int = 2
    yesno_near_miss: float = 0.0  # share of the training "no" questions that name a near miss (see make_questions)
    p_no_color: float = 0.15
    seed: int = 0
    holdout: str = ",".join(DEFAULT_HOLDOUT)  # comma-separated patterns ("" = none)
    grid: int = 0                # 0: objects anywhere, sizes vary | N: one fixed-size object per cell of an N x N grid
    layout: str = "random"       # grid only: random | reading | canonical (how far a caption fixes its cells)
    kind_weights: dict[str, float] | None = None  # image-text scene kinds, e.g. {single: 0.2, relation: 0.4, ...}
    video_format: str = "auto"   # auto: mp4 via utils.media.write_video (frame folders always written) | frames


def _item_rng(seed: int, split: str, i: int) -> random.Random:
    # string seeds are hashed with SHA-512 by ``random``: stable across runs and PYTHONHASHSEED, and
    # item i does not depend on how many items come before it
    return random.Random(f"shapes/{seed}/{split}/{i}")


def _sample_scene(rng: random.Random, holdouts: Sequence[Holdout], p_no_color: float,
                  kind: str | None = None, grid: int = 0, layout: str = "random",
                  kind_weights: dict[str, float] | None = None) -> tuple[SceneSpec, list[Placed]]:
    for _ in range(1000):
        spec = sample_spec(rng, kind, p_no_color, kind_weights)
        if holdouts and is_held_out(spec, None, holdouts):  # caption itself names a held-out composition
            continue
        try:
            return spec, layout_scene(spec, rng, holdouts, grid=grid, layout=layout)
        except ValueError:
            continue
    raise RuntimeError("holdout list excludes (almost) every scene")


def _try_write_video(path: Path, frames: np.ndarray, fps: int) -> Path | None:
    """mp4 via ``utils.media.write_video(frames, path, fps)`` (VAE engineer's module; it may fall back
    to a GIF and returns the path it wrote). None when that module is unavailable or fails."""
    try:
        from utils.media import write_video
    except ImportError:
        return None
    try:
        # low crf: flat palette colours should survive compression nearly unchanged
        return Path(write_video(frames, path, fps=fps, crf=10))
    except Exception as e:  # keep the frame folders; report why
        print(f"[shapes] write_video failed ({e}); using frame folders", file=sys.stderr)
        return None


def write_shapes_world(
    out_dir: str | Path,
    *,
    n_train: int = 2000,
    n_eval: int = 200,
    n_videos: int = 200,
    n_stories: int = 200,
    resolution: int = 64,
    video_frames: int = 5,
    story_length: int = 4,
    questions_per_image: int = 2,
    yesno_near_miss: float = 0.0,
    p_no_color: float = 0.15,
    holdout: str | Iterable[str] | None = DEFAULT_HOLDOUT,
    seed: int = 0,
    video_format: str = "auto",
    grid: int = 0,
    layout: str = "random",
    kind_weights: dict[str, float] | None = None,
) -> dict[str, str]:
    """Write the whole world under ``out_dir`` and return the paths of what was written.

    Keys: ``root``, ``image_text`` (jsonl), ``und_text`` (jsonl: captions of the conversations' own
    images; ``image_text`` again when they have none), ``image_root``, ``llava_train``, ``llava_eval``,
    ``video_text`` (jsonl), ``video_qa_train``, ``video_qa_eval``, ``vist``, ``heldout_prompts``
    (txt, captions naming held-out compositions), ``manifest``. ``video_format``: auto (mp4 if
    ``utils.media.write_video`` exists, else frame folders) | frames. ``grid``: 0 places the images'
    objects anywhere at varying sizes; N > 0 puts them in the cells of an N x N grid (see
    :func:`layout_scene`; videos and stories keep free placement). ``layout`` (grid only): how far a
    caption fixes where its objects go in the image-text pairs (see :func:`_grid_cells`); with
    ``canonical`` the LLaVA conversations get images of their own in random layouts and colours, since
    images whose layout a caption fixes show objects in only some cells (and uncoloured ones in one
    colour). Evaluation images are always random.
    ``yesno_near_miss``: share of the training conversations' "no" questions that ask about a near miss
    (see :func:`make_questions`); the world's own evaluation questions keep the plain draw.
    ``kind_weights``: how often each scene kind (single, pair, relation, count) is drawn for the
    image-text pairs (default ``KIND_WEIGHTS``); evaluation images, and the conversations' own images of
    the canonical layout, keep the default.
    """
    if (video_frames - 1) % 4:
        raise ValueError(f"video_frames must be 1 + 4k (got {video_frames})")
    if grid < 0 or grid == 1:
        raise ValueError(f"grid must be 0 (free placement) or >= 2 (three objects need three cells); got {grid}")
    _check_layout(layout, grid)  # here too: _sample_scene retries on ValueError and would hide it
    own_und_images = layout == "canonical"
    if kind_weights is not None and (not kind_weights or set(kind_weights) - set(KIND_WEIGHTS)
                                     or min(kind_weights.values()) < 0 or sum(kind_weights.values()) <= 0):
        raise ValueError(f"kind_weights: non-negative weights over {sorted(KIND_WEIGHTS)}; got {kind_weights}")
    root = Path(out_dir).resolve()
    img_root = root / "images"
    for sub in ("t2i", "und", "mmu_eval", "vist", "videos"):
        (img_root / sub).mkdir(parents=True, exist_ok=True)
    holdouts = parse_holdout(holdout)

    # 1) image-text pairs + LLaVA training conversations on the same images
    t2i, llava_train, und_text = [], [], []
    for i in range(n_train):
        rng = _item_rng(seed, "train", i)
        spec, objs = _sample_scene(rng, holdouts, p_no_color, grid=grid, layout=layout, kind_weights=kind_weights)
        rel = f"t2i/{i:06d}.png"
        render_scene(objs, resolution).save(img_root / rel)
        t2i.append({"path": str(img_root / rel), "prompt": spec.caption()})
        if own_und_images:
            rng = _item_rng(seed, "und", i)
            spec, objs = _sample_scene(rng, holdouts, p_no_color, grid=grid)
            rel = f"und/{i:06d}.png"
            render_scene(objs, resolution).save(img_root / rel)
            und_text.append({"path": str(img_root / rel), "prompt": spec.caption()})
        qa = make_questions(spec, objs, rng, questions_per_image, near_miss=yesno_near_miss, holdouts=holdouts)
        conv = []
        for j, (q, a, _cat) in enumerate(qa):
            conv.append({"from": "human", "value": ("<image>\n" if j == 0 else "") + q})
            conv.append({"from": "gpt", "value": a})
        llava_train.append({"id": f"shapes-train-{i:06d}", "image": rel, "conversations": conv})

    # 2) held-out understanding eval: new images from all compositions (held-out ones flagged)
    llava_eval = []
    for i in range(n_eval):
        rng = _item_rng(seed, "eval", i)
        spec, objs = _sample_scene(rng, (), p_no_color, grid=grid)
        rel = f"mmu_eval/{i:06d}.png"
        render_scene(objs, resolution).save(img_root / rel)
        q, a, cat = make_questions(spec, objs, rng, 1)[0]
        llava_eval.append({"id": f"shapes-eval-{i:06d}", "image": rel, "category": cat, "answer": a,
                           "heldout": is_held_out(spec, objs, holdouts), "caption": spec.caption(),
                           "conversations": [{"from": "human", "value": "<image>\n" + q}, {"from": "gpt", "value": a}]})

    # 3) videos: one object moving in a stated direction
    use_mp4 = video_format == "auto"
    videos, vqa_train, vqa_eval = [], [], []
    mp4_ok = None
    video_kind = "frames"
    for i in range(n_videos + max(1, n_videos // 10)):
        is_eval = i >= n_videos
        rng = _item_rng(seed, "video", i)
        for _ in range(1000):
            shape, color = rng.choice(SHAPES), rng.choice(COLORS)
            obj = SceneSpec("single", (ObjSpec(shape, color),))
            if is_eval or not is_held_out(obj, None, holdouts):
                break
        direction = rng.choice(list(DIRECTIONS))
        frames = render_video(video_track(rng, direction, video_frames, shape, color), resolution)
        fdir = img_root / "videos" / f"{i:06d}"
        fdir.mkdir(exist_ok=True)
        for f, fr in enumerate(frames):
            Image.fromarray(fr).save(fdir / f"{f:03d}.png")
        path = fdir
        if use_mp4 and mp4_ok is not False:
            written = _try_write_video(img_root / "videos" / f"{i:06d}.mp4", frames, fps=8)
            mp4_ok = written is not None and written.exists()
            if mp4_ok:
                path = written
                video_kind = written.suffix.lstrip(".")
        caption = f"a {color} {shape} moving {direction}"
        rel = str(path.relative_to(img_root))
        q = rng.choice(["Which direction is the shape moving?", "Which way does the shape move?"])
        item = {"id": f"shapes-video-{i:06d}", "video": rel,
                "conversations": [{"from": "human", "value": "<video>\n" + q}, {"from": "gpt", "value": direction}]}
        if is_eval:
            item.update(answer=direction, category="direction")
            vqa_eval.append(item)
        else:
            videos.append({"path": str(path), "prompt": caption, "frames_dir": str(fdir),
                           "num_frames": video_frames, "direction": direction})
            vqa_train.append(item)

    # 4) VIST-style stories: the same objects change step by step; captions describe each state
    stories = []
    for i in range(n_stories):
        rng = _item_rng(seed, "story", i)
        images, captions = [], []
        spec, objs = _sample_scene(rng, holdouts, 0.0, kind="single")
        for k in range(story_length):
            if k > 0:
                spec, objs = _story_step(spec, objs, rng, holdouts)
            rel = f"vist/{i:06d}_{k}.jpg"
            # JPEG because the official VIST loader appends ".jpg"; high quality keeps colours flat
            render_scene(objs, resolution).save(img_root / rel, quality=95, subsampling=0)
            images.append(rel)
            captions.append(spec.caption() + ".")
        stories.append({"images": images, "captions": captions})

    # held-out prompts for generation (one per held-out pattern and scene kind that can show it)
    heldout_prompts = sorted({c for h in holdouts for c in _heldout_captions(h)})

    paths = {
        "root": str(root),
        "image_root": str(img_root),
        "image_text": str(root / "t2i_train.jsonl"),
        # captions of the conversations' own images (canonical layout); else the image-text pairs again
        "und_text": str(root / ("und_text.jsonl" if own_und_images else "t2i_train.jsonl")),
        "llava_train": str(root / "llava_train.json"),
        "llava_eval": str(root / "llava_eval.json"),
        "video_text": str(root / "video_train.jsonl"),
        "video_qa_train": str(root / "video_qa_train.json"),
        "video_qa_eval": str(root / "video_qa_eval.json"),
        "vist": str(root / "vist_train.json"),
        "heldout_prompts": str(root / "heldout_prompts.txt"),
        "manifest": str(root / "manifest.json"),
    }
    _write_jsonl(paths["image_text"], t2i)
    if own_und_images:
        _write_jsonl(paths["und_text"], und_text)
    _write_json(paths["llava_train"], llava_train)
    _write_json(paths["llava_eval"], llava_eval)
    _write_jsonl(paths["video_text"], videos)
    _write_json(paths["video_qa_train"], vqa_train)
    _write_json(paths["video_qa_eval"], vqa_eval)
    _write_json(paths["vist"], stories)
    Path(paths["heldout_prompts"]).write_text("".join(p + "\n" for p in heldout_prompts))
    manifest = {
        "config": {"n_train": n_train, "n_eval": n_eval, "n_videos": n_videos, "n_stories": n_stories,
                   "resolution": resolution, "video_frames": video_frames, "story_length": story_length,
                   "questions_per_image": questions_per_image, "yesno_near_miss": yesno_near_miss,
                   "p_no_color": p_no_color, "seed": seed,
                   "grid": grid, "layout": layout, "kind_weights": kind_weights or KIND_WEIGHTS,
                   "holdout": [h.text for h in holdouts]},
        "video_format": video_kind,  # mp4 (or gif if utils.media fell back) | frames
        "palette": PALETTE, "background": BACKGROUND, "shapes": SHAPES, "relations": list(RELATIONS),
        "paths": paths,
    }
    _write_json(paths["manifest"], manifest)
    return paths


def _story_step(spec: SceneSpec, objs: list[Placed], rng: random.Random,
                holdouts: Sequence[Holdout]) -> tuple[SceneSpec, list[Placed]]:
    """Next story state: add a second object in a relation, recolour one, or move back to one object."""
    for _ in range(100):
        if len(objs) == 1:
            event = rng.choice(["add", "add", "recolor"])
        else:
            event = rng.choice(["recolor", "remove"])
        if event == "add":
            a = objs[0]
            b = ObjSpec(rng.choice(SHAPES), rng.choice(COLORS))
            rel = rng.choice(list(REL_INVERSE))
            new_spec = SceneSpec("relation", (b, ObjSpec(a.shape, a.color)), relation=rel)
            try:
                new_objs = _place_relative(a, b, rel, rng)
            except ValueError:
                continue
        elif event == "recolor":
            k = rng.randrange(len(objs))
            new_color = rng.choice([c for c in COLORS if c != objs[k].color])
            new_objs = list(objs)
            new_objs[k] = replace(objs[k], color=new_color)
            new_spec = SceneSpec(spec.kind, tuple(ObjSpec(o.shape, o.color) for o in new_objs),
                                 relation=spec.relation)
        else:
            keep = objs[1]  # the object that was there first
            new_objs = [keep]
            new_spec = SceneSpec("single", (ObjSpec(keep.shape, keep.color),))
        if new_spec.objects[0] == new_spec.objects[-1] and len(new_objs) == 2:
            continue
        if not is_held_out(new_spec, new_objs, holdouts):
            return new_spec, new_objs
    return spec, objs


def _place_relative(anchor: Placed, b: ObjSpec, rel: str, rng: random.Random) -> list[Placed]:
    """Place new object ``b`` so that "b <rel> anchor" holds unambiguously; returns [b, anchor]."""
    for _ in range(300):
        s = rng.uniform(*SIZE_RANGE)
        cand = Placed(b.shape, b.color or rng.choice(COLORS), *_rand_center(rng, s), s)
        if not _boxes_apart(cand, anchor, GAP):
            continue
        if not relation_holds((cand.cx, cand.cy), (anchor.cx, anchor.cy), rel, 0.2):
            continue
        cross = abs(cand.cy - anchor.cy) if rel in ("left", "right") else abs(cand.cx - anchor.cx)
        if cross <= 0.15:
            return [cand, anchor]
    raise ValueError("no room")


def _heldout_captions(h: Holdout) -> list[str]:
    """Captions that name a held-out composition (for generation tests of compositional transfer)."""
    def phrase(o: ObjSpec | None, plural: bool = False) -> list[str]:
        shapes = [o.shape] if o and o.shape else list(SHAPES)
        return [(f"{o.color} " if o and o.color else "") + (s + "s" if plural else s) for s in shapes]

    if h.relation is not None:
        return [f"a {x} {REL_PHRASE[h.relation]} a {y}" for x in phrase(h.a) for y in phrase(h.b)]
    if h.count is not None:
        return [f"{NUMBER_WORDS.get(h.count, h.count)} {x}" for x in phrase(h.a, plural=True)]
    return [f"a {x}" for x in phrase(h.a)]


def _write_json(path: str | Path, obj: Any) -> None:
    Path(path).write_text(json.dumps(obj, indent=1))


def _write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))


# ----------------------------------------------------------------------------------------------
USAGE = """usage: python -m datasets.shapes out=DIR [n_train=2000] [n_eval=200] [n_videos=200] [n_stories=200]
       [resolution=64] [video_frames=5] [seed=0] [grid=0] [holdout="blue triangle,circle above square"]

Writes the synthetic shapes world (image-text jsonl, LLaVA json, video-text jsonl, VIST json)."""


def main(argv: Sequence[str] | None = None) -> dict[str, str]:
    from omegaconf import OmegaConf

    from utils.config import load_config

    cfg = load_config(argv, OmegaConf.structured(WorldConfig), USAGE)
    d = OmegaConf.to_container(cfg, resolve=True)
    out = d.pop("out")
    holdout = d.pop("holdout")
    if isinstance(holdout, str):
        holdout = [s for s in holdout.split(",") if s.strip()]
    paths = write_shapes_world(out, holdout=holdout, **d)
    print(json.dumps(paths, indent=1))
    return paths


if __name__ == "__main__":
    main(sys.argv[1:])
