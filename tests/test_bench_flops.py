"""The analytic FLOP counter (models/flops.py) against FlopCounterMode and the documented per-token figures."""

from __future__ import annotations

import pytest
import torch

from models.config import Showo2Config
from models.flops import (
    ModelDims,
    RowSpec,
    VisualSpec,
    Workload,
    count_flops_measured,
    forward_flops,
    training_flops,
    workload_from_batch,
)


@pytest.fixture(scope="module")
def tiny_setup(one_thread):
    from datasets.sequence import SequenceBuilder, collate
    from models.showo2 import Showo2Model
    from training.synthetic import synthetic_special_tokens

    torch.manual_seed(0)
    cfg = Showo2Config.preset("tiny")
    model = Showo2Model(cfg)
    sp = synthetic_special_tokens(cfg.llm_vocab_size)
    builder = SequenceBuilder(sp, max_seq_len=48)
    rows = [builder.t2i(list(range(10, 17)), (4, 4)), builder.caption(list(range(20, 29)), (4, 4))]
    batch = collate(rows, sp.pad)
    n = batch["modality_positions"].shape[0] * batch["modality_positions"].shape[1]
    lat = torch.randn(n, 16, 8, 8)
    kwargs = dict(input_ids=batch["input_ids"], image_latents=lat, t=torch.rand(n),
                  modality_positions=batch["modality_positions"], text_labels=batch["labels"],
                  image_labels=torch.randn_like(lat), image_masks=batch["image_masks"])
    return cfg, model, kwargs


@pytest.fixture(scope="module")
def one_thread():
    """Tiny ops are dominated by OpenMP barriers, which crawl on an oversubscribed shared CPU; counts don't care."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("compute_logits", [True, False])
def test_forward_matches_flop_counter(tiny_setup, compute_logits):
    cfg, model, kw = tiny_setup
    with torch.no_grad():
        measured, per_op = count_flops_measured(lambda: model(**kw, compute_logits=compute_logits))
    # the CPU SDPA kernel must be counted (FlopCounterMode has no formula for it by default)
    assert any("scaled_dot_product" in k for k in per_op), per_op
    work = workload_from_batch(kw["input_ids"], modality_positions=kw["modality_positions"],
                               image_latents=kw["image_latents"], text_labels=kw["text_labels"],
                               compute_logits=compute_logits, image_masks=kw["image_masks"])
    analytic = forward_flops(ModelDims.from_config(cfg), work).total
    assert analytic == pytest.approx(measured, rel=0.01)


@pytest.mark.parametrize("compute_logits", [True, False])
def test_training_step_within_a_few_percent(tiny_setup, compute_logits):
    """3 x forward vs the measured forward + backward. The measured count is slightly higher because the CPU
    flash-attention backward recomputes the score matrix (model FLOPs, the MFU convention, exclude that)."""
    cfg, model, kw = tiny_setup

    def step():
        out = model(**kw, compute_logits=compute_logits)   # out.logits (if formed) get no backward
        (out.loss_ntp + out.loss_flow).backward()

    measured, _ = count_flops_measured(step)
    model.zero_grad(set_to_none=True)
    work = workload_from_batch(kw["input_ids"], modality_positions=kw["modality_positions"],
                               image_latents=kw["image_latents"], text_labels=kw["text_labels"],
                               compute_logits=compute_logits, image_masks=kw["image_masks"])
    analytic = training_flops(ModelDims.from_config(cfg), work).total
    assert analytic == pytest.approx(measured, rel=0.05)


def test_official_per_token_figures():
    """reference-inference §3: Qwen2.5-1.5B body ~2.6 GFLOP/token, LM head ~0.47, flow head ~1.2, SigLIP ~0.79."""
    d = ModelDims.from_config(Showo2Config.preset("showo2-1.5b"))
    assert 2 * d.llm_layers * d.llm_layer_macs_per_token() / 1e9 == pytest.approx(2.62, abs=0.03)
    assert 2 * d.hidden * d.vocab / 1e9 == pytest.approx(0.466, abs=0.005)
    assert 2 * d.flow_layers * d.flow_layer_macs_per_token() / 1e9 == pytest.approx(1.22, abs=0.03)
    assert 2 * d.sem_layers * d.sem_layer_macs_per_token() / 1e9 == pytest.approx(0.79, abs=0.01)
    d7 = ModelDims.from_config(Showo2Config.preset("showo2-7b"))
    assert 2 * d7.llm_layers * d7.llm_layer_macs_per_token() / 1e9 == pytest.approx(13.1, abs=0.15)


def test_workload_accounting():
    d = ModelDims.from_config(Showo2Config.preset("showo2-1.5b"))
    # prefix caching: the block over a cached prefix costs less than the whole padded row
    full = forward_flops(d, Workload([RowSpec(1024)] * 2, [VisualSpec(729)] * 2)).total
    cached = forward_flops(d, Workload([RowSpec(730, 860)] * 2, [VisualSpec(729)] * 2)).total
    assert cached < 0.8 * full
    # training = 3 x forward; the LM head only where logits are formed
    w = Workload([RowSpec(100, logits=10)], [])
    assert training_flops(d, w).total == pytest.approx(3 * forward_flops(d, w).total)
    assert forward_flops(d, w).parts["lm_head"] == 2 * 10 * d.hidden * d.vocab
    # the flow head can be skipped per row
    no_flow = forward_flops(d, Workload([RowSpec(100, flow=False)], [])).parts
    assert no_flow["flow_linear"] == 0 and no_flow["flow_attention"] == 0
