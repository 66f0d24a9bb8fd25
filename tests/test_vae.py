"""WanVAE wrapper: shapes, Show-o2 normalisation math, uint8 truncation, bf16 constants, resolution rules."""

from __future__ import annotations

import pytest
import torch

from models.vae import (
    WAN21_LATENT_MEAN,
    WAN21_LATENT_STD,
    WanVAE,
    check_num_frames,
    check_resolution,
    latent_shape,
    num_latent_frames,
    num_pixel_frames,
    sample_from_posterior,
    to_uint8,
)


@pytest.fixture(scope="module")
def vae() -> WanVAE:
    return WanVAE.from_config(seed=0)  # configs/vae/tiny.json, random weights


def _pixels(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_constants_match_diffusers_defaults(vae: WanVAE) -> None:
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        cfg = AutoencoderKLWan().config
    assert list(WAN21_LATENT_MEAN) == list(cfg.latents_mean)
    assert list(WAN21_LATENT_STD) == list(cfg.latents_std)


def test_video_and_image_round_trip_shapes(vae: WanVAE) -> None:
    x = _pixels(1, 3, 5, 32, 32)
    z = vae.encode(x, generator=torch.Generator().manual_seed(0))
    assert z.shape == (1, 16, 2, 4, 4) and z.dtype == torch.float32
    y = vae.decode(z)
    assert y.shape == (1, 3, 5, 32, 32) and y.dtype == torch.float32
    assert y.min() >= -1 and y.max() <= 1
    img = _pixels(2, 3, 16, 48)
    zi = vae.encode(img, sample=False)
    assert zi.shape == (2, 16, 2, 6)
    assert vae.decode(zi).shape == (2, 3, 16, 48)
    assert latent_shape(432, 432) == (16, 54, 54)
    assert latent_shape(432, 432, 17) == (16, 5, 54, 54)
    assert num_latent_frames(17) == 5 and num_pixel_frames(5) == 17


def test_normalisation_matches_hand_computation(vae: WanVAE) -> None:
    x = _pixels(2, 3, 16, 32, seed=3)
    dist = vae.vae.encode(x.unsqueeze(2)).latent_dist  # raw diffusers posterior
    mu, logvar = dist.mean.squeeze(2), dist.logvar.squeeze(2)
    mean = torch.tensor(WAN21_LATENT_MEAN).view(1, 16, 1, 1)
    r = 1.0 / torch.tensor(WAN21_LATENT_STD).view(1, 16, 1, 1)
    want_mean = (mu - mean) * r
    torch.testing.assert_close(vae.encode(x, sample=False), want_mean, rtol=0, atol=0)

    eps = torch.randn(want_mean.shape, generator=torch.Generator().manual_seed(7))
    # noise scale = raw posterior std, NOT divided by the channel std (spec §10)
    want_sample = want_mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * eps
    got = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, want_sample, rtol=0, atol=0)
    # the cache path (posterior + sample_from_posterior) gives the same numbers
    pm, plv = vae.encode_posterior(x)
    torch.testing.assert_close(sample_from_posterior(pm, plv, torch.Generator().manual_seed(7)), got, rtol=0, atol=0)
    # unseeded sampling differs from the mean
    assert not torch.equal(vae.encode(x), want_mean)


def test_decode_matches_hand_computation(vae: WanVAE) -> None:
    z = torch.randn(1, 16, 2, 2, 2, generator=torch.Generator().manual_seed(1))
    mean = torch.tensor(WAN21_LATENT_MEAN).view(1, 16, 1, 1, 1)
    r = 1.0 / torch.tensor(WAN21_LATENT_STD).view(1, 16, 1, 1, 1)
    want = vae.vae.decode(z / r + mean).sample.clamp(-1, 1)
    torch.testing.assert_close(vae.decode(z), want, rtol=0, atol=0)


def test_slicing_does_not_change_results(vae: WanVAE) -> None:
    x = _pixels(3, 3, 16, 16, seed=5)
    full = vae.encode(x, generator=torch.Generator().manual_seed(2))
    old = vae.slice_size
    try:
        vae.slice_size = 1
        sliced = vae.encode(x, generator=torch.Generator().manual_seed(2))
        dec_sliced = vae.decode(full)
    finally:
        vae.slice_size = old
    torch.testing.assert_close(sliced, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dec_sliced, vae.decode(full), rtol=1e-5, atol=1e-5)


def test_tiling_switch(vae: WanVAE) -> None:
    assert vae._want_tiling(1, 1024, 1024) and not vae._want_tiling(1, 432, 432)
    assert vae._want_tiling(81, 480, 832) and not vae._want_tiling(17, 432, 432)
    x = _pixels(1, 3, 16, 48, seed=9)
    old = (vae.tiling, vae.tile_sample_size, vae.tile_sample_stride)
    try:
        vae.tiling, vae.tile_sample_size, vae.tile_sample_stride = True, 32, 24  # 2 overlapping tiles
        z = vae.encode(x, sample=False)
        y = vae.decode(z)
        assert vae.vae.use_tiling is False  # restored after the call
    finally:
        vae.tiling, vae.tile_sample_size, vae.tile_sample_stride = old
    assert z.shape == (1, 16, 2, 6) and y.shape == (1, 3, 16, 48)


