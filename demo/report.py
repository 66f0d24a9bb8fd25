"""The demo report: one self-contained HTML page (and a Markdown twin) a person can open.

Everything is drawn without plotting libraries (matplotlib is not a dependency): loss curves are
inline SVG polylines, images are embedded as base64 PNGs so ``report.html`` can be mailed or moved
without its folder. The Markdown version links the PNG files instead (relative paths).

Input is a plain dict (``ReportData``-shaped, see ``write_report``) that ``demo.py`` assembles from
the files each step leaves on disk, so the report can be rebuilt at any time without re-running
anything (``python demo.py redo=report``).
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "read_metrics",
    "loss_series",
    "svg_line_plot",
    "score_table_text",
    "write_report",
]

# Colour-blind friendly palette (Okabe-Ito) for up to 8 curves.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")


# ----------------------------------------------------------------------------------------------
# metrics files
# ----------------------------------------------------------------------------------------------
def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` file (one JSON object per line); bad lines are skipped.

    Tolerant on purpose: a run that was interrupted may leave a half-written last line.
    """
    rows: list[dict[str, Any]] = []
    p = Path(path)
    if not p.is_file():
        return rows
    for line in p.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            rows.append(obj)
    return rows


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))


def loss_series(rows: Sequence[Mapping[str, Any]], keys: Iterable[str] | None = None,
                step_key: str = "step") -> dict[str, list[tuple[float, float]]]:
    """Turn metric rows into ``{name: [(step, value), ...]}``.

    With ``keys=None`` every numeric key whose name contains ``loss`` is taken. Rows without a step
    use their row index, so files written by different loggers still plot.
    """
    series: dict[str, list[tuple[float, float]]] = {}
    wanted = list(keys) if keys is not None else None
    for i, row in enumerate(rows):
        step = row.get(step_key, row.get("global_step", i))
        if not _is_number(step):
            step = i
        names = wanted if wanted is not None else [k for k in row if "loss" in k.lower()]
        for k in names:
            v = row.get(k)
            if _is_number(v):
                series.setdefault(k, []).append((float(step), float(v)))
    return series


# ----------------------------------------------------------------------------------------------
# SVG plot
# ----------------------------------------------------------------------------------------------
def _ema(values: Sequence[float], alpha: float) -> list[float]:
    out: list[float] = []
    acc = None
    for v in values:
        acc = v if acc is None else alpha * acc + (1 - alpha) * v
        out.append(acc)
    return out


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.ceil(lo / step) * step
    ticks = []
    v = start
    while v <= hi + 1e-9 * step:
        ticks.append(round(v, 10))
        v += step
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1000:
        return f"{v / 1000:g}k"
    if a >= 1:
        return f"{v:g}"
    return f"{v:.2g}"


