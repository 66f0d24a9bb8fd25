"""Sequence packing study: does putting several variable-length samples in one row pay off for training?

Layouts compared on the same samples (``pack_rows`` samples: half t2i rows with captions of varying length, half
captioning rows), all through the real training step (forward + backward + AdamW):

* ``padded``: the official layout, every sample padded to ``max_seq_len``;
* ``trimmed``: one sample per row, the batch padded only to its longest row (rounded up to a multiple of 64);
* ``packed-<L>``: samples packed first-fit-decreasing into rows of ``L`` tokens (``max_seq_len`` and
  ``2 x max_seq_len``), each sample with its own positions (restarting at 0) and a block-diagonal omni mask, so a
  packed row computes exactly the per-sample losses (checked by ``packed_equals_padded``).

The model supports this without changes: ``position_ids`` (B, L) override, a bool ``attention_mask``, several
``modality_positions`` slots per row. The cross-sample next-token target at each boundary is dropped from the labels.

Why it may not pay off: at 432 px every sample carries a 730-token visual block, so samples are 744-1024 tokens
long; two never fit into one 1024-token row, and longer rows make dense attention (which on CPU, and with SDPA
dense masks anywhere, computes every query-key pair, masked or not) grow quadratically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.common import Timing, time_fn
from benchmarks.presets import Workload
from models.flops import ModelDims, RowSpec, VisualSpec, training_flops
from models.flops import Workload as FlopWorkload

__all__ = ["sample_rows", "pack_first_fit", "packed_batch", "padded_batch", "bench_packing"]

IGNORE = -100


def sample_rows(cfg: Any, wl: Workload, seed: int = 0) -> list:
    """``pack_rows`` unpadded samples with a realistic length spread (t2i captions 16..128, captions 10..60)."""
    from datasets.sequence import SequenceBuilder
    from training.synthetic import synthetic_special_tokens

    sp = synthetic_special_tokens(cfg.llm_vocab_size)
    builder = SequenceBuilder(sp, max_seq_len=wl.max_seq_len)
    g = torch.Generator().manual_seed(seed)
    rows = []
    n_t2i = (wl.pack_rows + 1) // 2
    block = wl.grid * wl.grid + 1
    room = max(wl.max_seq_len - block - 4, 1)
    for i in range(wl.pack_rows):
        if i < n_t2i:
            n = int(torch.randint(min(16, room), min(128, room) + 1, (1,), generator=g))
            ids = torch.randint(0, sp.bos, (n,), generator=g).tolist()
            rows.append(builder.t2i(ids, (wl.grid, wl.grid), pad_to=None))
        else:
            n = int(torch.randint(min(10, room), min(60, room) + 1, (1,), generator=g))
            ids = torch.randint(0, sp.bos, (n,), generator=g).tolist()
            rows.append(builder.caption(ids, (wl.grid, wl.grid), pad_to=None))
    return rows


def pack_first_fit(lengths: list[int], row_len: int) -> list[list[int]]:
    """First-fit decreasing: indices of samples per row; every row's total length <= ``row_len``."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        if lengths[i] > row_len:
            raise ValueError(f"sample of {lengths[i]} tokens does not fit a {row_len}-token row")
        for b in range(len(bins)):
            if room[b] >= lengths[i]:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(row_len - lengths[i])
    return bins


@dataclass
class LayoutBatch:
    inputs: dict[str, torch.Tensor]
    row_len: int
    rows: int
    samples: int
    real_tokens: int
    flop_work: FlopWorkload


