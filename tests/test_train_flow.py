"""Training-side flow matching (training/loop.py::flow_inputs) and the non-finite guard."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from datasets.sequence import SequenceBuilder, VisualInfo, collate
from flow.schedule import resolution_shift
from training.logging import NonFiniteGuard, NonFiniteLossError
from training.loop import flow_inputs
from training.synthetic import SyntheticSource, synthetic_special_tokens

CFG = OmegaConf.create({"flow": {"resolution_shift": True, "vae_sample": True,
                                 "interleaved_clean_prefix_prob": 1.0}})


class FakeVAE:
    """Deterministic 'encoder': average-pool by 8 and repeat to 16 channels (latent layout only)."""

    def encode(self, pixels, sample=True, generator=None):
        x = pixels.float()
        if x.ndim == 4:
            x = torch.nn.functional.avg_pool2d(x, 8)
            return x.repeat(1, 6, 1, 1)[:, :16]
        frames = torch.cat([x[:, :, :1], x[:, :, 1::4]], dim=2)  # causal temporal stride 4
        x = torch.nn.functional.avg_pool3d(frames, (1, 8, 8))
        return x.repeat(1, 6, 1, 1, 1)[:, :16]


def _batch(tasks, res=32, frames=5, seq=96):
    src = SyntheticSource({"resolution": res, "num_frames": frames, "max_seq_len": seq, "cond_dropout_prob": 0.0,
                           "tasks": tasks}, vocab_size=512, seed=0)
    return next(src)


def test_generation_noised_understanding_clean():
    b = _batch([{"task": "t2i", "batch_size": 3}, {"task": "caption", "batch_size": 2}])
    gen = torch.Generator().manual_seed(0)
    out = flow_inputs(b, FakeVAE(), gen, CFG, torch.device("cpu"))
    x1 = FakeVAE().encode(b["pixels"])
    t = out["t"]
    assert t.shape == (5,) and bool((t[:3] < 1).all()) and bool((t[3:] == 1).all())
    assert torch.equal(out["image_latents"][3:], x1[3:])                       # clean: x_t = x1 exactly
    assert out["image_masks"][3:].sum() == 0 and out["image_masks"][:3].sum() > 0  # no flow loss on them
    x0 = x1 - out["image_labels"]                                               # u = x1 - x0
    xt = t[:3].view(-1, 1, 1, 1) * x1[:3] + (1 - t[:3].view(-1, 1, 1, 1)) * x0[:3]
    torch.testing.assert_close(out["image_latents"][:3], xt)


def test_resolution_shift_biases_towards_noise():
    b = _batch([{"task": "t2i", "batch_size": 64}], res=64)
    out = flow_inputs(b, FakeVAE(), torch.Generator().manual_seed(0), CFG, torch.device("cpu"))
    # 64 px -> 4x4 tokens + 1: k = exp(mu(17)); median of shifted logit-normal = 1 - k*0.5/(1+(k-1)*0.5)
    k = resolution_shift(17)
    assert out["t"].median().item() == pytest.approx(1 - k * 0.5 / (1 + (k - 1) * 0.5), abs=0.08)


def test_interleaved_clean_prefix_and_last_image_generated():
    sp = synthetic_special_tokens(512)
    builder = SequenceBuilder(sp, max_seq_len=80)
    rows = [builder.interleaved([[5], [6], [7]], [VisualInfo.image((2, 2))] * 3, flag=[2]),
            builder.interleaved([[5]], [VisualInfo.image((2, 2))], flag=[2])]
    b = collate(rows, sp.pad, pad_to=80)
    b["pixels"] = torch.rand(6, 3, 32, 32) * 2 - 1
    b["t_min"] = torch.tensor([0.0, 0, 0, 0, 1, 1])
    for seed in range(6):
        out = flow_inputs(b, FakeVAE(), torch.Generator().manual_seed(seed), CFG, torch.device("cpu"))
        t = out["t"]
        assert t[2] < 1 and t[3] < 1                       # the last real image of each story is generated
        k = int((t[:3] == 1).sum())
        assert 1 <= k <= 2 and bool((t[:k] == 1).all())    # p = 1: a non-empty clean prefix
        for j in range(k):                                  # clean prefix images carry no flow loss
            off, ln = b["modality_positions"][0, j].tolist()
            assert out["image_masks"][0, off:off + ln].sum() == 0


def test_i2v_first_latent_frame_clean():
    b = _batch([{"task": "i2v", "batch_size": 2}], res=32, frames=5, seq=48)
    out = flow_inputs(b, FakeVAE(), torch.Generator().manual_seed(0), CFG, torch.device("cpu"))
    x1 = FakeVAE().encode(b["pixels"])
    assert torch.equal(out["image_latents"][:, :, 0], x1[:, :, 0])
    assert not torch.equal(out["image_latents"][:, :, 1], x1[:, :, 1])
    off, ln = b["modality_positions"][0, 0].tolist()
    n = 4  # tokens per latent frame at 32 px
    assert out["image_masks"][0, off + 1: off + 1 + n].sum() == 0 and out["image_masks"][0, off + 1 + n: off + ln].sum() == n


def test_nonfinite_guard():
    g = NonFiniteGuard(3)
    assert g.update(True) and not g.update(False) and not g.update(False) and g.update(True)
    assert g.total == 2 and g.in_a_row == 0
    g.update(False), g.update(False)
    with pytest.raises(NonFiniteLossError):
        g.update(False)


def test_max_steps_one_pass_over_a_source():
    from types import SimpleNamespace

    from training.loop import resolve_max_steps

    data = SimpleNamespace(sources=[SimpleNamespace(name="t2i", batch_size=4), SimpleNamespace(name="und", batch_size=4)],
                           samplers=[SimpleNamespace(per_rank=10**6), SimpleNamespace(per_rank=558_000 // 48)])
    assert resolve_max_steps("epoch:und", data) == 558_000 // 48 // 4  # floor(N / (4 x 48)), no extra step
    assert resolve_max_steps(150000, data) == 150000
    with pytest.raises(ValueError, match="no data source"):
        resolve_max_steps("epoch:mmu", data)