def svg_line_plot(
    series: Mapping[str, Sequence[tuple[float, float]]],
    title: str = "",
    width: int = 520,
    height: int = 260,
    log_y: bool = True,
    smooth: float = 0.8,
) -> str:
    """An inline ``<svg>`` line chart: faint raw values plus an EMA-smoothed line per series.

    ``log_y`` is the default because flow and NTP losses span orders of magnitude early on.
    """
    pad_l, pad_r, pad_t, pad_b = 56, 12, 26, 34
    pw, ph = width - pad_l - pad_r, height - pad_t - pad_b
    pts = [(x, y) for s in series.values() for x, y in s]
    esc = html.escape
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">'
            f'<rect width="{width}" height="{height}" fill="white"/>'
            f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{esc(title)}</text>')
    if not pts:
        return head + f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no data</text></svg>'
    if log_y and any(y <= 0 for _, y in pts):
        log_y = False  # a log axis cannot show zero/negative values
    fy = (lambda y: math.log10(y)) if log_y else (lambda y: y)
    xs = [x for x, _ in pts]
    ys = [fy(y) for _, y in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.5, y1 + 0.5
    ypad = 0.05 * (y1 - y0)
    y0, y1 = y0 - ypad, y1 + ypad

    def px(x: float) -> float:
        return pad_l + (x - x0) / (x1 - x0) * pw

    def py(yv: float) -> float:  # yv already transformed
        return pad_t + (1 - (yv - y0) / (y1 - y0)) * ph

    parts = [head]
    # axes and grid
    parts.append(f'<rect x="{pad_l}" y="{pad_t}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for xt in _nice_ticks(x0, x1, 5):
        if x0 <= xt <= x1:
            X = px(xt)
            parts.append(f'<line x1="{X:.1f}" y1="{pad_t}" x2="{X:.1f}" y2="{pad_t + ph}" stroke="#eee"/>')
            parts.append(f'<text x="{X:.1f}" y="{pad_t + ph + 14}" text-anchor="middle">{_fmt(xt)}</text>')
    if log_y:
        yticks = [float(e) for e in range(math.floor(y0), math.ceil(y1) + 1)]
        if sum(y0 <= t <= y1 for t in yticks) < 3:  # add 2x and 5x marks on a short log range
            yticks = sorted({math.log10(m * 10 ** e) for e in range(math.floor(y0), math.ceil(y1) + 1)
                             for m in (1, 2, 5)})
        labels = [_fmt(10 ** t) for t in yticks]
    else:
        yticks = _nice_ticks(y0, y1, 5)
        labels = [_fmt(t) for t in yticks]
    for yt, lab in zip(yticks, labels):
        if y0 <= yt <= y1:
            Y = py(yt)
            parts.append(f'<line x1="{pad_l}" y1="{Y:.1f}" x2="{pad_l + pw}" y2="{Y:.1f}" stroke="#eee"/>')
            parts.append(f'<text x="{pad_l - 4}" y="{Y + 4:.1f}" text-anchor="end">{lab}</text>')
    parts.append(f'<text x="{pad_l + pw / 2}" y="{height - 4}" text-anchor="middle">step</text>')
    # curves
    legend_y = pad_t + 12
    for i, (name, s) in enumerate(series.items()):
        if not s:
            continue
        col = PALETTE[i % len(PALETTE)]
        s = sorted(s)
        raw = " ".join(f"{px(x):.1f},{py(fy(y)):.1f}" for x, y in s)
        sm = _ema([y for _, y in s], smooth if len(s) > 20 else 0.0)
        smooth_pts = " ".join(f"{px(x):.1f},{py(fy(y)):.1f}" for (x, _), y in zip(s, sm))
        parts.append(f'<polyline points="{raw}" fill="none" stroke="{col}" stroke-opacity="0.25" stroke-width="1"/>')
        parts.append(f'<polyline points="{smooth_pts}" fill="none" stroke="{col}" stroke-width="2"/>')
        last = sm[-1]
        parts.append(f'<rect x="{pad_l + pw - 150}" y="{legend_y - 8}" width="10" height="3" fill="{col}"/>')
        parts.append(f'<text x="{pad_l + pw - 136}" y="{legend_y - 4}">{esc(name)} ({last:.3g})</text>')
        legend_y += 14
    parts.append("</svg>")
    return "".join(parts)


# ----------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------
def _score_rows(scores: Mapping[str, Any]) -> list[tuple[str, str, str, float | None]]:
    """Flatten ``{task: {category: value}}`` into (task, category, value text, value) rows; the value is
    None for non-numbers. Targets are compared with the value, never with its 3-decimal text (0.9498 is
    printed 0.950 and still misses a 0.95 target)."""
    rows: list[tuple[str, str, str, float | None]] = []
    for task, cats in scores.items():
        for cat, v in (cats.items() if isinstance(cats, Mapping) else [("", cats)]):
            num = _is_number(v)
            rows.append((str(task), str(cat), f"{v:.3f}" if num else str(v), float(v) if num else None))
    return rows


def _target_met(value: float | None, target: float | None) -> bool | None:
    return None if value is None or target is None else value >= target


def score_table_text(scores: Mapping[str, Any], targets: Mapping[str, float] | None = None) -> str:
    """Plain-text score table for the terminal (and a Markdown table body)."""
    rows = _score_rows(scores)
    if not rows:
        return "(no scores)"
    w0 = max(4, *(len(r[0]) for r in rows))
    w1 = max(8, *(len(r[1]) for r in rows))
    lines = [f"| {'task':<{w0}} | {'category':<{w1}} | score | target  | met |",
             f"|{'-' * (w0 + 2)}|{'-' * (w1 + 2)}|-------|---------|-----|"]
    for task, cat, v, raw in rows:
        tgt = (targets or {}).get(task)
        tgt_s = f">= {tgt:.2f}" if tgt is not None else ""
        lines.append(f"| {task:<{w0}} | {cat:<{w1}} | {v:>5} | {tgt_s:<7} | {_md_mark(_target_met(raw, tgt)):<3} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# writer
# ----------------------------------------------------------------------------------------------
def _img_b64(path: str | Path) -> str | None:
    p = Path(path)
    if not p.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii")


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:24px auto;padding:0 16px;color:#222}
h1{margin-bottom:0} .sub{color:#666;margin-top:4px}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f4f4f4} .ok{color:#080;font-weight:bold} .bad{color:#b00;font-weight:bold}
.grid{display:flex;flex-wrap:wrap;gap:10px} .card{width:150px;border:1px solid #ddd;padding:4px;font-size:12px}
.card img{width:140px;height:140px;image-rendering:pixelated;display:block;margin:auto}
.plots{display:flex;flex-wrap:wrap;gap:12px} code{background:#f4f4f4;padding:1px 3px}
"""


def _mark(correct: Any) -> str:
    if correct is True:
        return '<span class="ok">&#10003;</span>'
    if correct is False:
        return '<span class="bad">&#10007;</span>'
    return ""


def write_report(data: Mapping[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` into ``out_dir``; returns both paths.

    ``data`` keys (all optional):
      ``title``, ``subtitle``: strings;
      ``timings``: {step: seconds} (+ ``total``);
      ``scores``: {task: {category: value}} and ``targets``: {task: minimum};
      ``curves``: {plot title: {series name: [(step, value), ...]}};
      ``t2i``: [{prompt, image (png path), correct (bool|None), note}];
      ``mmu``: [{image, question, answer, target, correct}];
      ``recon``: [{image (png path), caption}] (VAE reconstructions);
      ``notes``: list of strings (recipe notes, warnings);
      ``config``: any JSON-able dict shown at the end.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    esc = html.escape
    title = str(data.get("title", "Show-o2 demo report"))
    h: list[str] = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
                    f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>"]
    md: list[str] = [f"# {title}", ""]
    if data.get("subtitle"):
        h.append(f"<p class='sub'>{esc(str(data['subtitle']))}</p>")
        md += [str(data["subtitle"]), ""]

    scores = data.get("scores") or {}
    targets = data.get("targets") or {}
    h.append("<h2>Scores (held-out shapes mini-benchmark)</h2>")
    md += ["## Scores (held-out shapes mini-benchmark)", ""]
    rows = _score_rows(scores)
    if rows:
        h.append("<table><tr><th>task</th><th>category</th><th>score</th><th>target</th></tr>")
        for task, cat, v, raw in rows:
            tgt = targets.get(task)
            tgt_s = f"&ge; {tgt:.2f} {_mark(_target_met(raw, tgt))}" if tgt is not None else ""
            h.append(f"<tr><td>{esc(task)}</td><td>{esc(cat)}</td><td>{v}</td><td>{tgt_s}</td></tr>")
        h.append("</table>")
        md += [score_table_text(scores, targets), ""]
    else:
        h.append("<p>(no scores yet)</p>")
        md += ["(no scores yet)", ""]

    curves = data.get("curves") or {}
    if curves:
        h.append("<h2>Training curves</h2><div class='plots'>")
        md += ["## Training curves", ""]
        for name, series in curves.items():
            h.append(svg_line_plot(series, title=name))
            for sname, s in series.items():
                if s:
                    md.append(f"- {name} / {sname}: {len(s)} points, first {s[0][1]:.4g} -> last {s[-1][1]:.4g}")
        h.append("</div>")
        md.append("")

    t2i = data.get("t2i") or []
    if t2i:
        h.append("<h2>Text-to-image (held-out prompts, CFG)</h2><div class='grid'>")
        md += ["## Text-to-image (held-out prompts, CFG)", "", "| image | prompt | judged |", "|---|---|---|"]
        for item in t2i:
            src = _img_b64(item.get("image", ""))
            img = f"<img src='{src}'>" if src else "(missing)"
            note = esc(str(item.get("note", "")))
            h.append(f"<div class='card'>{img}<div>{_mark(item.get('correct'))} {esc(str(item.get('prompt', '')))}"
                     f"</div><div style='color:#777'>{note}</div></div>")
            rel = _rel(item.get("image", ""), out)
            md.append(f"| ![]({rel}) | {item.get('prompt', '')} | {_md_mark(item.get('correct'))} {item.get('note', '')} |")
        h.append("</div>")
        md.append("")

    mmu = data.get("mmu") or []
    if mmu:
        h.append("<h2>Image understanding (KV-cached greedy decoding)</h2>"
                 "<table><tr><th>image</th><th>question</th><th>answer</th><th>expected</th><th></th></tr>")
        md += ["## Image understanding (KV-cached greedy decoding)", "",
               "| image | question | answer | expected | ok |", "|---|---|---|---|---|"]
        for item in mmu:
            src = _img_b64(item.get("image", ""))
            img = f"<img src='{src}' style='width:64px;height:64px;image-rendering:pixelated'>" if src else ""
            h.append(f"<tr><td>{img}</td><td>{esc(str(item.get('question', '')))}</td>"
                     f"<td><b>{esc(str(item.get('answer', '')))}</b></td><td>{esc(str(item.get('target', '')))}</td>"
                     f"<td>{_mark(item.get('correct'))}</td></tr>")
            md.append(f"| ![]({_rel(item.get('image', ''), out)}) | {item.get('question', '')} | "
                      f"{item.get('answer', '')} | {item.get('target', '')} | {_md_mark(item.get('correct'))} |")
        h.append("</table>")
        md.append("")

    recon = data.get("recon") or []
    if recon:
        h.append("<h2>VAE reconstructions (top: input, bottom: decode(encode(x)))</h2><div class='grid'>")
        md += ["## VAE reconstructions", ""]
        for item in recon:
            src = _img_b64(item.get("image", ""))
            if src:
                h.append(f"<div><img src='{src}' style='image-rendering:pixelated;height:140px'>"
                         f"<div>{esc(str(item.get('caption', '')))}</div></div>")
                md.append(f"![{item.get('caption', '')}]({_rel(item['image'], out)})")
        h.append("</div>")
        md.append("")

    timings = data.get("timings") or {}
    if timings:
        h.append("<h2>Wall time per step</h2><table><tr><th>step</th><th>seconds</th><th>status</th></tr>")
        md += ["## Wall time per step", "", "| step | seconds | status |", "|---|---|---|"]
        status = data.get("status") or {}
        for k, v in timings.items():
            vs = f"{v:.1f}" if _is_number(v) else str(v)
            st = str(status.get(k, ""))
            h.append(f"<tr><td>{esc(k)}</td><td>{vs}</td><td>{esc(st)}</td></tr>")
            md.append(f"| {k} | {vs} | {st} |")
        h.append("</table>")
        md.append("")

    notes = data.get("notes") or []
    if notes:
        h.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(str(n))}</li>" for n in notes) + "</ul>")
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]

    if data.get("config") is not None:
        cfg_text = json.dumps(data["config"], indent=2, default=str)
        h.append(f"<h2>Run configuration</h2><pre>{esc(cfg_text)}</pre>")
        md += ["## Run configuration", "", "```json", cfg_text, "```", ""]

    h.append("</body></html>")
    html_path, md_path = out / "report.html", out / "report.md"
    html_path.write_text("\n".join(h))
    md_path.write_text("\n".join(md))
    return html_path, md_path


def _md_mark(correct: Any) -> str:
    return {True: "yes", False: "no"}.get(correct, "") if isinstance(correct, bool) else ""


def _rel(path: str | Path, base: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)
