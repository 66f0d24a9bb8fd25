"""Diagnostic probes for the demo model: cheaper and more specific than a full benchmark run.

* ``vae_ceiling``: the shapes-benchmark checker run on VAE round trips of ground-truth renders of the
  benchmark prompts -- the best generation score any generator could get through this VAE.
* ``colour_adherence``: fraction of "a <colour> <shape>" images whose dominant palette colour is the
  asked one (chance 0.25) -- does the model read its caption at all?
* ``yesno_binding``: yes/no questions on fresh scenes, scored by kind of question: does the model bind a
  colour to its shape, or answer "yes" as soon as the shape (or the colour) is somewhere in the image?
  400 questions instead of the benchmark's 61, so runs can be told apart.

CLI (writes ``OUT/probes.json`` and prints it)::

    python -m demo.probes run=demo_out out=demo_out/probes            # the demo's stage-2 model and VAE
    python -m demo.probes run=demo_out model=demo_out/stage1/export   # another checkpoint, same VAE/tokenizer
"""

from __future__ import annotations

import json
import random
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["vae_ceiling", "colour_adherence", "dominant_colour", "yesno_items", "yesno_binding", "main"]


@torch.no_grad()
def vae_ceiling(vae: Any, resolution: int = 64, per_category: int = 24, batch_size: int = 32,
                grid: int = 0) -> dict[str, float]:
    """Checker accuracy per category (and ``overall``, the mean of categories) on ``vae`` round trips
    of the benchmark prompts rendered in the world's layout (``grid``: see ``datasets.shapes.layout_scene``).

    ``vae`` needs ``encode(pixels, sample=False)``, ``decode(latents)`` and ``to_uint8`` as ``models.vae.WanVAE``.
    """
    from datasets.shapes import SceneSpec, layout_scene, render_scene
    from evaluation.shapes_bench import check_image, default_prompt_set

    prompts = default_prompt_set(per_category)
    specs = [SceneSpec.from_dict(p["spec"]) for p in prompts]
    images = [np.asarray(render_scene(layout_scene(s, random.Random(p["prompt"]), grid=grid), resolution))
              for s, p in zip(specs, prompts)]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    outs = [vae.to_uint8(vae.decode(vae.encode(x[i:i + batch_size], sample=False))) for i in range(0, len(x), batch_size)]
    rec = torch.cat(outs).numpy()
    hits: dict[str, list[bool]] = defaultdict(list)
    for img, spec, p in zip(rec, specs, prompts):
        hits[p["tag"]].append(bool(check_image(img, spec)["correct"]))
    res = {tag: float(np.mean(v)) for tag, v in hits.items()}
    res["overall"] = float(np.mean(list(res.values())))
    return res


def dominant_colour(image: Any, tol: float = 80.0) -> str | None:
    """Palette colour with the most pixels as the benchmark checker labels them (None for a blank image)."""
    from datasets.shapes import COLORS
    from evaluation.shapes_bench import palette_labels

    lab = palette_labels(np.asarray(image)[..., :3], tol)
    lab = lab[lab >= 0]
    if lab.size == 0:
        return None
    return COLORS[int(np.bincount(lab, minlength=len(COLORS)).argmax())]


def colour_adherence(pipe: Any, *, seeds_per_prompt: int = 2, guidance_scale: float = 1.0, num_steps: int = 25,
                     shapes: Sequence[str] | None = None) -> dict[str, Any]:
    """Generate "a <colour> <shape>" for every palette colour and shape; score the dominant colour.

    ``pipe`` needs ``text_to_image(prompts, guidance_scale=, num_steps=, seeds=, batch_size=, progress=)``.
    """
    from datasets.shapes import COLORS, SHAPES

    prompts = [(c, f"a {c} {s}") for c in COLORS for s in (shapes or SHAPES) for _ in range(seeds_per_prompt)]
    images = pipe.text_to_image([p for _, p in prompts], guidance_scale=guidance_scale, num_steps=num_steps,
                                seeds=list(range(len(prompts))), batch_size=24, progress=False)
    right = [dominant_colour(img) == c for (c, _), img in zip(prompts, images)]
    return {"accuracy": float(np.mean(right)), "n": len(right), "chance": 1.0 / len(COLORS),
            "guidance_scale": guidance_scale}


