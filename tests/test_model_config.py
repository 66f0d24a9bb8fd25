"""Presets and config I/O: released layouts map 1:1 onto the official state-dict keys."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.checkpoints import build_empty
from models.config import Showo2Config
from models.rope import flow_head_inv_freq

OFFICIAL = json.loads((Path(__file__).parent / "fixtures" / "parity" / "official_state_dict.json").read_text())




@pytest.mark.parametrize("preset,variant", [("showo2-1.5b", "show-o2-1.5B"), ("showo2-1.5b-hq", "show-o2-1.5B-HQ"),
                                            ("showo2-7b", "show-o2-7B")])
def test_preset_keys_and_shapes_match_official(preset, variant):
    ref = OFFICIAL["variants"][variant]
    cfg = Showo2Config.preset(preset)
    model = build_empty(cfg)
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert len(got) == 910 == len(ref["keys"])
    assert got == ref["keys"]
    assert model.num_parameters() == ref["num_params"]
    tied = model.showo.lm_head.weight is model.showo.model.embed_tokens.weight
    assert tied == bool(ref["tied"])
    # the registered official fields of the release equal the preset's
    reg = ref["config"]["model_config_registered"]
    assert Showo2Config.from_official(reg).to_official_dict() == cfg.to_official_dict()


def test_official_json_round_trip_and_errors(tmp_path):
    cfg = Showo2Config.preset("showo2-7b")
    cfg.to_json_file(tmp_path / "config.json", official=True)
    d = json.loads((tmp_path / "config.json").read_text())
    assert d["_class_name"] == "Showo2Qwen2_5"
    back = Showo2Config.from_json_file(tmp_path / "config.json")
    assert back.to_dict() == cfg.to_dict()
    # known-but-unused official keys are accepted
    Showo2Config.from_dict({**d, "_name_or_path": "x", "num_und_trans_layers": 8, "num_refiner_layers": 10})
    with pytest.raises(ValueError, match="typo_key"):
        Showo2Config.from_dict({**d, "typo_key": 1})
    with pytest.raises(ValueError, match="llm_model_path"):
        Showo2Config.from_dict({**d, "llm_model_path": "Qwen/Unknown"})


def test_project_dict_round_trip_and_unknown_key():
    cfg = Showo2Config.preset("demo", llm_vocab_size=777, rope_bf16_parity=True)
    assert Showo2Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="bogus"):
        Showo2Config.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="unknown preset"):
        Showo2Config.preset("nope")


def test_tiny_preset_equals_fixture_model():
    fj = json.loads((Path(__file__).parent / "fixtures" / "parity" / "fixture.json").read_text())["model"]
    cfg = Showo2Config.preset("tiny")
    mk = fj["model_kwargs"]
    assert {k: mk[k] for k in mk if k not in ("llm_model_path", "clip_pretrained_model_path")} == \
        {k: getattr(cfg, k) for k in mk if k not in ("llm_model_path", "clip_pretrained_model_path")}
    for k, v in fj["flow_head_config"].items():
        assert cfg.flow_head[k] == v, k
    for k, v in fj["siglip_vision_config"].items():
        assert cfg.siglip[k] == v, k


def test_flow_head_llama3_frequencies():
    inv = flow_head_inv_freq(Showo2Config.preset("showo2-1.5b").flow_head)
    base = 1.0 / (500000.0 ** (torch.arange(0, 64, 2).float() / 64))
    assert inv.shape == (32,) and inv.dtype == torch.float32
    assert torch.equal(inv[:15], base[:15])
    assert torch.allclose(inv[15:17], torch.tensor([1.2905e-3, 4.2956e-4]), rtol=1e-4)   # spec §2.10
    # the rest per the llama3 rule (note: j = 17 has wavelength ~6695 < 8192, so it is smoothed too)
    for j in range(15, 32):
        lam = 2 * torch.pi / base[j]
        if lam > 8192:
            ref = base[j] / 32
        else:
            s = (8192 / lam - 1) / 3
            ref = (1 - s) * base[j] / 32 + s * base[j]
        assert torch.allclose(inv[j], ref, rtol=1e-5), j


def test_demo_preset_is_small():
    model = build_empty(Showo2Config.preset("demo", llm_vocab_size=600))
    assert model.showo.model.embed_tokens.weight.shape[0] == 600
    assert model.num_parameters() < 5_000_000


def test_preset_merges_subconfig_overrides_key_by_key():
    base = Showo2Config.preset("demo")
    cfg = Showo2Config.preset("demo", qwen2={"rope_theta": 1e4}, flow_head={"intermediate_size": 512})
    assert cfg.qwen2["rope_theta"] == 1e4 and base.qwen2["rope_theta"] == 1e6
    assert {k: v for k, v in cfg.qwen2.items() if k != "rope_theta"} == \
        {k: v for k, v in base.qwen2.items() if k != "rope_theta"}
    assert cfg.flow_head["intermediate_size"] == 512 and cfg.flow_head["hidden_size"] == base.flow_head["hidden_size"]
    assert Showo2Config.preset("demo").qwen2["rope_theta"] == 1e6  # the preset table itself is untouched
    # a field transformers' Qwen2Config knows, but the preset does not list, may be added
    assert Showo2Config.preset("demo", qwen2={"max_window_layers": 2}).qwen2["max_window_layers"] == 2
    with pytest.raises(ValueError, match="rope_thta"):
        Showo2Config.preset("demo", qwen2={"rope_thta": 1e4})
    with pytest.raises(ValueError, match="unknown flow_head keys"):
        Showo2Config.preset("demo", flow_head={"hiden_size": 64})
    # the rotary tables follow the override
    from models import Showo2Model

    model = Showo2Model(Showo2Config.preset("demo", qwen2={"rope_theta": 1e4}))
    inv = next(m.inv_freq for n, m in model.named_modules() if n.endswith("rotary_emb"))
    head_dim = cfg.qwen2["hidden_size"] // cfg.qwen2["num_attention_heads"]
    assert torch.allclose(inv[1], torch.tensor(1e4 ** (-2 / head_dim)))


def test_timestep_scale_multiplies_t_before_the_sinusoids(tmp_path):
    from models.flow_head import TimestepEmbedder

    t = torch.tensor([0.0, 0.25, 0.9])
    raw = TimestepEmbedder(8, frequency_dim=16)
    scaled = TimestepEmbedder(8, frequency_dim=16, scale=1000.0)
    torch.testing.assert_close(scaled.sinusoid(t), raw.sinusoid(t * 1000.0))
    # official raw t: the fastest sinusoid spans one radian over [0, 1]
    assert torch.allclose(raw.sinusoid(torch.tensor([1.0]))[0, 0], torch.cos(torch.tensor(1.0)))
    cfg = Showo2Config.preset("tiny", timestep_scale=1000.0)
    assert Showo2Config.preset("tiny").timestep_scale == 1.0  # official default
    assert Showo2Config.from_dict(cfg.to_dict()).timestep_scale == 1000.0
    assert Showo2Config.from_official(cfg.to_official_dict()).timestep_scale == 1000.0
    assert "timestep_scale" not in Showo2Config.preset("tiny").to_official_dict()
    model = build_empty(cfg)
    assert model.time_embed.scale == 1000.0
