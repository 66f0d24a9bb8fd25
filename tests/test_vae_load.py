"""WanVAE.load: original Wan2.1 `.pth` layout, diffusers folders, hub ids (offline), config inference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.vae import WanVAE, infer_config_from_original, wan_vae_diffusers_to_original, write_full_size_config


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random VAE saved three ways: original `.pth`, diffusers folder, pipeline folder (vae/)."""
    root = tmp_path_factory.mktemp("vae")
    ref = WanVAE.from_config(seed=123)
    torch.save(wan_vae_diffusers_to_original(ref.vae.state_dict()), root / "Wan2.1_VAE.pth")
    ref.vae.save_pretrained(root / "diffusers")
    ref.vae.save_pretrained(root / "pipeline" / "vae")
    (root / "pipeline" / "model_index.json").write_text("{}")
    (root / "only_pth").mkdir()
    torch.save(wan_vae_diffusers_to_original(ref.vae.state_dict()), root / "only_pth" / "vae.pth")
    return {"root": root, "pth": root / "Wan2.1_VAE.pth", "diffusers": root / "diffusers"}


def test_original_pth_matches_diffusers_copy(saved: dict[str, Path]) -> None:
    a = WanVAE.load(saved["pth"])  # the same code path as the real Wan2.1_VAE.pth
    b = WanVAE.load(saved["diffusers"])
    sa, sb = a.vae.state_dict(), b.vae.state_dict()
    assert sa.keys() == sb.keys() and len(sa) == 194
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.fingerprint() == b.fingerprint()
    x = torch.rand(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    za = a.encode(x, generator=torch.Generator().manual_seed(1))
    zb = b.encode(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(za, zb)
    assert torch.equal(a.decode(za), b.decode(zb))


def test_other_local_layouts(saved: dict[str, Path]) -> None:
    ref = WanVAE.load(saved["diffusers"]).fingerprint()
    assert WanVAE.load(saved["root"] / "pipeline").fingerprint() == ref  # pipeline root -> vae/
    assert WanVAE.load(saved["root"] / "only_pth").fingerprint() == ref  # folder with one weight file
    v = WanVAE.load(saved["pth"], dtype=torch.bfloat16)
    assert v.dtype == torch.bfloat16 and v.constants()[0].dtype == torch.bfloat16


def test_explicit_config_dir(saved: dict[str, Path]) -> None:
    v = WanVAE.load(saved["pth"], config=saved["diffusers"])  # a local diffusers config folder
    assert v.fingerprint() == WanVAE.load(saved["diffusers"]).fingerprint()


def test_full_size_config_inferred_from_original_layout(tmp_path: Path) -> None:
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):  # shapes only: no 500 MB allocation
        full = AutoencoderKLWan()
    cfg = infer_config_from_original(wan_vae_diffusers_to_original(full.state_dict()))
    assert cfg == {
        "base_dim": 96,
        "z_dim": 16,
        "dim_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "attn_scales": [],
        "temperal_downsample": [False, True, True],
    }
    d = write_full_size_config(tmp_path / "cfg", **cfg)
    assert AutoencoderKLWan.load_config(str(d))["base_dim"] == 96


def test_not_original_layout_is_rejected(tmp_path: Path, saved: dict[str, Path]) -> None:
    from safetensors.torch import save_file

    ref = WanVAE.load(saved["diffusers"])
    save_file(ref.vae.state_dict(), str(tmp_path / "diffusers_layout.safetensors"))
    with pytest.raises(ValueError, match="not an original-layout"):
        WanVAE.load(tmp_path / "diffusers_layout.safetensors")
    with pytest.raises(FileNotFoundError):
        WanVAE.load(tmp_path / "missing.pth")


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks`")
def test_hub_id_offline_fails_clearly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    with pytest.raises(OSError, match="could not load a Wan VAE from hub id"):
        WanVAE.load("some-org/some-wan-vae-that-is-not-cached")


@pytest.mark.slow
def test_full_size_original_pth_round_trip(tmp_path: Path) -> None:
    """Full Wan2.1 architecture (127 M random weights, ~500 MB file) through the real-file loading path."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    full = AutoencoderKLWan()
    sd = full.state_dict()
    torch.save(wan_vae_diffusers_to_original(sd), tmp_path / "Wan2.1_VAE.pth")
    del full
    v = WanVAE.load(tmp_path / "Wan2.1_VAE.pth")
    assert v.config["base_dim"] == 96 and sum(p.numel() for p in v.parameters()) > 120e6
    got = v.vae.state_dict()
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)
    z = v.encode(torch.zeros(1, 3, 16, 16), sample=False)
    assert z.shape == (1, 16, 2, 2)
