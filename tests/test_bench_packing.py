"""Sequence-packing prototype (benchmarks/packing.py): packing is exact and the bins are valid."""

from __future__ import annotations

import pytest
import torch

from benchmarks.packing import pack_first_fit, packed_batch, packed_equals_padded, padded_batch, sample_rows
from benchmarks.presets import model_config, workload_for


def test_first_fit_bins_respect_row_length():
    lengths = [760, 862, 300, 500, 120, 744]
    bins = pack_first_fit(lengths, 1024)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 1024 for b in bins)
    with pytest.raises(ValueError):
        pack_first_fit([2000], 1024)


@pytest.fixture(scope="module")
def tiny():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    from models.showo2 import Showo2Model

    cfg, wl = model_config("tiny"), workload_for("tiny")
    torch.manual_seed(0)
    yield cfg, wl, Showo2Model(cfg).eval()
    torch.set_num_threads(old)


def test_packed_losses_equal_padded_losses(tiny):
    """Restarted positions + block-diagonal omni mask: a packed row computes exactly the per-sample losses."""
    cfg, wl, model = tiny
    (ntp_a, flow_a), (ntp_b, flow_b) = packed_equals_padded(model, cfg, wl, 2 * wl.max_seq_len)
    assert ntp_b == pytest.approx(ntp_a, rel=1e-4, abs=1e-5)
    assert flow_b == pytest.approx(flow_a, rel=1e-4, abs=1e-5)


def test_layout_token_accounting(tiny):
    cfg, wl, _ = tiny
    samples = sample_rows(cfg, wl)
    real = sum(len(s) for s in samples)
    padded = padded_batch(samples, cfg, wl, wl.max_seq_len)
    packed = packed_batch(samples, cfg, wl, 2 * wl.max_seq_len)
    assert padded.real_tokens == packed.real_tokens == real
    assert packed.rows < padded.rows
    mask = packed.inputs["attention_mask"]
    seg_rows = packed.inputs["position_ids"]
    # a position never attends to another sample of its row: where positions restart, earlier keys are masked
    r = 0
    starts = (seg_rows[r] == 0).nonzero().flatten().tolist()
    if len(starts) > 1:
        s1 = starts[1]
        assert not mask[r, 0, s1, :s1].any()
