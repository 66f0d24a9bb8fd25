"""Training-step benchmark: forward + backward + AdamW step on a realistic mixed micro-batch.

The micro-batch mixes text-to-image rows and captioning rows, each padded to ``max_seq_len`` (the official
layout), built by the project's one sequence builder (``datasets.sequence``). Latents are random (the VAE is
frozen and benchmarked separately). The model call mirrors ``training.loop._model_loss``: ``model(**inputs)`` with
text and flow labels, ``loss = ntp + flow`` (coefficients do not change the cost).

Reported: step time (median), tokens/s (padded positions the model computes, and real non-pad tokens), peak
memory, analytic training FLOPs (``models.flops``) and achieved FLOP/s; the caller relates that to the measured
matmul limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.common import measure_peak_memory, time_fn
from benchmarks.presets import Workload
from models.flops import ModelDims, training_flops, workload_from_batch

__all__ = ["TrainBatch", "build_train_batch", "make_train_step", "bench_train"]


@dataclass
class TrainBatch:
    """Model keyword arguments of one training micro-batch plus bookkeeping for the report."""

    inputs: dict[str, torch.Tensor]
    real_tokens: int          # non-pad positions
    tasks: list[str]


def _special_tokens(vocab: int):
    from training.synthetic import synthetic_special_tokens

    return synthetic_special_tokens(vocab)


def build_rows(cfg: Any, wl: Workload, gen: torch.Generator, t2i_rows: int, caption_rows: int,
               pad_to: int | None = "default") -> list:
    """Sequence rows (``SequenceSample``) of the two training tasks with random caption ids."""
    from datasets.sequence import SequenceBuilder

    sp = _special_tokens(cfg.llm_vocab_size)
    builder = SequenceBuilder(sp, max_seq_len=wl.max_seq_len)
    plain = sp.bos  # ids below the first special token are ordinary text
    rows = []
    for _ in range(t2i_rows):
        cap = torch.randint(0, plain, (wl.train_t2i_caption_len,), generator=gen).tolist()
        rows.append(builder.t2i(cap, (wl.grid, wl.grid), pad_to=pad_to))
    for _ in range(caption_rows):
        cap = torch.randint(0, plain, (wl.train_caption_len,), generator=gen).tolist()
        rows.append(builder.caption(cap, (wl.grid, wl.grid), pad_to=pad_to))
    return rows


def batch_inputs(rows: list, cfg: Any, wl: Workload, gen: torch.Generator, device: torch.device,
                 pad_to: int | None = None) -> TrainBatch:
    """Collate rows and add flow-matching inputs (random latents; t = 1 and no flow loss for understanding)."""
    from datasets.sequence import collate

    sp = _special_tokens(cfg.llm_vocab_size)
    batch = collate(rows, sp.pad, pad_to=pad_to)
    mp = batch["modality_positions"]
    b, m = mp.shape[:2]
    side = wl.grid * cfg.patch_size    # latent side: grid of p x p patches
    n_items = b * m
    x1 = torch.randn(n_items, cfg.image_latent_dim, side, side, generator=gen)
    x0 = torch.randn(n_items, cfg.image_latent_dim, side, side, generator=gen)
    t = torch.rand(n_items, generator=gen)
    generate = torch.zeros(n_items, dtype=torch.bool)
    for i, visuals in enumerate(batch["visuals"]):
        for j, info in enumerate(visuals):
            generate[i * m + j] = bool(getattr(info, "generate", False))
    t = torch.where(generate, t, torch.ones_like(t))
    tt = t.view(-1, 1, 1, 1)
    xt = tt * x1 + (1 - tt) * x0
    inputs = {
        "input_ids": batch["input_ids"],
        "image_latents": xt,
        "t": t,
        "modality_positions": mp,
        "text_labels": batch["labels"],
        "image_labels": x1 - x0,
        "image_masks": batch["image_masks"],
    }
    inputs = {k: v.to(device) for k, v in inputs.items()}
    real = int((batch["input_ids"] != sp.pad).sum())
    return TrainBatch(inputs, real, list(batch["task"]))


def build_train_batch(cfg: Any, wl: Workload, device: torch.device, seed: int = 0) -> TrainBatch:
    """The padded (official) training micro-batch of a workload."""
    gen = torch.Generator().manual_seed(seed)
    rows = build_rows(cfg, wl, gen, wl.train_t2i_rows, wl.train_caption_rows)
    return batch_inputs(rows, cfg, wl, gen, device, pad_to=wl.max_seq_len)


def make_train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs: dict[str, torch.Tensor],
                    full_logits: bool = True, extra: dict[str, Any] | None = None):
    """A closure running one optimisation step (what ``training.loop`` does per micro-batch without accumulation).

    ``full_logits=True`` reproduces the loop's call (``compute_logits`` left at its default, so (B, L, V) logits
    are formed and discarded besides the loss path's own supervised-position logits).
    """
    kwargs = dict(inputs)
    if extra:
        kwargs.update(extra)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)   # gradients are (re)allocated inside the measured region
        out = model(**kwargs, compute_logits=full_logits)
        loss = out.loss_ntp + out.loss_flow
        loss.backward()
        optimizer.step()

    return step


def bench_train(model: torch.nn.Module, cfg: Any, wl: Workload, device: torch.device, *, repeats: int, warmup: int,
                full_logits: bool = True, compile_model: bool = False, seed: int = 0) -> dict[str, Any]:
    """Time the training step; returns a JSON-ready dict."""
    model.train()
    tb = build_train_batch(cfg, wl, device, seed)
    # foreach AdamW is the default on every device; fused kernels exist on CUDA (and CPU in recent torch)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    runner = torch.compile(model) if compile_model else model
    step = make_train_step(runner, opt, tb.inputs, full_logits=full_logits)
    for _ in range(max(1, warmup)):   # at least one unmeasured step: optimiser state is allocated lazily
        step()
    with measure_peak_memory(device) as mem:
        step()
    timing = time_fn(step, device, repeats=repeats, warmup=0)
    dims = ModelDims.from_config(cfg)

    def count(logits: bool):
        work = workload_from_batch(tb.inputs["input_ids"], modality_positions=tb.inputs["modality_positions"],
                                   image_latents=tb.inputs["image_latents"], text_labels=tb.inputs["text_labels"],
                                   patch=cfg.patch_size, compute_logits=logits,
                                   image_masks=tb.inputs.get("image_masks") if "image_labels" in tb.inputs else None)
        return training_flops(dims, work)

    # "required" = what the step needs (no logits outside the loss): the numerator of achieved FLOP/s, so waste
    # shows up as lower utilisation instead of being credited as useful work
    flops = count(False)
    executed = count(full_logits)
    b, length = tb.inputs["input_ids"].shape
    med = timing.median
    opt.zero_grad(set_to_none=True)
    del opt
    return {
        "batch_rows": int(b),
        "row_len": int(length),
        "tasks": tb.tasks,
        "tokens": int(b * length),
        "real_tokens": tb.real_tokens,
        "full_logits": full_logits,
        "compiled": compile_model,
        "time": timing.to_dict(),
        "tokens_per_s": b * length / med,
        "real_tokens_per_s": tb.real_tokens / med,
        "flops": flops.to_dict(),
        "flops_executed": executed.total,
        "achieved_flops_per_s": flops.total / med,
        # per second of process CPU time (CPU only): what the step achieves on the cores it actually got
        "achieved_flops_per_cpu_s": (flops.total / timing.to_dict()["cpu_median_s"]
                                     if device.type == "cpu" and timing.cpu_samples else None),
        "memory": mem.to_dict(),
        "num_parameters": int(sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())),
    }
