"""Parity against the official implementation: every scenario of tests/fixtures/parity (fp32, CPU)."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from parity_model import load_parity_model
from safetensors.torch import load_file

from models.attention import omni_attention_mask
from models.layout import build_layout
from models.losses import ntp_loss
from models.showo2 import Showo2Model

FIX = Path(__file__).parent / "fixtures" / "parity"
ATOL = RTOL = 1e-4
LOSS_TOL = 1e-5
MAXDIFF: dict[str, float] = {}




@functools.cache
def fixture_json() -> dict:
    return json.loads((FIX / "fixture.json").read_text())


@functools.cache
def io() -> dict[str, torch.Tensor]:
    return load_file(str(FIX / "io.safetensors"))


@functools.cache
def model(grid: int | None = None) -> Showo2Model:
    """The fixture weights loaded through the official-key loading path (meta build + assign)."""
    over = {} if grid is None else dict(image_latent_height=grid, image_latent_width=grid)
    return load_parity_model(**over)


def close(name: str, got: torch.Tensor, ref: torch.Tensor, atol: float = ATOL, rtol: float = RTOL) -> None:
    got = got.detach().float()
    assert got.shape == ref.shape, (name, got.shape, ref.shape)
    MAXDIFF[name] = float((got - ref).abs().max()) if got.numel() else 0.0
    assert torch.allclose(got, ref, atol=atol, rtol=rtol), f"{name}: max diff {MAXDIFF[name]:.3g}"


def run(s: str, latents_key: str = "xt", m: Showo2Model | None = None, **kw):
    d = io()
    m = m or model()
    return m(d[f"{s}.text_tokens"], image_latents=d[f"{s}.{latents_key}"], t=d[f"{s}.t"],
             modality_positions=d[f"{s}.modality_positions"], **kw)


def test_tiny_preset_matches_fixture_shapes():
    shapes = fixture_json()["model"]["state_dict_shapes"]
    sd = model().state_dict()
    assert {k: list(v.shape) for k, v in sd.items()} == shapes


@pytest.mark.parametrize("s", ["t2i", "mmu", "video", "cfg", "train", "t2i_interp", "mmu_gen",
                               "mmu_gen_trainlayout"])
def test_omni_mask_matches_fixture(s):
    d = io()
    mp = d[f"{s}.modality_positions"]
    allowed = d[f"{s}.attn_allowed"]
    got = omni_attention_mask(mp, allowed.shape[-1])
    assert torch.equal(got, allowed)


@torch.no_grad()
def test_t2i():
    d, m = io(), model()
    out = run("t2i", text_labels=d["t2i.text_labels"], image_labels=d["t2i.ut"], image_masks=d["t2i.image_masks"])
    close("t2i.logits", out.logits, d["t2i.logits"])
    close("t2i.v_pred_tokens", out.v_tokens, d["t2i.v_pred_tokens"])
    close("t2i.dbg.llm_last_hidden", out.hidden, d["t2i.dbg.llm_last_hidden"])
    v = m.extract_velocity(out.v_tokens, d["t2i.modality_positions"], d["t2i.xt"].shape[1:])
    close("t2i.v_pred", v, d["t2i.v_pred"])
    close("t2i.loss_flow", out.loss_flow, d["t2i.loss_flow"], LOSS_TOL, LOSS_TOL)
    # official: NaN when no text label is supervised; the model's guarded default is 0
    assert torch.isnan(ntp_loss(out.logits, d["t2i.text_labels"], nan_if_empty=True))
    assert torch.isnan(d["t2i.loss_ntp"])
    assert out.loss_ntp.item() == 0.0
    # intermediates
    t_emb, _ = m.embed_time(d["t2i.t"])
    close("t2i.dbg.time_embeds", t_emb, d["t2i.dbg.time_embeds"])
    close("t2i.dbg.image_embeds", m.encode_visual(d["t2i.xt"]), d["t2i.dbg.image_embeds"])
    und = m.image_embedder_und(d["t2i.xt"]) + m.position_embedding.weight
    close("t2i.dbg.und_trans_out", m.und_trans(inputs_embeds=und).last_hidden_state, d["t2i.dbg.und_trans_out"])


@torch.no_grad()
def test_mmu():
    d = io()
    out = run("mmu", latents_key="image_latents", text_labels=d["mmu.text_labels"])
    idx = d["mmu.logits_index"]
    close("mmu.logits_supervised", out.logits[idx[:, 0], idx[:, 1]], d["mmu.logits_supervised"])
    close("mmu.logits_first64", out.logits[..., :64], d["mmu.logits_first64"])
    close("mmu.loss_ntp", out.loss_ntp, d["mmu.loss_ntp"], LOSS_TOL, LOSS_TOL)
    # logits only at the scored positions give the same numbers
    rows = idx[:, 0].unique()
    pos = torch.stack([idx[idx[:, 0] == r, 1][:2] for r in rows])
    part = run("mmu", latents_key="image_latents", logits_to_keep=pos, compute_flow=False)
    close("mmu.logits_to_keep", part.logits, out.logits[rows[:, None], pos])


@torch.no_grad()
def test_video():
    d, m = io(), model()
    out = run("video", image_labels=d["video.ut"], image_masks=d["video.image_masks"])
    close("video.v_pred_tokens", out.v_tokens, d["video.v_pred_tokens"])
    close("video.logits_first64", out.logits[..., :64], d["video.logits_first64"])
    close("video.dbg.llm_last_hidden", out.hidden, d["video.dbg.llm_last_hidden"])
    v = m.extract_velocity(out.v_tokens, d["video.modality_positions"], d["video.xt"].shape[1:])
    close("video.v_pred", v, d["video.v_pred"])
    close("video.loss_flow", out.loss_flow, d["video.loss_flow"], LOSS_TOL, LOSS_TOL)
    close("video.dbg.image_embeds", m.encode_visual(d["video.xt"]), d["video.dbg.image_embeds"])
    close("video.dbg.time_embeds", m.embed_time(d["video.t"])[0], d["video.dbg.time_embeds"])
    frames = d["video.xt"].permute(0, 2, 1, 3, 4).flatten(0, 1)
    und = m.image_embedder_und(frames) + m.position_embedding.weight
    close("video.dbg.und_trans_out", m.und_trans(inputs_embeds=und).last_hidden_state, d["video.dbg.und_trans_out"])
    # image-to-video conditioning zeroes frame 0 only
    vc = m.extract_velocity(out.v_tokens, d["video.modality_positions"], d["video.xt"].shape[1:],
                            first_frame_as_cond=True)
    assert vc[:, :, 0].abs().max() == 0 and torch.equal(vc[:, :, 1:], v[:, :, 1:])


def cfg_velocity(m: Showo2Model, tokens, mp, z, t, scale: float) -> torch.Tensor:
    """The reference t2i_generate drift: [cond; uncond] rows -> cat([v_g, v_g])."""
    out = m(tokens, image_latents=z, t=t, modality_positions=mp, compute_logits=False)
    v = m.extract_velocity(out.v_tokens, mp, z.shape[1:])
    v_c, v_u = v.chunk(2)
    v_g = v_u + scale * (v_c - v_u)
    return torch.cat([v_g, v_g]), v_c, v_u


@torch.no_grad()
def test_cfg():
    d = io()
    v, v_c, v_u = cfg_velocity(model(), d["cfg.text_tokens"], d["cfg.modality_positions"], d["cfg.z"], d["cfg.t"],
                               float(d["cfg.guidance_scale"]))
    close("cfg.v_cond", v_c, d["cfg.v_cond"])
    close("cfg.v_uncond", v_u, d["cfg.v_uncond"])
    close("cfg.v", v, d["cfg.v"])


@torch.no_grad()
def test_sample():
    d = io()
    s = torch.linspace(0, 1, 6)
    grid = s / (s + 3.0 - 3.0 * s)
    close("sample.t_grid", grid, d["sample.t_grid"], 1e-7, 0)
    x = d["cfg.z"].clone()
    traj = [x]
    for i in range(5):
        t = torch.full((x.shape[0],), float(grid[i]))
        v, _, _ = cfg_velocity(model(), d["cfg.text_tokens"], d["cfg.modality_positions"], x, t, 5.0)
        x = x + (grid[i + 1] - grid[i]) * v.float()
        traj.append(x)
    close("sample.trajectory", torch.stack(traj), d["sample.trajectory"], 5e-4, 1e-4)


def mmu_gen_prefix(m: Showo2Model):
    """Token ids and embedding slot of the demo prefix: a + [boi] + [time, 16 image] + b[1:] (42 positions)."""
    d = io()
    a, b = d["mmu_gen.text_tokens_a"], d["mmu_gen.text_tokens_b"]
    pad = fixture_json()["special_ids"]["img_pad_id"]
    ids = torch.cat([a, b[:, :1], torch.full((1, 17), pad), b[:, 1:]], dim=1)
    emb_slot = torch.tensor([[[a.shape[1] + 1, 17]]])
    return ids, emb_slot


@pytest.mark.parametrize("s", ["mmu_gen", "mmu_gen_trainlayout"])
@torch.no_grad()
def test_mmu_gen_greedy_kv_cached(s):
    d, m = io(), model()
    ids, emb_slot = mmu_gen_prefix(m)
    lat, t = d["mmu_gen.image_latents"], torch.ones(1)
    # the embeddings come from the training-layout slot; the mask uses the scenario's block
    layout = build_layout(emb_slot, ids.shape[1])
    t_emb, tok = m.embed_time(t)
    emb = m.scatter_visual(m.showo.model.embed_tokens(ids), layout, tok, m.encode_visual(lat))
    close(f"{s}.input_embeds", emb, d["mmu_gen.input_embeds"])
    mask = omni_attention_mask(d[f"{s}.modality_positions"], ids.shape[1])
    assert torch.equal(mask, d[f"{s}.attn_allowed"])
    out = m(ids, image_latents=lat, t=t, modality_positions=emb_slot, attention_mask=mask, use_cache=True,
            compute_flow=False, logits_to_keep=1)
    cache, logits, tokens, steps = out.past_key_values, out.logits[:, -1], [], []
    for _ in range(8):
        steps.append(logits[0])
        nxt = logits.argmax(-1)
        tokens.append(int(nxt))
        out = m(nxt[:, None], past_key_values=cache, use_cache=True, compute_flow=False)
        cache, logits = out.past_key_values, out.logits[:, -1]
    assert tokens == d[f"{s}.tokens"].tolist()
    close(f"{s}.step_logits", torch.stack(steps), d[f"{s}.step_logits"])


def test_train_losses_and_gradients():
    d, fj = io(), fixture_json()
    m = model()
    m.zero_grad(set_to_none=True)
    m.train()
    try:
        out = m(d["train.text_tokens"], image_latents=d["train.xt"], t=d["train.t"],
                modality_positions=d["train.modality_positions"], text_labels=d["train.text_labels"],
                image_labels=d["train.ut"], image_masks=d["train.image_masks_loss"])
        loss = 0.2 * out.loss_ntp + 1.0 * out.loss_flow
        loss.backward()
    finally:
        m.eval()
    close("train.loss_ntp", out.loss_ntp, d["train.loss_ntp"], LOSS_TOL, LOSS_TOL)
    close("train.loss_flow", out.loss_flow, d["train.loss_flow"], LOSS_TOL, LOSS_TOL)
    close("train.loss", loss, d["train.loss"], LOSS_TOL, LOSS_TOL)
    idx = d["train.logits_index"]
    close("train.logits_supervised", out.logits[idx[:, 0], idx[:, 1]], d["train.logits_supervised"])
    params = dict(m.named_parameters())
    worst = 0.0
    for key, ref in d.items():
        if not key.startswith("train.grad."):
            continue
        g = params[key[len("train.grad."):]].grad
        err = float((g - ref).abs().max())
        worst = max(worst, err / float(ref.abs().max()))
        assert err <= 1e-4 * float(ref.abs().max()) + 1e-7, (key, err)
    MAXDIFF["train.grad (rel)"] = worst
    norms = torch.stack([params[k].grad.norm() for k in fj["train_grad_norms_order"]])
    ref = d["train.grad_norms"]
    assert bool(((norms - ref).abs() <= 1e-4 * ref + 1e-7).all()), (norms - ref).abs().max()
    MAXDIFF["train.grad_norms"] = float((norms - ref).abs().max())
    m.zero_grad(set_to_none=True)


@torch.no_grad()
def test_t2i_interp():
    d = io()
    m = model(6)
    out = run("t2i_interp", m=m)
    v = m.extract_velocity(out.v_tokens, d["t2i_interp.modality_positions"], d["t2i_interp.xt"].shape[1:])
    close("t2i_interp.v_pred", v, d["t2i_interp.v_pred"])
    close("t2i_interp.logits_first64", out.logits[..., :64], d["t2i_interp.logits_first64"])


def test_zz_report_maxdiffs(capsys):
    """Print the measured max |diff| per compared tensor (run with -s to see it)."""
    with capsys.disabled():
        for k, v in sorted(MAXDIFF.items()):
            print(f"  {k:40s} {v:.3g}")
