"""The embedded default: Show-o2 end to end on a synthetic "shapes" world, on a CPU, with no downloads.

    .venv/bin/python demo.py                      # full demo (about 15 min on 2 cores) -> demo_out/report.html
    .venv/bin/python demo.py fast=true out=/tmp/d # shortened run (smoke test)
    .venv/bin/python demo.py redo=stage2          # re-run stage 2 (and everything after it)

Steps (each skipped when its outputs exist with the same settings; ``redo=all|<step>[,<step>]``):

1. world     datasets/shapes.py writes images, an image-text jsonl, LLaVA-style instruction json and a
             held-out composition list ("blue triangle" never appears in training);
2. tokenizer datasets/tokenizer.py trains a small byte-level BPE on the world's text (Qwen2.5 special tokens);
3. vae       demo/vae_train.py trains a small Wan2.1-architecture 3D causal VAE (diffusers AutoencoderKLWan);
4. latents   scripts/cache_latents.py encodes every image once (normalised posterior mean + log-variance);
5. stage1    train_stage1.py configs/demo/stage1.yaml: t2i flow matching + captioning, all modules trained;
6. stage2    train_stage2.py configs/demo/stage2.yaml: instruction tuning (chat template) + t2i;
7. eval      generation/pipeline.py (CFG text-to-image, KV-cached answers) + evaluation/shapes_bench.py;
8. report    demo/report.py writes demo_out/report.html and report.md and prints the score table.

All settings: configs/demo/demo.yaml (``python demo.py --help`` lists them).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from omegaconf import DictConfig, OmegaConf  # noqa: E402

from demo.steps import StepRunner, banner, run_command  # noqa: E402
from utils.config import ConfigError, load_config, load_yaml, to_plain  # noqa: E402

DEMO_YAML = ROOT / "configs" / "demo" / "demo.yaml"
STEPS = ("world", "tokenizer", "vae", "latents", "stage1", "stage2", "eval", "report")
USAGE = __doc__


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------
def build_config(argv: list[str]) -> DictConfig:
    """configs/demo/demo.yaml, then (fast=true) its fast_profile, then the command line on top."""
    base = load_yaml(DEMO_YAML)
    fast = any(a.split("=", 1)[0] == "fast" and a.split("=", 1)[1].lower() in ("true", "1", "yes") for a in argv
               if "=" in a)
    if fast:
        base = OmegaConf.merge(base, base.fast_profile)
    cfg = load_config(argv, default_config=base, usage=USAGE)
    cfg.out = str(Path(str(cfg.out)).expanduser().resolve())
    cfg.threads = resolve_threads(cfg.threads)
    return cfg


def _busy_cores(window_s: float = 0.5) -> float | None:
    """Cores' worth of CPU time other processes used over the last ``window_s`` (Linux /proc/stat), or None.

    Measured now rather than read from the load average: that is a one-minute mean, so right after
    ``bash build_env.sh`` (or any finished job) it still reports a busy machine for a minute or more.
    """
    def sample() -> tuple[int, int] | None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except (OSError, IndexError):
            return None
        vals = [int(v) for v in fields]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
        return sum(vals), idle

    a = sample()
    if a is None:
        return None
    time.sleep(window_s)
    b = sample()
    if b is None or b[0] <= a[0]:
        return None
    busy_frac = 1.0 - (b[1] - a[1]) / (b[0] - a[0])
    return busy_frac * (os.cpu_count() or 1)


def resolve_threads(threads: Any) -> int:
    """``auto``: every core when the machine is idle, else one thread.

    On a busy machine (other jobs on the cores) multi-threaded torch loses badly: its worker threads
    wait for each other at every op, so small ops run several times *slower* than on one thread.
    """
    if str(threads) != "auto":
        return max(1, int(threads))
    cores = os.cpu_count() or 1
    busy = _busy_cores()
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except OSError:
            busy = 0.0
    return cores if busy < 0.5 else 1


def _redo_set(redo: Any) -> set[str]:
    if redo in (None, "", False):
        return set()
    items = list(redo) if isinstance(redo, list | tuple) or OmegaConf.is_list(redo) else str(redo).split(",")
    return {str(s).strip() for s in items if str(s).strip()}


def _subprocess_env(cfg: DictConfig) -> dict[str, str]:
    """Environment of the training/caching processes: offline, no wandb, our thread count."""
    n = str(int(cfg.threads))
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
            "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}


# ------------------------------------------------------------------------------------------------
# steps
# ------------------------------------------------------------------------------------------------
def step_world(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Write the shapes world, plus copies of the image-text jsonl (``t2i_rel``) and of the captions of the
    conversations' own images (``und_rel``, stage 1's captioning rows) with paths relative to images/.

    Relative keys let one latent cache serve both the image-text pairs and the instruction json
    (whose images are already relative to images/), and keep demo_out/ relocatable.
    """
    from datasets.shapes import write_shapes_world

    w = cfg.world
    data = out / "data"
    paths = write_shapes_world(data, n_train=int(w.n_train), n_eval=int(w.n_eval), n_videos=0, n_stories=0,
                               resolution=int(cfg.resolution), questions_per_image=int(w.questions_per_image),
                               yesno_near_miss=float(w.get("yesno_near_miss", 0.0)),
                               p_no_color=float(w.p_no_color), holdout=[s for s in str(w.holdout).split(",") if s],
                               seed=int(cfg.seed), video_format="frames", grid=int(w.grid),
                               layout=str(w.get("layout", "random")),
                               kind_weights=to_plain(w.kind_weights) if w.get("kind_weights") else None)
    img_root = Path(paths["image_root"])

    def relative(jsonl: str, name: str) -> list[dict[str, str]]:
        rows = [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()]
        rel = [{"path": str(Path(r["path"]).relative_to(img_root)), "prompt": r["prompt"]} for r in rows]
        (data / name).write_text("".join(json.dumps(r) + "\n" for r in rel))
        return rel

    rel = relative(paths["image_text"], "t2i_rel.jsonl")
    relative(paths["und_text"], "und_rel.jsonl")  # what stage 1's captioning rows read
    llava = json.loads(Path(paths["llava_train"]).read_text())
    # every training image once (the conversations may have images of their own): what the latent cache encodes
    images = dict.fromkeys([r["path"] for r in rel] + [e["image"] for e in llava])
    (data / "images_rel.jsonl").write_text("".join(json.dumps({"path": k}) + "\n" for k in images))
    n_q = sum(len(e["conversations"]) // 2 for e in llava)
    print(f"    {len(rel)} image-text pairs, {n_q} training questions, held out: {w.holdout!r} -> {data}")
    return {"pairs": len(rel), "questions": n_q}


def _world_texts(data: Path) -> list[str]:
    """Every text the demo model will read or write: captions, questions, answers, chat pieces, and
    the benchmark prompts/questions (same vocabulary; nothing about the held-out *images* leaks)."""
    from datasets.tokenizer import NEWLINE, ROLE_ASSISTANT, ROLE_USER, SYSTEM_PROMPT
    from evaluation.shapes_bench import DEFAULT_PROMPTS, DEFAULT_QUESTIONS

    texts = [json.loads(line)["prompt"] for line in (data / "t2i_rel.jsonl").read_text().splitlines() if line]
    for e in json.loads((data / "llava_train.json").read_text()):
        texts += [c["value"].replace("<image>\n", "") for c in e["conversations"]]
    for f in (DEFAULT_PROMPTS, DEFAULT_QUESTIONS):
        for line in Path(f).read_text().splitlines():
            r = json.loads(line)
            texts += [r.get("prompt", ""), r.get("question", ""), str(r.get("answer", ""))]
    # the chat template pieces often enough that BPE merges them into a few tokens
    texts += [SYSTEM_PROMPT.replace("<|im_end|>", ""), ROLE_USER, ROLE_ASSISTANT, NEWLINE] * 200
    return [t for t in texts if t]


def step_tokenizer(cfg: DictConfig, out: Path) -> dict[str, Any]:
    from datasets.tokenizer import build_demo_tokenizer, load_tokenizer

    path = build_demo_tokenizer(_world_texts(out / "data"), out / "tokenizer", vocab_size=int(cfg.tokenizer.vocab_size))
    tok, special = load_tokenizer(path)
    example = "a red circle to the left of a blue square"
    print(f"    vocabulary {len(tok)}; {example!r} -> {len(tok(example, add_special_tokens=False)['input_ids'])} tokens")
    return {"vocab": len(tok)}


def step_vae(cfg: DictConfig, out: Path) -> dict[str, Any]:
    from demo.probes import vae_ceiling
    from demo.vae_train import load_images, recon_grid, train_until, train_vae
    from models.vae import WanVAE

    data = out / "data"
    # every image the latent cache will encode: with the canonical layout the pairs alone would show the
    # VAE mostly default-coloured objects in a few cells (checker on its round trips 1.00 -> 0.96)
    rows = [json.loads(line) for line in (data / "images_rel.jsonl").read_text().splitlines() if line]
    images = load_images([data / "images" / r["path"] for r in rows], int(cfg.resolution))
    v = cfg.vae
    gate = float(v.get("min_ceiling", 0.0))

    def train(seed: int, steps: int) -> dict[str, Any]:
        return train_vae(images, out / "vae", config=to_plain(v.config), steps=steps,
                         batch_size=int(v.batch_size), lr=float(v.lr), warmup=int(v.warmup),
                         kl_weight=float(v.kl_weight), fg_weight=float(v.fg_weight),
                         crop=None if v.crop in (None, "null") else int(v.crop), seed=seed)

    def ceiling() -> float:
        score = vae_ceiling(WanVAE.load(out / "vae"), resolution=int(cfg.resolution), grid=int(cfg.world.grid))
        print(f"    VAE ceiling (benchmark checker on its round trips): {score['overall']:.3f} (gate {gate})")
        return score["overall"]

    summary = train_until(train, ceiling, seed=int(cfg.seed), steps=int(v.steps), min_quality=gate,
                          retries=int(v.get("retries", 0)), retry_steps=int(v.get("retry_steps", v.steps)))
    vae = WanVAE.load(out / "vae")  # exactly how every later step sees it
    stats = recon_grid(vae, images[:: max(1, len(images) // 8)][:8], out / "vae" / "recon.png", n=8)
    print(f"    {summary['params'] / 1e6:.2f} M parameters, {summary['steps']} steps; round trip mean |error| "
          f"{stats['mean_abs_err_255']:.1f}/255, normalised latent std {stats['latent_std']:.2f}")
    return {"params": summary["params"], "attempts": summary["attempts"], **stats}


def step_latents(cfg: DictConfig, out: Path) -> dict[str, Any]:
    data = out / "data"
    args = ["scripts/cache_latents.py", f"data.annotation={data / 'images_rel.jsonl'}", f"data.root={data / 'images'}",
            f"data.resolution={int(cfg.resolution)}", "data.preprocess=crop", f"vae.source={out / 'vae'}",
            f"output.dir={out / 'latents'}", "output.overwrite=true", f"batch_size={int(cfg.latents.batch_size)}",
            "workers=1", "device=cpu"]
    run_command(args, out / "logs" / "latents.log", env=_subprocess_env(cfg), cwd=ROOT)
    return json.loads((out / "latents" / "last_run.json").read_text())["summary"] | {"vae": None}


def _train(cfg: DictConfig, out: Path, stage: str) -> dict[str, Any]:
    s = cfg[stage]
    script = {"stage1": "train_stage1.py", "stage2": "train_stage2.py"}[stage]
    args = [script, f"config={ROOT / str(s.config)}", f"demo.out={out}", f"training.max_train_steps={int(s.steps)}",
            *[str(o) for o in (s.overrides or [])]]
    run_command(args, out / "logs" / f"{stage}.log", env=_subprocess_env(cfg), cwd=ROOT)
    summary = json.loads((out / stage / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / stage / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = rows[-1] if rows else {}
    print(f"    {summary.get('steps')} steps, median {summary.get('median_step_time_s', 0):.3f} s/step; last "
          f"loss_ntp {last.get('loss_ntp', float('nan')):.3f}, loss_flow {last.get('loss_flow', float('nan')):.3f}")
    return summary


def _subsample(rows: list[dict[str, Any]], key: str, per: int, seed: int) -> list[dict[str, Any]]:
    """At most ``per`` rows of every ``key`` value, in file order (deterministic)."""
    rng = random.Random(seed)
    by: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by.setdefault(str(r.get(key)), []).append(i)
    keep = sorted(i for idx in by.values() for i in (idx if len(idx) <= per else rng.sample(idx, per)))
    return [rows[i] for i in keep]


def step_eval(cfg: DictConfig, out: Path) -> dict[str, Any]:
    import torch

    from evaluation.shapes_bench import DEFAULT_PROMPTS, DEFAULTS, question_file, run_benchmark
    from generation.pipeline import Showo2Pipeline

    e = cfg.eval
    ev = out / "eval"
    if ev.exists():  # the benchmark resumes image folders; a re-run must not mix two models' images
        import shutil

        shutil.rmtree(ev)
    ev.mkdir(parents=True)
    prompts = [json.loads(line) for line in Path(DEFAULT_PROMPTS).read_text().splitlines() if line.strip()]
    prompts = _subsample(prompts, "tag", int(e.per_category), int(cfg.seed))
    (ev / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    questions = [json.loads(line) for line in question_file(int(cfg.world.grid)).read_text().splitlines() if line.strip()]
    n_q = int(e.questions)
    if n_q < len(questions):  # keep every category represented
        n_cat = len({q["category"] for q in questions})
        questions = _subsample(questions, "category", max(1, n_q // n_cat), int(cfg.seed))
    (ev / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))

    torch.set_num_threads(int(cfg.threads))
    pipe = Showo2Pipeline.from_pretrained(out / "stage2" / "export", vae_path=out / "vae", tokenizer_path=out / "tokenizer",
                                          device="cpu", dtype=torch.float32, resolution=int(cfg.resolution))
    bench = dict(DEFAULTS)
    bench.update(outdir=str(ev), prompts=str(ev / "prompts.jsonl"), questions=str(ev / "questions.jsonl"),
                 n_samples=int(e.n_samples), guidance_scale=float(e.guidance_scale), num_steps=int(e.num_steps),
                 seed=int(cfg.seed), batch_size=int(e.batch_size), resolution=int(cfg.resolution),
                 max_new_tokens=int(e.max_new_tokens), holdout=str(cfg.world.holdout))
    t = time.time()
    summary = run_benchmark(bench, pipe=pipe)
    print(f"    {len(prompts)} prompts x {e.n_samples} images and {len(questions)} questions in {time.time() - t:.0f} s")
    return {k: summary[k] for k in ("generation", "understanding") if k in summary}


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
def _scores(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    scores: dict[str, dict[str, float]] = {}
    for task in ("generation", "understanding"):
        s = summary.get(task)
        if not s:
            continue
        row = {c: v["accuracy"] for c, v in s["categories"].items()}
        row["overall"] = s["overall"]
        for k in ("seen", "heldout"):
            if k in s:
                row[f"overall ({k} compositions)"] = s[k]
        scores[task] = row
    return scores


def step_report(cfg: DictConfig, out: Path, runner: StepRunner) -> dict[str, Any]:
    from demo.report import loss_series, read_metrics, score_table_text, write_report
    from evaluation.shapes_bench import question_image, read_jsonl

    ev = out / "eval"
    summary = json.loads((ev / "summary.json").read_text()) if (ev / "summary.json").is_file() else {}
    scores = _scores(summary)
    curves = {}
    for name, path, keys in (("VAE reconstruction", out / "vae" / "metrics.jsonl", ["loss_rec"]),
                             ("Stage 1 (t2i + captioning)", out / "stage1" / "metrics.jsonl", ["loss_flow", "loss_ntp"]),
                             ("Stage 2 (instructions + t2i)", out / "stage2" / "metrics.jsonl", ["loss_flow", "loss_ntp"])):
        rows = read_metrics(path)
        if rows:
            curves[name] = loss_series(rows, keys)
    t2i = []
    if (ev / "generation_results.jsonl").is_file():
        for r in read_jsonl(ev / "generation_results.jsonl"):
            t2i.append({"prompt": f"[{r['tag']}] {r['prompt']}", "image": r.get("file") or "",
                        "correct": bool(r["correct"]), "note": "" if r["correct"] else r.get("reason", "")})
    mmu = []
    if (ev / "understanding_results.jsonl").is_file():
        qs = {q["id"]: q for q in read_jsonl(ev / "questions.jsonl")}
        (ev / "question_images").mkdir(exist_ok=True)
        for r in read_jsonl(ev / "understanding_results.jsonl"):
            img_path = ev / "question_images" / f"{r['id']}.png"
            if not img_path.exists() and r["id"] in qs:
                question_image(qs[r["id"]], int(cfg.resolution)).save(img_path)
            mmu.append({"image": str(img_path), "question": f"[{r['category']}] {r['question']}",
                        "answer": r.get("prediction"), "target": r["answer"], "correct": bool(r["correct"])})
    recon = [{"image": str(out / "vae" / "recon.png"), "caption": "VAE round trip (trained in this run)"}] \
        if (out / "vae" / "recon.png").is_file() else []
    targets = {k: float(v) for k, v in cfg.targets.items()}
    notes = [
        "Everything here was generated and trained on this machine from nothing: data, tokenizer, VAE, model.",
        f"Held-out composition(s) never seen in training: {cfg.world.holdout!r}; the benchmark reports "
        "seen and held-out prompts apart.",
        f"Layout of the image-text pairs: {cfg.world.get('layout', 'random')} (canonical: the caption fixes the whole "
        "image, cells and the colour of uncoloured objects); the conversations and the benchmark's question images "
        "use random layouts and colours.",
        "Semantic layers are trained jointly (no SigLIP teacher exists offline to distil from).",
        "Recipe vs official: see the comments at the top of configs/demo/stage1.yaml and stage2.yaml.",
    ]
    timings = runner.timings()
    html_path, md_path = write_report({
        "title": "Show-o2 demo: the shapes world, end to end on CPU",
        "subtitle": f"out={out}  fast={cfg.fast}  ({time.strftime('%Y-%m-%d %H:%M')})",
        "scores": scores, "targets": targets, "curves": curves, "t2i": t2i, "mmu": mmu, "recon": recon,
        "timings": timings, "status": runner.statuses(), "notes": notes, "config": to_plain(cfg),
    }, out)
    banner("scores (held-out shapes mini-benchmark)")
    print(score_table_text(scores, targets))
    print(f"\nreport: {html_path}\n        {md_path}")
    return {"html": str(html_path)}


# ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = build_config(argv)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.update({k: v for k, v in _subprocess_env(cfg).items() if k not in ("PYTHONPATH",)})
    import torch

    torch.set_num_threads(int(cfg.threads))
    try:
        runner = StepRunner(out, STEPS, redo=_redo_set(cfg.redo))
    except ValueError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    (out / "demo_config.yaml").write_text(OmegaConf.to_yaml(cfg))
    banner(f"Show-o2 demo -> {out}  (fast={cfg.fast}, threads={cfg.threads})", "#")
    plain = to_plain(cfg)
    common = {"seed": plain["seed"], "resolution": plain["resolution"]}
    runner.run("world", lambda: step_world(cfg, out), title="write the shapes world",
               settings={**common, "world": plain["world"]}, clean=[out / "data"])
    runner.run("tokenizer", lambda: step_tokenizer(cfg, out), title="train the demo tokenizer",
               settings=plain["tokenizer"], clean=[out / "tokenizer"])
    runner.run("vae", lambda: step_vae(cfg, out), title="train a small Wan2.1-architecture VAE",
               settings={**common, "vae": plain["vae"]}, clean=[out / "vae"])
    runner.run("latents", lambda: step_latents(cfg, out), title="cache VAE latents (scripts/cache_latents.py)",
               settings={**common, "latents": plain["latents"]}, clean=[out / "latents"])
    runner.run("stage1", lambda: _train(cfg, out, "stage1"), title="train_stage1.py (t2i + captioning)",
               settings=plain["stage1"], clean=[out / "stage1"])
    runner.run("stage2", lambda: _train(cfg, out, "stage2"), title="train_stage2.py (instructions + t2i)",
               settings=plain["stage2"], clean=[out / "stage2"])
    runner.run("eval", lambda: step_eval(cfg, out), title="text-to-image, understanding, shapes benchmark",
               settings=plain["eval"])
    runner.run("report", lambda: step_report(cfg, out, runner), title="write the report", always=True)
    banner("wall time per step", "-")
    print(runner.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
