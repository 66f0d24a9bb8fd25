"""Samplers, CFG, prefix-cached denoising and KV-cached decoding (tiny fixture model, CPU, fast)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from datasets.sequence import SequenceBuilder, VisualInfo
from datasets.tokenizer import ChatIds, SpecialTokens
from flow.samplers import cfg_combine, make_noise, num_model_evaluations, sample_ode
from flow.schedule import inference_time_grid
from generation.image import VisualRow, generate_visual
from generation.text import TextPrompt, filter_logits, generate_text, sample_next

FIX = Path(__file__).parent / "fixtures" / "parity"




@pytest.fixture(scope="module")
def fx():
    from models.config import Showo2Config
    from models.showo2 import Showo2Model

    meta = json.loads((FIX / "fixture.json").read_text())
    io = load_file(str(FIX / "io.safetensors"))
    sp = SpecialTokens.from_fixture(meta["special_ids"], 512)
    chat = ChatIds.from_fixture(meta["chat_ids"])
    model = Showo2Model(Showo2Config.preset("tiny")).eval()
    model.load_state_dict(load_file(str(FIX / "weights.safetensors")))
    return meta, io, sp, chat, model


# ------------------------------------------------------------------------------------------ samplers
def test_euler_counts_and_exact_on_constant_field():
    calls = []

    def fn(x, t):
        calls.append(float(t))
        return torch.ones_like(x) * 2.0

    x0 = torch.zeros(3, 4)
    out = sample_ode(fn, x0, num_points=6, shift=3.0)
    assert len(calls) == 5 == num_model_evaluations("euler", 6)
    assert calls[0] == 0.0 and max(calls) < 1.0  # t = 1 is never evaluated
    torch.testing.assert_close(out, torch.full((3, 4), 2.0))


def test_grid_matches_fixture(fx):
    _, io, *_ = fx
    torch.testing.assert_close(inference_time_grid(6, 3.0), io["sample.t_grid"], rtol=0, atol=0)


@pytest.mark.parametrize("method,order", [("euler", 1), ("heun", 2), ("midpoint", 2)])
def test_sampler_convergence_order(method, order):
    # dx/dt = x  ->  x(1) = x(0) * e on [0, 1]
    def fn(x, t):
        return x

    errs = []
    for n in (9, 17):
        out = sample_ode(fn, torch.ones(1), num_points=n, shift=1.0, method=method)
        errs.append(abs(float(out) - math.e))
    rate = math.log2(errs[0] / errs[1])
    assert abs(rate - order) < 0.3, (method, errs, rate)


def test_cfg_combine_and_noise_seeds():
    vc, vu = torch.randn(2, 3), torch.randn(2, 3)
    torch.testing.assert_close(cfg_combine(vc, vu, 0.0), vu)
    torch.testing.assert_close(cfg_combine(vc, vu, 1.0), vc)
    batched = make_noise((3, 2, 4, 4), seeds=[5, 6, 7])
    single = make_noise((1, 2, 4, 4), seeds=[6])
    torch.testing.assert_close(batched[1:2], single, rtol=0, atol=0)
    # one seeded generator per item = the official global draw after torch.manual_seed(seed)
    torch.manual_seed(6)
    torch.testing.assert_close(single, torch.randn(1, 2, 4, 4), rtol=0, atol=0)
    r = make_noise((1, 2, 4, 4), seeds=[6], noise_bf16_round=True)
    torch.testing.assert_close(r, single.bfloat16().float(), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ sampling logits
def test_top_k_top_p_filtering():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.7 -> 0.3 needed; mass 0.8 reached
    kept = torch.isfinite(filter_logits(logits, top_p=0.5))
    assert kept.tolist() == [[True, False, False, False]]
    kept = torch.isfinite(filter_logits(logits, top_p=0.01))
    assert kept.tolist() == [[True, False, False, False]]  # the best token always survives
    kept = torch.isfinite(filter_logits(logits[:, [2, 0, 3, 1]], top_k=2))
    assert kept.tolist() == [[False, True, False, True]]
    assert sample_next(logits, temperature=0.0).tolist() == [0]
    g1 = [torch.Generator().manual_seed(3)]
    g2 = [torch.Generator().manual_seed(3)]
    a = sample_next(logits.repeat(1, 1), temperature=1.0, top_p=0.9, generators=g1)
    b = sample_next(logits, temperature=1.0, top_p=0.9, generators=g2)
    assert a.tolist() == b.tolist() and a.item() in (0, 1, 2)


# ------------------------------------------------------------------------------------------ fixture parity
@pytest.mark.parametrize("cached", [True, False])
def test_sample_trajectory_parity(fx, cached):
    meta, io, sp, _, model = fx
    ids, mp, z = io["cfg.text_tokens"], io["cfg.modality_positions"], io["cfg.z"]
    rows = [VisualRow(ids[i], mp[i]) for i in range(4)]
    tol = meta["tolerances"]["sample_trajectory"]
    _, traj = generate_visual(model, rows[:2], rows[2:], z[:2], guidance_scale=5.0, num_steps=6, shift=3.0,
                              pad_id=sp.pad, cached=cached, return_trajectory=True)
    torch.testing.assert_close(traj, io["sample.trajectory"][:, :2], atol=tol["atol"], rtol=tol["rtol"])


@pytest.mark.parametrize("cached", [True, False])
def test_cfg_velocity_parity(fx, cached):
    """Fixture §3.4: one guided velocity evaluation (cond rows then null rows in one forward)."""
    from generation.image import VisualDenoiser

    _, io, sp, _, model = fx
    ids, mp, z = io["cfg.text_tokens"], io["cfg.modality_positions"], io["cfg.z"]
    rows = [VisualRow(ids[i], mp[i]) for i in range(4)]
    den = VisualDenoiser(model, rows[:2], rows[2:], (16, 8, 8), guidance_scale=5.0, pad_id=sp.pad, cached=cached)
    v = den(z[:2], torch.tensor(0.3))
    torch.testing.assert_close(v, io["cfg.v"][:2], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(v, io["cfg.v"][2:], atol=1e-4, rtol=1e-4)  # official returns v_g twice
    cond_only = VisualDenoiser(model, rows[:2], None, (16, 8, 8), guidance_scale=0.0, pad_id=sp.pad, cached=cached)
    torch.testing.assert_close(cond_only(z[:2], torch.tensor(0.3)), io["cfg.v_cond"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name,off_by_one", [("mmu_gen", None), ("mmu_gen_trainlayout", False)])
@pytest.mark.parametrize("use_cache", [True, False])
def test_mmu_gen_parity(fx, name, off_by_one, use_cache):
    meta, io, sp, chat, model = fx
    b = SequenceBuilder(sp, chat)
    s = b.mmu_prompt(io["mmu_gen.question_ids"].tolist(), VisualInfo.image(16), layout="official_demo",
                     off_by_one_block=off_by_one)
    assert s.modality_positions.tolist() == io[f"{name}.modality_positions"][0].tolist()
    scatter = torch.tensor([[v.offset, v.block_len] for v in s.visuals])
    p = TextPrompt(s.input_ids, scatter, s.modality_positions, [io["mmu_gen.image_latents"][0]])
    r = generate_text(model, [p], pad_id=sp.pad, max_new_tokens=8, stop_ids=(), use_cache=use_cache,
                      return_logits=True)
    assert r.tokens[0] == io[f"{name}.tokens"].tolist()
    torch.testing.assert_close(r.step_logits[:, 0], io[f"{name}.step_logits"], atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------ cache / batch equivalence
def _t2i_rows(sp, captions, n_tokens=16):
    b = SequenceBuilder(sp, max_seq_len=48)
    rows = b.t2i_cfg(captions, VisualInfo.image(n_tokens))
    rows = [VisualRow(r.input_ids, r.modality_positions) for r in rows]
    return rows[: len(captions)], rows[len(captions):]


def test_t2i_batched_equals_one_by_one(fx):
    _, _, sp, _, model = fx
    caps = [[5, 6, 7], list(range(20, 31)), [40]]
    cond, unc = _t2i_rows(sp, caps)
    noise = make_noise((3, 16, 8, 8), seeds=[1, 2, 3])
    kw = dict(guidance_scale=3.0, num_steps=4, pad_id=sp.pad)
    batched = generate_visual(model, cond, unc, noise, **kw)
    for i in range(3):
        one = generate_visual(model, cond[i:i + 1], unc[i:i + 1], noise[i:i + 1], **kw)
        torch.testing.assert_close(batched[i:i + 1], one, atol=2e-4, rtol=1e-4)


def test_guidance_zero_keeps_all_images(fx):
    _, _, sp, _, model = fx
    cond, unc = _t2i_rows(sp, [[5, 6], [7, 8, 9]])
    noise = make_noise((2, 16, 8, 8), seeds=[1, 2])
    out = generate_visual(model, cond, unc, noise, guidance_scale=0.0, num_steps=3, pad_id=sp.pad)
    ref = generate_visual(model, cond, None, noise, guidance_scale=0.0, num_steps=3, pad_id=sp.pad)
    assert out.shape == (2, 16, 8, 8)  # Q11 fixed: no halving
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_context_images_cached_equals_uncached(fx):
    """Mixed-modality row: a clean history image before the generated one (t = 1 context)."""
    _, _, sp, _, model = fx
    b = SequenceBuilder(sp)
    s = b.interleaved([[30, 31, 32], [40, 41]], [VisualInfo.image(16), VisualInfo.image(16)], flag=[7, 8],
                      pad_to=None)
    hist = torch.randn(16, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = [VisualRow(s.input_ids, s.modality_positions, [hist])]
    u = b.t2i(None, VisualInfo.image(16), pad_to=None)
    unc = [VisualRow(u.input_ids, u.modality_positions)]
    noise = make_noise((1, 16, 8, 8), seeds=[4])
    kw = dict(guidance_scale=5.0, num_steps=4, pad_id=sp.pad)
    a = generate_visual(model, cond, unc, noise, cached=True, **kw)
    c = generate_visual(model, cond, unc, noise, cached=False, **kw)
    torch.testing.assert_close(a, c, atol=2e-4, rtol=1e-4)


def test_video_and_i2v_cached_equals_uncached(fx):
    _, _, sp, _, model = fx
    b = SequenceBuilder(sp)
    info = VisualInfo.video(16, 2)
    cond = [VisualRow(b.t2v([5, 6, 7], info, pad_to=None).input_ids, b.t2v([5, 6, 7], info, pad_to=None).modality_positions)]
    u = b.t2v(None, info, pad_to=None)
    unc = [VisualRow(u.input_ids, u.modality_positions)]
    noise = make_noise((1, 16, 2, 8, 8), seeds=[9])
    first = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    kw = dict(guidance_scale=4.0, num_steps=3, pad_id=sp.pad)
    for ff in (None, first):
        a = generate_visual(model, cond, unc, noise, cached=True, first_frame=ff, **kw)
        c = generate_visual(model, cond, unc, noise, cached=False, first_frame=ff, **kw)
        torch.testing.assert_close(a, c, atol=2e-4, rtol=1e-4)
        if ff is not None:
            torch.testing.assert_close(a[:, :, 0], first, rtol=0, atol=0)  # conditioning frame untouched


def test_text_batched_equals_one_by_one(fx):
    _, io, sp, chat, model = fx
    b = SequenceBuilder(sp, chat)
    lat = io["mmu_gen.image_latents"][0]
    prompts = []
    for q, with_img in (([20, 21, 22, 23, 24], True), ([30, 31], True), ([40, 41, 42], False)):
        s = b.mmu_prompt(q, VisualInfo.image(16) if with_img else None, layout="train")
        scatter = torch.tensor([[v.offset, v.block_len] for v in s.visuals]).reshape(-1, 2)
        prompts.append(TextPrompt(s.input_ids, scatter, s.modality_positions, [lat] if with_img else []))
    for kw in (dict(temperature=0.0), dict(temperature=1.0, top_k=50, top_p=0.9)):
        batched = generate_text(model, prompts, pad_id=sp.pad, max_new_tokens=6, stop_ids=(sp.eos,),
                                seeds=[1, 2, 3], **kw)
        for i, p in enumerate(prompts):
            one = generate_text(model, [p], pad_id=sp.pad, max_new_tokens=6, stop_ids=(sp.eos,), seeds=[i + 1], **kw)
            assert one.tokens[0] == batched.tokens[i]
            assert one.stopped[0] == batched.stopped[i]


def test_stop_tokens_end_rows(fx):
    _, io, sp, chat, model = fx
    b = SequenceBuilder(sp, chat)
    s = b.mmu_prompt([20, 21], None, layout="train")
    p = TextPrompt(s.input_ids)
    free = generate_text(model, [p], pad_id=sp.pad, max_new_tokens=5, stop_ids=())
    first = free.tokens[0][1]
    stopped = generate_text(model, [p], pad_id=sp.pad, max_new_tokens=5, stop_ids=(first,))
    assert stopped.stopped[0] and stopped.tokens[0] == free.tokens[0][: free.tokens[0].index(first)]
