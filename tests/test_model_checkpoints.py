"""Checkpoint round trips: project format, official layouts (.bin, sharded .bin, safetensors), strict key
reports, tied lm_head handling, backbone initialisation."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.checkpoints import (
    CheckpointKeyError,
    build_empty,
    from_pretrained_backbones,
    load_official_checkpoint,
    load_semantic_layers,
    load_state_dict_into,
    materialize,
    read_state_dict,
    resolve_path,
    save_official_format,
)
from models.config import Showo2Config
from models.showo2 import Showo2Model

FIX = Path(__file__).parent / "fixtures" / "parity"




@functools.cache
def weights() -> dict[str, torch.Tensor]:
    return load_file(str(FIX / "weights.safetensors"))


@functools.cache
def reference() -> Showo2Model:
    m = build_empty(Showo2Config.preset("tiny"))
    load_state_dict_into(m, weights(), assign=True)
    return materialize(m).eval()


@functools.cache
def batch():
    io = load_file(str(FIX / "io.safetensors"))
    return dict(input_ids=io["t2i.text_tokens"], image_latents=io["t2i.xt"], t=io["t2i.t"],
                modality_positions=io["t2i.modality_positions"])


@torch.no_grad()
def assert_same_outputs(m: Showo2Model) -> None:
    a, b = reference()(**batch()), m.eval()(**batch())
    assert torch.equal(a.logits, b.logits) and torch.equal(a.v_tokens, b.v_tokens)


def test_project_format_round_trip(tmp_path):
    reference().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["llm_vocab_size"] == 512 and "qwen2" in cfg
    m = Showo2Model.from_pretrained(tmp_path)
    assert m.showo.lm_head.weight is m.showo.model.embed_tokens.weight
    assert_same_outputs(m)
    assert_same_outputs(load_official_checkpoint(tmp_path))   # the generic loader reads it too


@pytest.mark.parametrize("kind", ["bin", "bin_sharded_diffusers_index", "bin_sharded_hf_index", "safetensors",
                                  "safetensors_sharded"])
def test_official_layouts_load_identically(tmp_path, kind):
    shard = "150KB" if "sharded" in kind else None
    index = "pytorch_model.bin.index.json" if kind == "bin_sharded_hf_index" else None
    save_official_format(reference(), tmp_path, max_shard_size=shard, safe_serialization="safetensors" in kind,
                         index_name=index)
    files = sorted(p.name for p in tmp_path.iterdir())
    if kind == "bin":
        assert files == ["config.json", "pytorch_model.bin"]
        sd = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
        assert len(sd) == 110 and torch.equal(sd["showo.lm_head.weight"], sd["showo.model.embed_tokens.weight"])
    if kind == "bin_sharded_diffusers_index":
        assert "diffusion_pytorch_model.bin.index.json" in files
        assert "pytorch_model-00001-of-" in " ".join(files)
    if "sharded" in kind:
        assert sum(p.name.startswith("pytorch_model-") for p in tmp_path.iterdir()) > 1
    conf = json.loads((tmp_path / "config.json").read_text())
    assert conf["_class_name"] == "Showo2Qwen2_5"
    assert set(read_state_dict(tmp_path)) == set(weights())
    assert_same_outputs(load_official_checkpoint(tmp_path))


def test_tied_lm_head_absent_ok_and_mismatch_rejected():
    sd = dict(weights())
    sd.pop("showo.lm_head.weight")
    m = build_empty(Showo2Config.preset("tiny"))
    load_state_dict_into(m, sd, assign=True)
    assert_same_outputs(materialize(m))
    sd["showo.lm_head.weight"] = sd["showo.model.embed_tokens.weight"] + 1
    with pytest.raises(CheckpointKeyError, match="showo.lm_head.weight"):
        load_state_dict_into(build_empty(Showo2Config.preset("tiny")), sd, assign=True)


@pytest.mark.parametrize("edit", ["missing", "extra", "shape"])
def test_strict_key_report_names_the_key(tmp_path, edit):
    sd = dict(weights())
    if edit == "missing":
        sd.pop("fusion_proj.1.bias")
        key = "fusion_proj.1.bias"
    elif edit == "extra":
        sd["diffusion_head_a.9.extra.weight"] = torch.zeros(2)
        key = "diffusion_head_a.9.extra.weight"
    else:
        sd["time_embed_proj.bias"] = torch.zeros(3)
        key = "time_embed_proj.bias"
    Showo2Config.preset("tiny").to_json_file(tmp_path / "config.json", official=True)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointKeyError, match=key.replace(".", r"\.")):
        load_official_checkpoint(tmp_path)
    if edit == "extra":   # non-strict loading ignores extras
        assert_same_outputs(load_official_checkpoint(tmp_path, strict=False))


def test_hub_id_offline_fails_cleanly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(Exception, match="(?i)local|offline|cache|not found|snapshot"):
        resolve_path("showlab/show-o2-does-not-exist")


def test_missing_local_folder_is_named(tmp_path):
    """A path that cannot be a Hub id gets 'no such folder', not huggingface_hub's id-format error."""
    with pytest.raises(FileNotFoundError, match="no such folder .*run/stage1/export"):
        resolve_path(tmp_path / "run" / "stage1" / "export")
    with pytest.raises(FileNotFoundError, match="not a Hub id"):
        resolve_path("run/stage1/export")


