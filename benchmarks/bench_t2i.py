"""Text-to-image latency with and without prefix caching, classifier-free guidance on.

Uses the product code path (``generation.image.VisualDenoiser`` / ``generate_visual``) on rows laid out by
``datasets.sequence`` (cond rows with a ``t2i_prompt_len``-token prompt + one empty-caption uncond row each):

* ``uncached``: the official evaluation, every step runs the full right-padded ``max_seq_len`` row (cond + uncond)
  through LLM and flow head.
* ``uncached_unpadded``: same without the trailing pads (what an uncached implementation could do for free) so the
  cache's saving is not credited with the padding.
* ``cached``: prefix (text up to ``<|vision_start|>``) pushed once through LLM and flow head, then every step runs
  only the visual block (time slot + tokens) against the cached keys/values; the visual encoder runs once for the
  identical cond/uncond latents.

Per-step cost = median over ``repeats`` velocity evaluations (warm-up excluded; for ``cached`` the first call,
which also fills the cache, is timed separately as ``first_call``), taken round-robin over the three paths. End-to-end latency per image is measured over a
short grid of ``t2i_steps`` points and extrapolated to ``t2i_report_steps`` from the per-step numbers.
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.common import Timing, measure_peak_memory, time_fn
from benchmarks.presets import Workload
from models.flops import ModelDims, RowSpec, VisualSpec, forward_flops
from models.flops import Workload as FlopWorkload

__all__ = ["build_t2i_rows", "bench_t2i"]


def build_t2i_rows(cfg: Any, wl: Workload, pad: bool, seed: int = 0):
    """(cond rows, uncond rows, pad id) as ``VisualRow`` lists."""
    from datasets.sequence import SequenceBuilder
    from generation.image import VisualRow
    from training.synthetic import synthetic_special_tokens

    sp = synthetic_special_tokens(cfg.llm_vocab_size)
    builder = SequenceBuilder(sp, max_seq_len=wl.max_seq_len)
    gen = torch.Generator().manual_seed(seed)
    pad_to = wl.max_seq_len if pad else None
    cond, uncond = [], []
    for _ in range(wl.t2i_batch):
        prompt = torch.randint(0, sp.bos, (wl.t2i_prompt_len,), generator=gen).tolist()
        s = builder.t2i(prompt, (wl.grid, wl.grid), pad_to=pad_to)
        cond.append(VisualRow(s.input_ids, s.modality_positions))
        u = builder.t2i(None, (wl.grid, wl.grid), pad_to=pad_to)
        uncond.append(VisualRow(u.input_ids, u.modality_positions))
    return cond, uncond, sp.pad


def _step_flops(cfg: Any, rows: list, cached: bool, n_block: int) -> float:
    """Analytic forward FLOPs of one velocity evaluation over ``rows`` (cond + uncond; the cached path encodes
    the shared visual items once)."""
    dims = ModelDims.from_config(cfg)
    grid_tokens = n_block - 1
    if cached:
        prefix = max(int(r.target[0]) for r in rows)      # left-padded common prefix length
        specs = [RowSpec(n_block, prefix + n_block, 0, True) for _ in rows]
    else:
        length = max(int(r.input_ids.numel()) for r in rows)
        specs = [RowSpec(length, None, 0, True) for _ in rows]
    items = len(rows) // 2 if cached else len(rows)
    return forward_flops(dims, FlopWorkload(specs, [VisualSpec(grid_tokens) for _ in range(items)],
                                            time_items=len(rows))).total


@torch.no_grad()
def bench_t2i(model: torch.nn.Module, cfg: Any, wl: Workload, device: torch.device, *, repeats: int,
              warmup: int, seed: int = 0, end_to_end: bool = True) -> dict[str, Any]:
    """Per-step cost and per-image latency of the three paths; returns a JSON-ready dict."""
    from generation.image import VisualDenoiser, generate_visual

    model.eval()
    side = wl.grid * cfg.patch_size
    latent_shape = (cfg.image_latent_dim, side, side)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(wl.t2i_batch, *latent_shape, generator=gen).to(device)
    t_mid = torch.tensor(0.5)
    result: dict[str, Any] = {"batch": wl.t2i_batch, "prompt_len": wl.t2i_prompt_len,
                              "visual_tokens": wl.grid * wl.grid, "guidance": wl.guidance, "paths": {}}
    paths = [("uncached", False, True), ("uncached_unpadded", False, False), ("cached", True, True)]
    dens: dict[str, Any] = {}
    rows: dict[str, tuple] = {}
    for name, cached, pad in paths:
        cond, uncond, pad_id = build_t2i_rows(cfg, wl, pad, seed)
        rows[name] = (cond, uncond, pad_id, cached)
        dens[name] = VisualDenoiser(model, cond, uncond, latent_shape, guidance_scale=wl.guidance, pad_id=pad_id,
                                    cached=cached)
        n_block = int(cond[0].target[1])
        entry: dict[str, Any] = {"row_len": int(max(r.input_ids.numel() for r in cond + uncond)),
                                 # positions each row pushes through LLM + flow head per step
                                 "positions_per_step": n_block if cached else
                                 int(max(r.input_ids.numel() for r in cond + uncond))}
        if cached:
            first = time_fn(lambda den=dens[name]: den(x, t_mid), device, repeats=1, warmup=0)  # prefill + step
            entry["first_call"] = first.to_dict()
        with measure_peak_memory(device) as mem:
            dens[name](x, t_mid)
        entry["memory"] = mem.to_dict()
        entry["step_flops"] = _step_flops(cfg, cond + uncond, cached, int(cond[0].target[1]))
        result["paths"][name] = entry
    # Per-step timings round-robin over the paths (A B C A B C ...), so a change in the load of a shared machine
    # during the measurement hits every path alike instead of biasing the ratio.
    steps: dict[str, Timing] = {name: Timing() for name in dens}
    for r in range(warmup + repeats):
        for name, den in dens.items():
            t = time_fn(lambda den=den: den(x, t_mid), device, repeats=1, warmup=0)
            if r >= warmup:
                steps[name].samples += t.samples
                steps[name].cpu_samples += t.cpu_samples
    for name, cached, _ in paths:
        entry = result["paths"][name]
        step = steps[name]
        entry["step"] = step.to_dict()
        prefill = max(0.0, entry["first_call"]["median_s"] - step.median) if cached else 0.0
        entry["prefill_s"] = prefill
        nfe = wl.t2i_report_steps - 1
        entry["latency_per_image_extrapolated_s"] = (prefill + nfe * step.median) / wl.t2i_batch
        if end_to_end and wl.t2i_steps >= 2:
            cond, uncond, pad_id, _ = rows[name]
            noise = x.clone()

            def run(cond=cond, uncond=uncond, pad_id=pad_id, cached=cached, noise=noise) -> None:
                generate_visual(model, cond, uncond, noise, guidance_scale=wl.guidance, num_steps=wl.t2i_steps,
                                pad_id=pad_id, cached=cached)

            e2e = time_fn(run, device, repeats=1, warmup=0)
            entry["end_to_end"] = {"num_steps": wl.t2i_steps, **e2e.to_dict(),
                                   "per_image_s": e2e.median / wl.t2i_batch}
    del dens
    base = result["paths"]["uncached"]["step"]["median_s"]
    unp = result["paths"]["uncached_unpadded"]["step"]["median_s"]
    c = result["paths"]["cached"]["step"]["median_s"]
    result["cached_step_ratio_vs_uncached"] = c / base
    result["cached_step_ratio_vs_unpadded"] = c / unp
    # noise on a shared machine only ever adds time, so the ratio of minima is a second, less load-sensitive estimate
    mins = {k: v["step"]["min_s"] for k, v in result["paths"].items()}
    result["cached_step_ratio_vs_uncached_min"] = mins["cached"] / mins["uncached"]
    result["cached_step_ratio_vs_unpadded_min"] = mins["cached"] / mins["uncached_unpadded"]
    return result
