"""KV-cached, batched autoregressive text decoding after a multimodal prefill.

The prompt (text, images, videos, as laid out by ``datasets/sequence.py``) is prefilled once with
the omni mask (bidirectional inside visual blocks); new tokens are then decoded one at a time with
a causal KV cache. This is exactly what the official loops compute without a cache: every row of
the official grown mask for a generated token is causal, and earlier rows never change (reference
§1.8 / §3).

Batches of prompts of different lengths are left-padded (``generation.runtime``): pad keys are
masked out and each row keeps its own unpadded RoPE positions, so a row decodes the same tokens
alone or in a batch (up to float rounding of the batched kernels). Finished rows keep being fed a pad token (never attended by others,
their own outputs are discarded) so the batch stays rectangular.

Sampling: ``temperature == 0`` (or ``top_k == 1``) is greedy argmax (official greedy = top-k 1
multinomial, identical except on exact ties, Q26). Otherwise logits / temperature, then top-k,
then top-p (nucleus: the smallest set of most likely tokens whose mass reaches ``top_p``; the
official top-p branch indexes the wrong dimension, Q19, fixed here), then a multinomial draw from a
per-row CPU ``torch.Generator`` (seeded: batched == one-by-one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from generation.runtime import chunk_mask, left_pad, model_device, prefix_mask

__all__ = ["TextPrompt", "TextGenerationResult", "generate_text", "filter_logits", "sample_next"]


@dataclass
class TextPrompt:
    """One prompt to continue.

    input_ids: (L,) long. modality_positions: (M, 2) blocks where visual embeddings are scattered
    (offset = time slot). mask_positions: (M, 2) blocks handed to the attention mask (default: same
    as ``modality_positions``; the official understanding demo shifts them by one, quirk Q2).
    visual_latents: one clean latent (C, [T,] h, w) per block; visual_t: t per block (1.0 = clean).
    """

    input_ids: Tensor
    modality_positions: Tensor | None = None
    mask_positions: Tensor | None = None
    visual_latents: list[Tensor] = field(default_factory=list)
    visual_t: list[float] | None = None

    def __post_init__(self) -> None:
        self.input_ids = self.input_ids.reshape(-1).long()
        if self.modality_positions is not None:
            self.modality_positions = self.modality_positions.reshape(-1, 2).long()
            real = self.modality_positions[:, 1] > 0
            if self.mask_positions is not None:
                self.mask_positions = self.mask_positions.reshape(-1, 2).long()[real]
            self.modality_positions = self.modality_positions[real]
            if self.modality_positions.shape[0] == 0:
                self.modality_positions = self.mask_positions = None
        n_blocks = 0 if self.modality_positions is None else self.modality_positions.shape[0]
        if len(self.visual_latents) != n_blocks:
            raise ValueError(f"prompt has {n_blocks} visual blocks but {len(self.visual_latents)} latents")
        if self.visual_t is None:
            self.visual_t = [1.0] * n_blocks


@dataclass
class TextGenerationResult:
    """tokens: generated ids per row, stop token excluded; stopped: whether a stop token ended the
    row; stop_tokens: that stop token (None if the row ran out of tokens); step_logits: (steps, B, V)
    float32 last-position logits (only if requested)."""

    tokens: list[list[int]]
    stopped: list[bool]
    stop_tokens: list[int | None] = field(default_factory=list)
    step_logits: Tensor | None = None


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Top-k then top-p filtering of (B, V) logits (removed entries set to -inf)."""
    if top_k is not None and top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))  # keeps ties with the k-th, as officially
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # mass strictly before each token; a token is dropped once the mass before it reaches top_p,
        # so the most likely token is always kept
        before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: Tensor,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generators: Sequence[torch.Generator] | None = None,
) -> Tensor:
    """Next token per row from (B, V) float logits -> (B,) long (on the logits' device)."""
    if temperature <= 0.0 or top_k == 1:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1).cpu()  # draw on the CPU: reproducible across devices
    out = []
    for i in range(probs.shape[0]):
        g = generators[i] if generators is not None else None
        out.append(torch.multinomial(probs[i], 1, generator=g))
    return torch.cat(out).to(logits.device)