def _latents(slot_samples: list[int | None], n_samples: int, cfg: Any, wl: Workload, samples: list,
             seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x_t, t, velocity target per slot item (row-major; ``None`` = padding-slot dummy, clean, no loss).

    Values are drawn per *sample* (same for every layout), so layouts see identical inputs.
    """
    side = wl.grid * cfg.patch_size
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(n_samples, cfg.image_latent_dim, side, side, generator=g)
    x0 = torch.randn(n_samples, cfg.image_latent_dim, side, side, generator=g)
    t = torch.rand(n_samples, generator=g)
    gen_mask = torch.tensor([bool(s.visuals[0].generate) for s in samples])
    t = torch.where(gen_mask, t, torch.ones_like(t))
    idx = torch.tensor([0 if i is None else i for i in slot_samples])
    real = torch.tensor([i is not None for i in slot_samples])
    x1, x0 = x1[idx] * real.view(-1, 1, 1, 1), x0[idx] * real.view(-1, 1, 1, 1)
    t = torch.where(real, t[idx], torch.ones(len(slot_samples)))
    tt = t.view(-1, 1, 1, 1)
    return tt * x1 + (1 - tt) * x0, t, x1 - x0


def padded_batch(samples: list, cfg: Any, wl: Workload, pad_to: int, seed: int = 0) -> LayoutBatch:
    """One sample per row padded to ``pad_to`` (``None``: to the longest, rounded up to 64)."""
    from datasets.sequence import collate
    from training.synthetic import synthetic_special_tokens

    sp = synthetic_special_tokens(cfg.llm_vocab_size)
    longest = max(len(s) for s in samples)
    length = pad_to if pad_to is not None else min(int(math.ceil(longest / 64) * 64), max(wl.max_seq_len, longest))
    batch = collate(samples, sp.pad, pad_to=length)
    xt, t, u = _latents(list(range(len(samples))), len(samples), cfg, wl, samples, seed)
    inputs = dict(input_ids=batch["input_ids"], labels=batch["labels"], image_masks=batch["image_masks"],
                  modality_positions=batch["modality_positions"], image_latents=xt, t=t, image_labels=u)
    work = FlopWorkload([RowSpec(length, None, int((s.labels[1:] != IGNORE).sum())) for s in samples],
                        [VisualSpec(wl.grid * wl.grid) for _ in samples])
    real = sum(len(s) for s in samples)
    return LayoutBatch(inputs, length, len(samples), len(samples), real, work)


def packed_batch(samples: list, cfg: Any, wl: Workload, row_len: int, seed: int = 0) -> LayoutBatch:
    """Samples packed into rows of ``row_len``: restarted positions, block-diagonal omni mask, per-sample slots."""
    from models.attention import omni_attention_mask
    from training.synthetic import synthetic_special_tokens

    sp = synthetic_special_tokens(cfg.llm_vocab_size)
    bins = pack_first_fit([len(s) for s in samples], row_len)
    b = len(bins)
    m = max(len(x) for x in bins)
    ids = torch.full((b, row_len), sp.pad, dtype=torch.long)
    labels = torch.full((b, row_len), IGNORE, dtype=torch.long)
    img = torch.zeros((b, row_len), dtype=torch.long)
    pos = torch.zeros((b, row_len), dtype=torch.long)
    seg = torch.full((b, row_len), -1, dtype=torch.long)
    mp = torch.zeros((b, m, 2), dtype=torch.long)
    slot_samples: list[int | None] = []
    rows_spec = []
    for r, members in enumerate(bins):
        off = 0
        for j, i in enumerate(members):
            s = samples[i]
            n = len(s)
            ids[r, off:off + n] = s.input_ids
            lab = s.labels.clone()
            lab[0] = IGNORE  # no next-token target across the boundary into this sample
            labels[r, off:off + n] = lab
            img[r, off:off + n] = s.image_masks
            pos[r, off:off + n] = torch.arange(n)
            seg[r, off:off + n] = j
            mp[r, j] = s.modality_positions[0] + torch.tensor([off, 0])
            off += n
        # trailing pads: positions continue (harmless, nothing attends to them), their own segment
        pos[r, off:] = torch.arange(off, row_len) - off
        slot_samples += list(members) + [None] * (m - len(members))
        rows_spec.append(RowSpec(row_len, None, int((labels[r, 1:] != IGNORE).sum())))
    omni = omni_attention_mask(mp, row_len)                                   # causal OR same visual block
    same = (seg[:, :, None] == seg[:, None, :])[:, None]                      # block-diagonal per sample
    mask = omni & same
    xt, t, u = _latents(slot_samples, len(samples), cfg, wl, samples, seed)
    inputs = dict(input_ids=ids, labels=labels, image_masks=img, modality_positions=mp, image_latents=xt, t=t,
                  image_labels=u, position_ids=pos, attention_mask=mask)
    work = FlopWorkload(rows_spec, [VisualSpec(wl.grid * wl.grid) for _ in slot_samples])
    return LayoutBatch(inputs, row_len, b, len(samples), sum(len(s) for s in samples), work)


def _model_kwargs(lb: LayoutBatch, device: torch.device) -> dict[str, torch.Tensor]:
    kw = {k: v.to(device) for k, v in lb.inputs.items()}
    kw["text_labels"] = kw.pop("labels")
    return kw


def bench_packing(model: torch.nn.Module, cfg: Any, wl: Workload, device: torch.device, *, repeats: int,
                  warmup: int, seed: int = 0) -> dict[str, Any]:
    """Training-step time and real tokens/s of each layout on the same samples; analytic FLOPs alongside."""
    from benchmarks.bench_train import make_train_step

    model.train()
    samples = sample_rows(cfg, wl, seed)
    dims = ModelDims.from_config(cfg)
    layouts: dict[str, LayoutBatch] = {
        "padded": padded_batch(samples, cfg, wl, wl.max_seq_len, seed),
        "trimmed": padded_batch(samples, cfg, wl, None, seed),
    }
    for row_len in (wl.max_seq_len, 2 * wl.max_seq_len):
        lb = packed_batch(samples, cfg, wl, row_len, seed)
        if lb.rows < len(samples):   # only a real packing (some row holds >= 2 samples) is worth timing
            layouts[f"packed-{row_len}"] = lb
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    out: dict[str, Any] = {"samples": len(samples), "sample_lengths": [len(s) for s in samples], "layouts": {}}
    steps = {name: make_train_step(model, opt, _model_kwargs(lb, device), full_logits=False)
             for name, lb in layouts.items()}
    timings = {name: Timing() for name in layouts}
    # round-robin over layouts so load changes on a shared machine hit all of them alike
    for r in range(max(1, warmup) + repeats):
        for name, step in steps.items():
            t = time_fn(step, device, repeats=1, warmup=0)
            if r >= max(1, warmup):
                timings[name].samples += t.samples
                timings[name].cpu_samples += t.cpu_samples
    for name, lb in layouts.items():
        t = timings[name]
        flops = training_flops(dims, lb.flop_work)
        out["layouts"][name] = {
            "rows": lb.rows, "row_len": lb.row_len, "samples": lb.samples, "positions": lb.rows * lb.row_len,
            "real_tokens": lb.real_tokens, "time": t.to_dict(), "real_tokens_per_s": lb.real_tokens / t.median,
            "analytic_flops": flops.total, "analytic_attention_share": flops.attention / flops.total,
        }
    opt.zero_grad(set_to_none=True)
    base = out["layouts"]["padded"]
    best = min(out["layouts"].items(), key=lambda kv: kv[1]["time"]["median_s"])
    for v in out["layouts"].values():
        v["speedup_vs_padded"] = base["time"]["median_s"] / v["time"]["median_s"]
        v["flops_vs_padded"] = v["analytic_flops"] / base["analytic_flops"]
    packed = {k: v for k, v in out["layouts"].items() if k.startswith("packed")}
    trimmed = out["layouts"]["trimmed"]
    if not packed:
        verdict = (f"packing impossible at these lengths (no two samples fit one {wl.max_seq_len}-token row); "
                   f"trimming padding gives {trimmed['speedup_vs_padded']:.2f}x")
    else:
        k, v = max(packed.items(), key=lambda kv: kv[1]["speedup_vs_padded"])
        pays = v["speedup_vs_padded"] > max(1.05, trimmed["speedup_vs_padded"])
        verdict = (f"{'packing pays off' if pays else 'packing does not pay off'}: best packed ({k}) "
                   f"{v['speedup_vs_padded']:.2f}x vs trimmed {trimmed['speedup_vs_padded']:.2f}x vs padded")
    out["fastest"] = best[0]
    out["verdict"] = verdict
    return out


@torch.no_grad()
def packed_equals_padded(model: torch.nn.Module, cfg: Any, wl: Workload, row_len: int, seed: int = 0) -> tuple:
    """(padded losses, packed losses) on the same samples: equal up to rounding if packing is exact."""
    samples = sample_rows(cfg, wl, seed)
    a = padded_batch(samples, cfg, wl, wl.max_seq_len, seed)
    b = packed_batch(samples, cfg, wl, row_len, seed)
    dev = next(model.parameters()).device
    oa = model(**_model_kwargs(a, dev), compute_logits=False)
    ob = model(**_model_kwargs(b, dev), compute_logits=False)
    return (float(oa.loss_ntp), float(oa.loss_flow)), (float(ob.loss_ntp), float(ob.loss_flow))