def test_from_pretrained_backbones_and_semantic_layers(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

    cfg = Showo2Config.preset("tiny")
    torch.manual_seed(0)
    qwen = Qwen2ForCausalLM(Qwen2Config(**{k: v for k, v in cfg.qwen2.items()}))
    qwen.save_pretrained(tmp_path / "qwen")
    sig = SiglipVisionModel(SiglipVisionConfig(**cfg.siglip))
    sig.save_pretrained(tmp_path / "siglip")
    m = from_pretrained_backbones(cfg, tmp_path / "qwen", tmp_path / "siglip")
    emb = qwen.model.embed_tokens.weight
    assert m.showo.model.embed_tokens.weight.shape[0] == 512
    assert torch.equal(m.showo.model.embed_tokens.weight, emb[:512])
    assert m.showo.lm_head.weight is m.showo.model.embed_tokens.weight
    assert torch.equal(m.showo.model.layers[1].mlp.up_proj.weight, qwen.model.layers[1].mlp.up_proj.weight)
    vm = getattr(sig, "vision_model", sig)
    assert torch.equal(m.position_embedding.weight, vm.embeddings.position_embedding.weight)
    assert len(m.und_trans.layers) == 2
    assert torch.equal(m.und_trans.layers[1].mlp.fc2.weight, vm.encoder.layers[1].mlp.fc2.weight)
    # a distilled semantic-layer file is loaded strictly
    distilled = {f"und_trans.{k}": torch.randn_like(v) for k, v in m.und_trans.state_dict().items()}
    save_file(distilled, str(tmp_path / "sem.safetensors"))
    load_semantic_layers(m, tmp_path / "sem.safetensors")
    assert torch.equal(m.und_trans.layers[0].self_attn.q_proj.weight,
                       distilled["und_trans.layers.0.self_attn.q_proj.weight"])
    distilled.pop("und_trans.layers.1.layer_norm2.bias")
    save_file(distilled, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointKeyError, match=r"layers\.1\.layer_norm2\.bias"):
        load_semantic_layers(m, tmp_path / "bad.safetensors")


def test_from_pretrained_backbones_untied_head_is_shrunk(tmp_path):
    """7B-style untied Qwen: lm_head keeps its own first llm_vocab_size rows."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

    q = {**Showo2Config.preset("tiny").qwen2, "tie_word_embeddings": False}
    cfg = Showo2Config.preset("tiny", qwen2=q)
    torch.manual_seed(1)
    qwen = Qwen2ForCausalLM(Qwen2Config(**q))
    qwen.save_pretrained(tmp_path / "qwen")
    SiglipVisionModel(SiglipVisionConfig(**cfg.siglip)).save_pretrained(tmp_path / "siglip")
    m = from_pretrained_backbones(cfg, tmp_path / "qwen", tmp_path / "siglip")
    assert m.showo.lm_head.weight is not m.showo.model.embed_tokens.weight
    assert torch.equal(m.showo.lm_head.weight, qwen.lm_head.weight[:512])
    assert torch.equal(m.showo.model.embed_tokens.weight, qwen.model.embed_tokens.weight[:512])