def _visual_kwargs(prompts: Sequence[TextPrompt], batch_mp: Tensor, device: torch.device) -> dict:
    """image_latents / t / modality_positions for the prefill, items row-major (i*M + j)."""
    if not any(p.visual_latents for p in prompts):
        return {}
    M = batch_mp.shape[1]
    shapes = {tuple(v.shape) for p in prompts for v in p.visual_latents}
    if len(shapes) != 1:
        raise ValueError(f"visual inputs of different shapes in one batch: {sorted(shapes)}; "
                         "batch them separately")
    dummy = torch.zeros(next(iter(shapes)))
    items, ts = [], []
    for p in prompts:
        for j in range(M):
            if j < len(p.visual_latents):
                items.append(p.visual_latents[j].float())
                ts.append(float(p.visual_t[j]))
            else:
                items.append(dummy)
                ts.append(1.0)
    return dict(image_latents=torch.stack(items).to(device), t=torch.tensor(ts, dtype=torch.float32, device=device),
                modality_positions=batch_mp)


@torch.no_grad()
def generate_text(
    model: torch.nn.Module,
    prompts: Sequence[TextPrompt],
    *,
    pad_id: int,
    max_new_tokens: int = 300,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_ids: Sequence[int] = (),
    seeds: Sequence[int] | None = None,
    use_cache: bool = True,
    return_logits: bool = False,
    visual_pool: tuple[int, int] | None = None,
) -> TextGenerationResult:
    """Continue each prompt by up to ``max_new_tokens`` tokens, stopping a row at any of ``stop_ids``.

    ``use_cache=False`` recomputes the whole sequence for every token (the official behaviour;
    reference for tests and benchmarks). ``visual_pool=(h, w)``: per-frame token pooling of the
    visual inputs (official video understanding: 27x27 -> 14x14).
    """
    if len(prompts) == 0:
        return TextGenerationResult([], [], [])
    device = model_device(model)
    B = len(prompts)
    batch = left_pad([p.input_ids for p in prompts], pad_id,
                     modality_positions=[p.modality_positions for p in prompts],
                     mask_positions=[p.mask_positions if p.mask_positions is not None else p.modality_positions
                                     for p in prompts], device=device)
    vis = _visual_kwargs(prompts, batch.modality_positions, device)
    if vis and visual_pool is not None:
        vis["visual_pool"] = tuple(visual_pool)
    gens = None
    if temperature > 0 and top_k != 1:
        seeds = list(seeds) if seeds is not None else [0] * B
        if len(seeds) != B:
            raise ValueError(f"{len(seeds)} seeds for {B} prompts")
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    stop = torch.tensor(sorted(set(int(s) for s in stop_ids)), dtype=torch.long, device=device)

    mask = prefix_mask(batch)
    out = model(batch.input_ids, attention_mask=mask, use_cache=use_cache, compute_logits=True,
                compute_flow=False, logits_to_keep=1, position_ids=batch.position_ids, **vis)
    logits = out.logits[:, -1].float()
    cache = out.past_key_values if use_cache else None
    key_valid = batch.key_valid
    ids_all = batch.input_ids
    P = batch.length

    tokens: list[list[int]] = [[] for _ in range(B)]
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    stopped = [False] * B
    stop_tokens: list[int | None] = [None] * B
    step_logits = []
    for step in range(max_new_tokens):
        if return_logits:
            step_logits.append(logits.cpu())
        nxt = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, generators=gens)
        nxt = torch.where(finished, torch.full_like(nxt, pad_id), nxt)
        for i in range(B):
            if not finished[i]:
                tok = int(nxt[i])
                if stop.numel() and bool((stop == tok).any()):
                    stopped[i] = True
                    stop_tokens[i] = tok
                else:
                    tokens[i].append(tok)
        if stop.numel():
            finished = finished | torch.isin(nxt, stop)
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        # the new token is a valid key for every row (finished rows' pads are only seen by themselves)
        key_valid = torch.cat([key_valid, torch.ones(B, 1, dtype=torch.bool, device=device)], dim=1)
        if use_cache:
            m = chunk_mask(key_valid[:, :-1], 1, bidirectional=False)
            out = model(nxt[:, None], attention_mask=m, past_key_values=cache, use_cache=True,
                        position_offset=P + step, position_ids=batch.chunk_position_ids(step, 1),
                        compute_logits=True, compute_flow=False, logits_to_keep=1)
            cache = out.past_key_values
        else:
            ids_all = torch.cat([ids_all, nxt[:, None]], dim=1)
            grown = type(batch)(ids_all, key_valid, batch.pad_lens, batch.modality_positions, batch.mask_positions)
            out = model(ids_all, attention_mask=prefix_mask(grown), use_cache=False, compute_logits=True,
                        compute_flow=False, logits_to_keep=1, position_ids=grown.position_ids, **vis)
        logits = out.logits[:, -1].float()
    return TextGenerationResult(tokens, stopped, stop_tokens, torch.stack(step_logits) if return_logits else None)
