"""bf16: RoPE tables stay fp32 (or bf16-rounded in parity mode, spec Q1); forward stays close to fp32."""
from __future__ import annotations

import functools
from pathlib import Path

import torch
from parity_model import load_parity_model
from safetensors.torch import load_file

from models.rope import bf16_round

FIX = Path(__file__).parent / "fixtures" / "parity"




def load(**over):
    return load_parity_model(**over)


@functools.cache
def batch():
    io = load_file(str(FIX / "io.safetensors"))
    return dict(input_ids=io["t2i.text_tokens"], image_latents=io["t2i.xt"], t=io["t2i.t"],
                modality_positions=io["t2i.modality_positions"])


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())


def test_rope_tables_fp32_after_cast_and_parity_mode():
    m = load()
    ref_llm = m.showo.model.rotary_emb.inv_freq.clone()
    ref_flow = m.flow_rotary.inv_freq.clone()
    m.to(torch.bfloat16)
    assert m.showo.model.embed_tokens.weight.dtype == torch.bfloat16
    assert m.showo.model.rotary_emb.inv_freq.dtype == torch.float32
    assert torch.equal(m.showo.model.rotary_emb.inv_freq, ref_llm)
    assert torch.equal(m.flow_rotary.inv_freq, ref_flow)
    p = load(rope_bf16_parity=True)
    assert torch.equal(p.flow_rotary.inv_freq, ref_flow)          # fp32 model: exact frequencies
    p.to(torch.bfloat16)
    assert torch.equal(p.showo.model.rotary_emb.inv_freq, bf16_round(ref_llm))
    assert torch.equal(p.flow_rotary.inv_freq, bf16_round(ref_flow))
    assert not torch.equal(bf16_round(ref_flow), ref_flow)
    p.float()
    assert torch.equal(p.flow_rotary.inv_freq, ref_flow)          # back to exact in fp32


@torch.no_grad()
def test_bf16_forward_close_to_fp32():
    m = load()
    ref = m(**batch())
    mb = load().to(torch.bfloat16)
    out = mb(**batch())
    assert out.logits.dtype == torch.bfloat16 and out.v_tokens.dtype == torch.bfloat16
    assert torch.isfinite(out.logits.float()).all() and torch.isfinite(out.v_tokens.float()).all()
    assert rel_rms(out.logits, ref.logits) < 0.06
    assert rel_rms(out.v_tokens, ref.v_tokens) < 0.06
    pb = load(rope_bf16_parity=True).to(torch.bfloat16)
    assert rel_rms(pb(**batch()).v_tokens, ref.v_tokens) < 0.06


def test_bf16_training_step_backward():
    m = load().to(torch.bfloat16).train()
    io = load_file(str(FIX / "io.safetensors"))
    out = m(io["train.text_tokens"], image_latents=io["train.xt"], t=io["train.t"],
            modality_positions=io["train.modality_positions"], text_labels=io["train.text_labels"],
            image_labels=io["train.ut"], image_masks=io["train.image_masks_loss"], compute_logits=False)
    loss = 0.2 * out.loss_ntp + out.loss_flow
    assert out.logits is None and torch.isfinite(loss)
    loss.backward()
    g = m.diffusion_head_a[0].self_attn.q_proj.weight.grad
    assert g is not None and g.dtype == torch.bfloat16 and torch.isfinite(g.float()).all()
    assert m.position_embedding.weight.grad is not None


def test_gradient_checkpointing_same_gradients():
    io = load_file(str(FIX / "io.safetensors"))
    grads = []
    for gc in (False, True):
        m = load(gradient_checkpointing=gc).train()
        out = m(io["train.text_tokens"], image_latents=io["train.xt"], t=io["train.t"],
                modality_positions=io["train.modality_positions"], text_labels=io["train.text_labels"],
                image_labels=io["train.ut"], image_masks=io["train.image_masks_loss"], compute_logits=False)
        (0.2 * out.loss_ntp + out.loss_flow).backward()
        grads.append({k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], atol=1e-6, rtol=1e-5), k
