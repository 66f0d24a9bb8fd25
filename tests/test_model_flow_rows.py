"""Training skips the flow head on rows without flow loss: same loss and gradients as the full computation."""
from __future__ import annotations

from pathlib import Path

import torch
from parity_model import load_parity_model
from safetensors.torch import load_file

from models.layout import build_layout
from models.losses import flow_loss, velocity_to_tokens
from models.showo2 import Showo2Model

FIX = Path(__file__).parent / "fixtures" / "parity"


def _model() -> Showo2Model:
    return load_parity_model().train()


def _reference_flow_loss(m, io, image_masks):
    """Flow head on every row, then the masked MSE written out by hand."""
    out = m(io["train.text_tokens"], image_latents=io["train.xt"], t=io["train.t"],
            modality_positions=io["train.modality_positions"], compute_logits=False)
    lay = build_layout(io["train.modality_positions"], out.v_tokens.shape[1])
    tok = velocity_to_tokens(io["train.ut"], 2)
    labels = torch.zeros_like(out.v_tokens)
    sel = lay.visual_token & image_masks.bool()
    b, p = sel.nonzero(as_tuple=True)
    labels[b, p] = tok[lay.item[b, p], lay.local[b, p] - 1]
    return out.v_tokens, flow_loss(out.v_tokens, labels, sel)


def test_rows_without_flow_loss_skip_the_head_with_identical_loss_and_grads():
    io = load_file(str(FIX / "io.safetensors"))
    masks = io["train.image_masks_loss"]          # rows 2-3 (captioning) carry no flow loss
    assert masks[:2].any() and not masks[2:].any()
    m = _model()
    out = m(io["train.text_tokens"], image_latents=io["train.xt"], t=io["train.t"],
            modality_positions=io["train.modality_positions"], image_labels=io["train.ut"], image_masks=masks,
            compute_logits=False)
    assert torch.count_nonzero(out.v_tokens[2:]) == 0          # the head did not run there
    out.loss_flow.backward()
    grads = {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}
    m.zero_grad(set_to_none=True)
    v_full, ref = _reference_flow_loss(m, io, masks)
    ref.backward()
    assert torch.allclose(out.v_tokens[:2], v_full[:2], atol=1e-6)
    assert torch.allclose(out.loss_flow, ref, atol=1e-7, rtol=1e-6)
    assert torch.allclose(out.loss_flow, io["train.loss_flow"], atol=1e-5)
    for k, p in m.named_parameters():
        if p.grad is not None and k in grads:
            assert torch.allclose(grads[k], p.grad, atol=1e-7, rtol=1e-5), k
