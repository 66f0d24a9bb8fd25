"""KV caching: prefix caching for generation and KV-cached text decoding equal full recomputation."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from parity_model import load_parity_model
from safetensors.torch import load_file

from models.showo2 import Showo2Model

FIX = Path(__file__).parent / "fixtures" / "parity"
PAD = 498  # <|image_pad|> of the tiny vocabulary


@functools.cache
def model() -> Showo2Model:
    return load_parity_model()


def t2i_batch(seed: int = 0):
    """Two rows with equal-length prefixes: [bos] text(5) [boi] | block(17) | [eoi] [eos]."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, 480, (2, 5), generator=g)
    ids = torch.cat([torch.full((2, 1), 487), text, torch.full((2, 1), 495), torch.full((2, 17), PAD),
                     torch.tensor([[496, 488]] * 2)], dim=1)
    mp = torch.tensor([[[7, 17]], [[7, 17]]])
    return ids, mp


@torch.no_grad()
def test_prefix_cached_t2i_velocity_equals_full():
    m = model()
    ids, mp = t2i_batch()
    prefix = 7
    pre = m(ids[:, :prefix], modality_positions=mp, use_cache=True, compute_logits=False)
    cache, fcache = pre.past_key_values, pre.flow_past_key_values
    assert cache.get_seq_length() == prefix and fcache.get_seq_length() == prefix
    g = torch.Generator().manual_seed(1)
    for step in range(3):   # several denoising steps reuse the same, untouched prefix cache
        z = torch.randn(2, 16, 8, 8, generator=g)
        t = torch.full((2,), 0.2 + 0.3 * step)
        full = m(ids, image_latents=z, t=t, modality_positions=mp, compute_logits=False)
        v_full = m.extract_velocity(full.v_tokens, mp, (16, 8, 8))
        part = m(ids[:, prefix:prefix + 17], image_latents=z, t=t, modality_positions=mp, past_key_values=cache,
                 flow_past_key_values=fcache, update_cache=False, compute_logits=False)
        v_part = m.extract_velocity(part.v_tokens, mp, (16, 8, 8), position_offset=prefix)
        assert torch.allclose(v_part, v_full, atol=1e-5, rtol=1e-5), (v_part - v_full).abs().max()
        assert cache.get_seq_length() == prefix and fcache.get_seq_length() == prefix


def greedy_full(m, ids, lat, mp, steps):
    toks, logits = [], []
    for _ in range(steps):
        out = m(ids, image_latents=lat, t=torch.ones(lat.shape[0]), modality_positions=mp, compute_flow=False,
                logits_to_keep=1)
        lg = out.logits[:, -1]
        nxt = lg.argmax(-1)
        toks.append(nxt)
        logits.append(lg)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
    return torch.stack(toks, 1), torch.stack(logits, 1)


def greedy_cached(m, ids, lat, mp, steps):
    out = m(ids, image_latents=lat, t=torch.ones(lat.shape[0]), modality_positions=mp, compute_flow=False,
            use_cache=True, logits_to_keep=1)
    cache, toks, logits = out.past_key_values, [], []
    lg = out.logits[:, -1]
    for _ in range(steps):
        nxt = lg.argmax(-1)
        toks.append(nxt)
        logits.append(lg)
        out = m(nxt[:, None], past_key_values=cache, use_cache=True, compute_flow=False)
        cache, lg = out.past_key_values, out.logits[:, -1]
    return torch.stack(toks, 1), torch.stack(logits, 1)


@torch.no_grad()
def test_kv_cached_greedy_decoding_equals_full_recompute():
    m = model()
    g = torch.Generator().manual_seed(3)
    # understanding prompt: [bos] sys [boi] block(17) [eoi] question, batch of 2
    ids = torch.cat([torch.full((2, 1), 487), torch.randint(0, 480, (2, 4), generator=g), torch.full((2, 1), 495),
                     torch.full((2, 17), PAD), torch.full((2, 1), 496), torch.randint(0, 480, (2, 3), generator=g)], 1)
    mp = torch.tensor([[[6, 17]], [[6, 17]]])
    lat = torch.randn(2, 16, 8, 8, generator=g)
    t_full, l_full = greedy_full(m, ids, lat, mp, 6)
    t_cache, l_cache = greedy_cached(m, ids, lat, mp, 6)
    assert torch.equal(t_full, t_cache)
    assert torch.allclose(l_full, l_cache, atol=1e-5, rtol=1e-5), (l_full - l_cache).abs().max()