def test_to_uint8_truncates() -> None:
    x = torch.tensor([-1.0, -0.999, 0.0, 0.999, 1.0, 2.0, -3.0]).view(1, 1, 7).expand(3, 1, 7)
    u = to_uint8(x)
    assert u.shape == (1, 7, 3) and u.dtype == torch.uint8
    # 0 -> 127.5 -> 127 (floor, not round); 0.999 -> 254.87 -> 254; only exactly 1 gives 255
    assert u[0, :, 0].tolist() == [0, 0, 127, 254, 255, 255, 0]
    assert to_uint8(torch.zeros(2, 3, 4, 8, 8)).shape == (2, 4, 8, 8, 3)
    assert WanVAE.to_uint8(torch.zeros(2, 3, 8, 8)).shape == (2, 8, 8, 3)


def test_bf16_constants_are_rounded() -> None:
    v = WanVAE.from_config(seed=0, dtype=torch.bfloat16)
    mean, r = v.constants()
    assert mean.dtype == torch.bfloat16 and r.dtype == torch.bfloat16
    std_bf16 = torch.tensor(WAN21_LATENT_STD, dtype=torch.bfloat16)
    assert std_bf16[0].item() == 2.8125  # spec example: 2.8184 -> 2.8125
    assert torch.equal(r, 1.0 / std_bf16)
    assert not torch.equal(r.float(), 1.0 / torch.tensor(WAN21_LATENT_STD))
    z = v.encode(_pixels(1, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    assert z.dtype == torch.float32 and torch.isfinite(z).all()
    assert v.decode(z).dtype == torch.float32
    # fp32 weights under bf16 autocast (the official trainer setup): constants follow the autocast dtype
    a = WanVAE.from_config(seed=0, autocast_dtype=torch.bfloat16)
    assert a.dtype == torch.float32 and a.constants()[1].dtype == torch.bfloat16


@pytest.mark.parametrize("hw", [(100, 100), (72, 64), (64, 72), (0, 16)])
def test_bad_resolution_messages(vae: WanVAE, hw: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match=r"not a multiple of 16.*nearest valid"):
        check_resolution(*hw)
    if hw[0] > 0:
        with pytest.raises(ValueError, match="not a multiple of 16"):
            vae.encode(torch.zeros(1, 3, *hw))


def test_resolution_message_names_values() -> None:
    with pytest.raises(ValueError, match=r"height 100 .* 96 or 112"):
        check_resolution(100, 100)
    with pytest.raises(ValueError, match=r"height 72 .* 64 or 80"):
        check_resolution(72, 64)
    check_resolution(432, 432)
    check_resolution(1024, 512)


@pytest.mark.parametrize(("frames", "near"), [(4, "1 or 5"), (6, "5 or 9"), (16, "13 or 17")])
def test_bad_frame_counts(vae: WanVAE, frames: int, near: str) -> None:
    with pytest.raises(ValueError, match=rf"num_frames {frames} .*1 \+ 4k.*{near}"):
        check_num_frames(frames)
    with pytest.raises(ValueError, match=f"num_frames {frames}"):
        vae.encode(torch.zeros(1, 3, frames, 16, 16))
    for ok in (1, 5, 17, 33):
        check_num_frames(ok)


def test_bad_shapes(vae: WanVAE) -> None:
    with pytest.raises(ValueError, match="pixels must be"):
        vae.encode(torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="3 channels"):
        vae.encode(torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match="16 channels"):
        vae.decode(torch.zeros(1, 8, 2, 2))


def test_single_frame_fast_path_matches_diffusers_conv3d() -> None:
    """The conv2d shortcut for one-frame causal convs gives diffusers' conv3d numbers (images, videos, grads)."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    from models.vae import enable_single_frame_fast_path

    torch.set_num_threads(1)
    fast = WanVAE.from_config(seed=0)
    plain = WanVAE.from_config(seed=0, single_frame_fast_path=False)
    convs = [m for m in fast.vae.modules() if isinstance(m, WanCausalConv3d)]
    assert convs and all("forward" in vars(m) for m in convs)
    assert not any("forward" in vars(m) for m in plain.vae.modules() if isinstance(m, WanCausalConv3d))
    for x in (_pixels(2, 3, 16, 16, seed=3), _pixels(1, 3, 5, 16, 16, seed=4)):  # an image, a 5-frame clip
        z_fast, z_plain = fast.encode(x, sample=False), plain.encode(x, sample=False)
        torch.testing.assert_close(z_fast, z_plain, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast.decode(z_plain), plain.decode(z_plain), rtol=1e-5, atol=1e-5)
    # gradients of one 3x3x3 causal conv: only the last temporal slice meets data
    torch.manual_seed(0)
    conv = WanCausalConv3d(4, 6, 3, padding=1)
    xi = torch.randn(2, 4, 1, 8, 8)
    conv(xi).square().sum().backward()
    ref = (conv.weight.grad.clone(), conv.bias.grad.clone())
    conv.zero_grad()
    assert enable_single_frame_fast_path(conv) == 1
    conv(xi).square().sum().backward()
    torch.testing.assert_close(conv.weight.grad, ref[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(conv.bias.grad, ref[1], rtol=1e-4, atol=1e-5)
