"""Understanding decode speed with and without a KV cache (``generation.text.generate_text``).

Prompt: ``[bos] [boi] [img_pad x (n+1)] [eoi] question`` with an n = ``decode_grid``^2 token image (26x26 -> a
~700-token prefix), greedy decoding of exactly ``decode_new_tokens`` tokens (no stop ids).

* ``cached``: one omni-mask prefill, then one causal single-token forward per new token.
* ``nocache``: the official loop: every new token re-runs the whole sequence, image encoder included.

Reported: end-to-end time for the new tokens (prefill included), new tokens/s, the prefill time (one forward over
the prompt) and the per-token decode cost after the prefill.
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.common import measure_peak_memory, time_fn
from benchmarks.presets import Workload

__all__ = ["build_decode_prompts", "bench_decode"]


def build_decode_prompts(cfg: Any, wl: Workload, seed: int = 0):
    """(prompts, pad id): ``decode_batch`` identical-shape prompts with random question ids and latents."""
    from datasets.sequence import SequenceBuilder
    from generation.text import TextPrompt
    from training.synthetic import synthetic_special_tokens

    sp = synthetic_special_tokens(cfg.llm_vocab_size)
    builder = SequenceBuilder(sp, max_seq_len=None)
    gen = torch.Generator().manual_seed(seed)
    side = wl.decode_grid * cfg.patch_size
    prompts = []
    for _ in range(wl.decode_batch):
        q = torch.randint(0, sp.bos, (wl.decode_question_len,), generator=gen).tolist()
        s = builder.caption(q, (wl.decode_grid, wl.decode_grid), pad_to=None)
        ids = s.input_ids[:-1]  # drop the closing eos: generation continues after the question
        lat = torch.randn(cfg.image_latent_dim, side, side, generator=gen)
        prompts.append(TextPrompt(ids, s.modality_positions, visual_latents=[lat]))
    return prompts, sp.pad


@torch.no_grad()
def bench_decode(model: torch.nn.Module, cfg: Any, wl: Workload, device: torch.device, *, repeats: int,
                 warmup: int, nocache_repeats: int = 1, seed: int = 0) -> dict[str, Any]:
    from generation.runtime import left_pad, prefix_mask
    from generation.text import _visual_kwargs, generate_text

    model.eval()
    prompts, pad_id = build_decode_prompts(cfg, wl, seed)
    new = wl.decode_new_tokens
    prefix_len = int(prompts[0].input_ids.numel())

    # prefill alone (one forward over the prompt, last-position logits), as generate_text does it
    batch = left_pad([p.input_ids for p in prompts], pad_id, modality_positions=[p.modality_positions for p in prompts],
                     device=device)
    vis = _visual_kwargs(prompts, batch.modality_positions, device)
    mask = prefix_mask(batch)

    def prefill() -> None:
        model(batch.input_ids, attention_mask=mask, use_cache=True, compute_logits=True, compute_flow=False,
              logits_to_keep=1, **vis)

    t_prefill = time_fn(prefill, device, repeats=repeats, warmup=warmup)
    result: dict[str, Any] = {"batch": wl.decode_batch, "prefix_len": prefix_len, "new_tokens": new,
                              "prefill": t_prefill.to_dict(), "paths": {}}
    for name, use_cache, reps in (("cached", True, repeats), ("nocache", False, nocache_repeats)):
        def run(use_cache: bool = use_cache) -> None:
            generate_text(model, prompts, pad_id=pad_id, max_new_tokens=new, use_cache=use_cache)

        with measure_peak_memory(device) as mem:
            t = time_fn(run, device, repeats=max(1, reps), warmup=warmup if use_cache else 0)
        after = max(t.median - t_prefill.median, 0.0)
        result["paths"][name] = {
            "time": t.to_dict(),
            "new_tokens_per_s": wl.decode_batch * new / t.median,
            "per_token_after_prefill_s": after / max(new - 1, 1),
            "memory": mem.to_dict(),
        }
    result["speedup_cached_vs_nocache"] = (result["paths"]["nocache"]["time"]["median_s"]
                                           / result["paths"]["cached"]["time"]["median_s"])
    return result