@torch.no_grad()
def test_chunked_prefill_with_block_in_second_chunk():
    """Prefill in two chunks (text, then block + suffix) == one pass, logits and velocities."""
    m = model()
    ids, mp = t2i_batch(5)
    z, t = torch.randn(2, 16, 8, 8), torch.full((2,), 0.4)
    full = m(ids, image_latents=z, t=t, modality_positions=mp)
    a = m(ids[:, :7], modality_positions=mp, use_cache=True)
    b = m(ids[:, 7:], image_latents=z, t=t, modality_positions=mp, past_key_values=a.past_key_values,
          flow_past_key_values=a.flow_past_key_values, use_cache=True)
    assert torch.allclose(torch.cat([a.logits, b.logits], 1), full.logits, atol=1e-5)
    assert torch.allclose(torch.cat([a.v_tokens, b.v_tokens], 1), full.v_tokens, atol=1e-5)
    assert b.past_key_values.get_seq_length() == ids.shape[1] == b.flow_past_key_values.get_seq_length()


@torch.no_grad()
def test_left_padded_prefix_cache_reproduces_official_cfg_rows():
    """Official CFG rows have different prefix lengths (7, 11, 2, 2). Left-pad the prefixes, mask the pad keys,
    give real tokens their official positions, prefill once, then run only the block: == official v_cond/v_uncond."""
    from models.attention import mask_key_padding, omni_attention_mask

    m = model()
    io = load_file(str(FIX / "io.safetensors"))
    ids, mp, z, t = io["cfg.text_tokens"], io["cfg.modality_positions"], io["cfg.z"], io["cfg.t"]
    offs = mp[:, 0, 0]
    prefix = int(offs.max())
    b = ids.shape[0]
    shift = prefix - offs                                                    # left padding per row
    col = torch.arange(prefix)[None] - shift[:, None]                        # official position of each column
    valid = col >= 0
    pre_ids = torch.where(valid, ids.gather(1, col.clamp(min=0)), torch.full_like(col, 508))
    mp_pad = torch.tensor([[[prefix, 17]]] * b)
    mask = mask_key_padding(omni_attention_mask(mp_pad, prefix), valid)
    pre = m(pre_ids, modality_positions=mp_pad, attention_mask=mask, position_ids=col.clamp(min=0),
            use_cache=True, compute_logits=False)
    blk_ids = ids.gather(1, offs[:, None] + torch.arange(17)[None])
    kv_valid = torch.cat([valid, torch.ones(b, 17, dtype=torch.bool)], 1)
    blk_mask = mask_key_padding(omni_attention_mask(mp_pad, 17, prefix + 17, prefix), kv_valid, prefix)
    out = m(blk_ids, image_latents=z, t=t, modality_positions=mp_pad, attention_mask=blk_mask,
            position_ids=offs[:, None] + torch.arange(17)[None], past_key_values=pre.past_key_values,
            flow_past_key_values=pre.flow_past_key_values, update_cache=False, compute_logits=False)
    v = m.extract_velocity(out.v_tokens, mp_pad, (16, 8, 8), position_offset=prefix)
    ref = torch.cat([io["cfg.v_cond"], io["cfg.v_uncond"]])
    assert torch.allclose(v, ref, atol=1e-4, rtol=1e-4), (v - ref).abs().max()


@pytest.mark.slow   # transformers compiles flex_attention even on CPU: ~1-2 min of compilation here
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@torch.no_grad()
def test_flex_backend_matches_sdpa():
    """Inference fast path: flex BlockMasks in LLM and flow head == dense sdpa, full pass and cached chunks."""
    ids, mp = t2i_batch(7)
    z, t = torch.randn(2, 16, 8, 8), torch.full((2,), 0.6)
    m = model()
    ref = m(ids, image_latents=z, t=t, modality_positions=mp)
    ref_dec = m(ids[:, :5], use_cache=True, compute_flow=False)
    ref_dec = m(ids[:, 5:6], past_key_values=ref_dec.past_key_values, compute_flow=False)
    try:
        m.set_attention_backend("flex")
        got = m(ids, image_latents=z, t=t, modality_positions=mp)
        pre = m(ids[:, :7], modality_positions=mp, use_cache=True, compute_logits=False)
        blk = m(ids[:, 7:24], image_latents=z, t=t, modality_positions=mp, past_key_values=pre.past_key_values,
                flow_past_key_values=pre.flow_past_key_values, update_cache=False, compute_logits=False)
        dec = m(ids[:, :5], use_cache=True, compute_flow=False)
        dec = m(ids[:, 5:6], past_key_values=dec.past_key_values, compute_flow=False)
    finally:
        m.set_attention_backend("sdpa")
    assert torch.allclose(got.logits, ref.logits, atol=1e-5)
    assert torch.allclose(got.v_tokens, ref.v_tokens, atol=1e-5)
    assert torch.allclose(blk.v_tokens, ref.v_tokens[:, 7:24], atol=1e-5)
    assert torch.allclose(dec.logits, ref_dec.logits, atol=1e-5)