def yesno_items(n: int = 400, grid: int = 2, resolution: int = 64, holdout: str = "blue triangle",
                seed: int = 0) -> list[dict[str, Any]]:
    """``n`` fresh scenes (random layouts, never the held-out composition), one yes/no question each,
    drawn as the benchmark draws them. Each item: ``image``, ``question``, ``answer``, ``kind``:
    ``yes``, ``no_unrelated`` (neither the colour nor the shape is in the image), ``no_shape_present``
    (the shape is there in another colour), ``no_colour_present`` (the colour is there on another
    shape), ``no_both_present`` (both are there, on different objects)."""
    from datasets.shapes import _sample_scene, make_questions, parse_holdout, parse_yesno_question, render_scene

    holdouts = parse_holdout([h for h in holdout.split(",") if h])
    items = []
    for i in range(n):
        rng = random.Random(f"probes/yesno/{seed}/{i}")
        spec, objs = _sample_scene(rng, holdouts, 0.0, grid=grid)
        q, a, _ = next(x for x in make_questions(spec, objs, rng, n=99) if x[2] == "yesno")
        color, shape = parse_yesno_question(q)
        has_c, has_s = any(o.color == color for o in objs), any(o.shape == shape for o in objs)
        kind = "yes" if a == "yes" else {(False, False): "no_unrelated", (False, True): "no_shape_present",
                                         (True, False): "no_colour_present", (True, True): "no_both_present"}[has_c, has_s]
        items.append({"image": render_scene(objs, resolution), "question": q, "answer": a, "kind": kind})
    return items


def yesno_binding(pipe: Any, items: Sequence[dict[str, Any]], batch_size: int = 32) -> dict[str, Any]:
    """Greedy answers to :func:`yesno_items`; accuracy overall and per kind (with counts).

    ``pipe`` needs ``understand(images, questions, max_new_tokens=, temperature=, batch_size=)``.
    """
    from evaluation.shapes_bench import normalize_answer

    answers = pipe.understand([it["image"] for it in items], [it["question"] for it in items],
                              max_new_tokens=4, temperature=0.0, batch_size=batch_size)
    hits: dict[str, list[bool]] = defaultdict(list)
    for it, ans in zip(items, answers):
        ok = normalize_answer(ans) == it["answer"]
        hits[it["kind"]].append(ok)
        hits["overall"].append(ok)
    return {k: {"accuracy": float(np.mean(v)), "n": len(v)} for k, v in sorted(hits.items())}


USAGE = """python -m demo.probes run=DEMO_OUT [model=DIR] [out=DIR] [guidance=1.0,3.0] [threads=2]
run: a demo output folder (its vae/ and tokenizer/ are used; model defaults to run/stage2/export)."""


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = dict(a.split("=", 1) for a in (sys.argv[1:] if argv is None else argv) if "=" in a)
    if "run" not in args:
        raise SystemExit(USAGE)
    run = Path(args["run"])
    model = Path(args.get("model", run / "stage2" / "export"))
    out = Path(args.get("out", run / "probes"))
    torch.set_num_threads(int(args.get("threads", 1)))
    from generation.pipeline import Showo2Pipeline
    from models.vae import WanVAE

    world = json.loads((run / "data" / "manifest.json").read_text())["config"]
    res: dict[str, Any] = {"model": str(model), "vae_ceiling": vae_ceiling(
        WanVAE.load(run / "vae"), resolution=int(world["resolution"]), grid=int(world.get("grid", 0)))}
    pipe = Showo2Pipeline.from_pretrained(model, vae_path=run / "vae", tokenizer_path=run / "tokenizer",
                                          device="cpu", dtype=torch.float32, resolution=int(world["resolution"]))
    res["colour_adherence"] = [colour_adherence(pipe, guidance_scale=float(g))
                               for g in str(args.get("guidance", "1.0,3.0")).split(",")]
    res["yesno_binding"] = yesno_binding(pipe, yesno_items(grid=int(world.get("grid", 0)),
                                                           resolution=int(world["resolution"]),
                                                           holdout=",".join(world.get("holdout", []))))
    out.mkdir(parents=True, exist_ok=True)
    (out / "probes.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
