"""Train a tiny Wan2.1-architecture VAE (diffusers ``AutoencoderKLWan``) on the shapes world.

``models/vae.py`` (``WanVAE``) wraps a *pretrained* Wan VAE and freezes it, as Show-o2 does; there are
no real weights on these machines, so the demo first trains a small one. The network is exactly
diffusers' ``AutoencoderKLWan`` (causal 3D convs, images as one-frame videos) with small widths;
only the training objective lives here.

Objective (why it looks like this): Show-o2 never sees raw VAE latents, it sees Wan-normalised ones,
``z = (mu - mean_wan) / std_wan + exp(0.5 logvar) * eps`` (``WanVAE.encode``; the noise is *not*
divided by std -- official quirk). So the VAE is trained in that same space: the decoder gets
``z * std_wan + mean_wan`` and the KL prior N(0, I) is put on ``z``. Then the normalised latents the
flow model learns are roughly unit-scale and the posterior noise is small -- the properties the
official recipe takes for granted from the real Wan VAE. The result is saved as a diffusers folder
that ``WanVAE.load(folder)`` reads, and every later step uses it only through ``WanVAE``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["load_images", "train_vae", "train_until", "recon_grid", "fold_latent_standardisation"]


def load_images(paths: Sequence[str | Path], resolution: int) -> torch.Tensor:
    """(N, 3, R, R) uint8 tensor (kept as uint8: 4x less memory than float)."""
    arr = np.stack([np.asarray(Image.open(p).convert("RGB").resize((resolution, resolution), Image.BICUBIC))
                    for p in paths])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def _to_pm1(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1.0


def _random_crop_flip(x: torch.Tensor, crop: int, g: torch.Generator) -> torch.Tensor:
    """Random ``crop`` x ``crop`` windows (+ horizontal flips). The VAE is fully convolutional, so
    training on crops teaches the same weights at a fraction of the cost."""
    n, _, h, w = x.shape
    if crop < h:
        ys = torch.randint(0, (h - crop) // 8 + 1, (n,), generator=g) * 8  # multiples of 8: keep the latent grid
        xs = torch.randint(0, (w - crop) // 8 + 1, (n,), generator=g) * 8
        x = torch.stack([x[i, :, ys[i]:ys[i] + crop, xs[i]:xs[i] + crop] for i in range(n)])
    flip = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    return x


def train_vae(
    images: torch.Tensor,
    out_dir: str | Path,
    *,
    config: dict[str, Any],
    steps: int = 300,
    batch_size: int = 16,
    lr: float = 2e-3,
    warmup: int = 20,
    kl_weight: float = 1e-3,
    crop: int | None = 32,
    init_logvar: float = -6.0,
    fg_weight: float = 4.0,
    seed: int = 0,
    log_every: int = 10,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``AutoencoderKLWan(**config)`` on ``images`` (uint8 (N,3,R,R)); save to ``out_dir``.

    Writes ``out_dir/`` (diffusers ``config.json`` + weights, loadable by ``WanVAE.load``) and
    ``out_dir/metrics.jsonl`` (loss curve for the report). Returns a summary dict.
    """
    from diffusers import AutoencoderKLWan
    from tqdm import tqdm

    from models.vae import WAN21_LATENT_MEAN, WAN21_LATENT_STD, enable_single_frame_fast_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    vae = AutoencoderKLWan(**cfg).train()
    enable_single_frame_fast_path(vae)  # images are one-frame clips: conv2d instead of padded conv3d
    with torch.no_grad():  # start with a nearly deterministic posterior (sigma ~ 0.05) so the decoder
        # can use the latent from step 0; with sigma = 1 at init a small VAE collapses (latent ignored)
        zc = vae.quant_conv.out_channels // 2
        vae.quant_conv.bias[zc:].fill_(init_logvar)
    mean = torch.tensor(WAN21_LATENT_MEAN).view(1, -1, 1, 1, 1)
    std = torch.tensor(WAN21_LATENT_STD).view(1, -1, 1, 1, 1)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)

    def lr_at(step: int) -> float:  # linear warm-up, then cosine to 10%
        if step < warmup:
            return lr * (step + 1) / warmup
        p = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))

    g = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    metrics = open(out / "metrics.jsonl", "w")
    bar = tqdm(range(steps), desc="train VAE", unit="step", disable=not progress, mininterval=2.0)
    t0 = time.time()
    ema = None
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        idx = torch.randint(0, n, (batch_size,), generator=g)
        x = _to_pm1(_random_crop_flip(images[idx], crop or images.shape[-1], g)).unsqueeze(2)  # (B,3,1,H,W)
        post = vae.encode(x).latent_dist
        z_mean = (post.mean - mean) / std  # Wan-normalised space (what Show-o2 sees)
        logvar = post.logvar.clamp(-30.0, 20.0)
        z = z_mean + torch.exp(0.5 * logvar) * torch.randn(z_mean.shape, generator=g)
        rec = vae.decode(z * std + mean).sample
        # Objects cover ~10-20 % of a shapes image; unweighted, "predict white everywhere" is a deep
        # local minimum a small VAE sits in for hundreds of steps. Up-weighting non-background pixels
        # makes the objects' colours and edges the main signal from the first step.
        fg = ((x < 0.98).any(dim=1, keepdim=True)).float()
        wgt = 1.0 + fg_weight * fg
        err = rec - x
        rec_loss = (wgt * (err.pow(2) + 0.5 * err.abs())).mean() / wgt.mean()
        kl = 0.5 * (z_mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        loss = rec_loss + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        ema = rec_loss.item() if ema is None else 0.9 * ema + 0.1 * rec_loss.item()
        if step % log_every == 0 or step == steps - 1:
            rec_row = {"step": step + 1, "loss_rec": rec_loss.item(), "loss_kl": kl.item(), "lr": lr_at(step),
                       "latent_std": z_mean.std().item(), "posterior_std": torch.exp(0.5 * logvar).mean().item()}
            metrics.write(json.dumps(rec_row) + "\n")
            metrics.flush()
            bar.set_postfix(rec=f"{ema:.4f}", kl=f"{kl.item():.2f}", zstd=f"{rec_row['latent_std']:.2f}")
    metrics.close()
    vae.eval()
    stats = fold_latent_standardisation(vae, images[: min(n, 512)])
    vae.save_pretrained(str(out))
    summary = {"steps": steps, "seconds": time.time() - t0, "final_rec_loss": ema,
               "params": sum(p.numel() for p in vae.parameters()), "config": cfg, "standardisation": stats}
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


@torch.no_grad()
def fold_latent_standardisation(vae: Any, images: torch.Tensor, batch_size: int = 64) -> dict[str, Any]:
    """Make the Wan-normalised latents of ``vae`` zero-mean / unit-std per channel, exactly.

    ``WanVAE`` normalises with the fixed Wan2.1 constants ``(mu - m) / s``. A freshly trained small
    VAE has its own per-channel statistics (mean c, std d), so its normalised latents are off-centre
    and badly scaled for flow matching. The affine map ``mu' = a mu + b`` with ``a = s / d`` and
    ``b = m - a c`` is folded into ``quant_conv`` (and its inverse into ``post_quant_conv``), so the
    decoder output is unchanged while ``(mu' - m) / s = (mu - c) / d``. The posterior log-variance is
    shifted by ``2 log a`` so the sampling noise keeps its size relative to the signal.
    """
    from models.vae import WAN21_LATENT_MEAN, WAN21_LATENT_STD

    mus = []
    for i in range(0, images.shape[0], batch_size):
        x = _to_pm1(images[i:i + batch_size]).unsqueeze(2)
        mus.append(vae.encode(x).latent_dist.mean)
    mu = torch.cat(mus)  # (N, C, 1, h, w), raw
    c = mu.mean(dim=(0, 2, 3, 4))
    d = mu.std(dim=(0, 2, 3, 4)).clamp_min(1e-6)
    m = torch.tensor(WAN21_LATENT_MEAN)
    s = torch.tensor(WAN21_LATENT_STD)
    a = s / d
    b = m - a * c
    zc = mu.shape[1]
    q, p = vae.quant_conv, vae.post_quant_conv
    q.weight[:zc] *= a.view(-1, 1, 1, 1, 1)
    q.bias[:zc] = q.bias[:zc] * a + b
    q.bias[zc:] += 2.0 * torch.log(a)
    # post_quant_conv(z) = P z + e must equal P ((z' - b) / a) + e
    w = p.weight.clone()  # (C_out, C_in, 1, 1, 1)
    p.weight.copy_(w / a.view(1, -1, 1, 1, 1))
    p.bias.sub_(w[:, :, 0, 0, 0] @ (b / a))
    return {"channel_mean_before": c.tolist(), "channel_std_before": d.tolist()}


def train_until(train: Callable[[int, int], dict[str, Any]], quality: Callable[[], float], *, seed: int, steps: int,
                min_quality: float, retries: int, retry_steps: int | None = None) -> dict[str, Any]:
    """``train(seed, steps)``, then ``quality()`` of what it saved; below ``min_quality``, train again from
    scratch with seed ``seed + 1000 k`` and ``retry_steps`` steps (k = 1..``retries``). Returns the last
    summary with ``attempts``: [{seed, steps, quality}]. A first attempt that passes is exactly
    ``train(seed, steps)``.

    Why from scratch and longer: a VAE that stopped with one colour half learnt (green decoded as teal)
    stayed there for 150 more steps at its final rate, and another seed at the same length failed too.
    """
    attempts = []
    for k in range(retries + 1):
        s, n = seed + 1000 * k, steps if k == 0 else (retry_steps or steps)
        summary = train(s, n)
        attempts.append({"seed": s, "steps": n, "quality": float(quality())})
        if attempts[-1]["quality"] >= min_quality:
            break
    return {**summary, "attempts": attempts}


@torch.no_grad()
def recon_grid(vae_wrapper: Any, images: torch.Tensor, path: str | Path, n: int = 8) -> dict[str, float]:
    """Save a 2-row PNG (inputs over reconstructions through ``WanVAE.encode/decode``) and return
    pixel stats of the round trip (mean abs error in 0..255, latent mean/std)."""
    x = _to_pm1(images[:n])
    z = vae_wrapper.encode(x, sample=False)
    rec = vae_wrapper.decode(z)
    top = vae_wrapper.to_uint8(x)
    bot = vae_wrapper.to_uint8(rec)
    grid = torch.cat([torch.cat(list(top), dim=1), torch.cat(list(bot), dim=1)], dim=0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.numpy()).save(path)
    err = (top.float() - bot.float()).abs().mean().item()
    return {"mean_abs_err_255": err, "latent_mean": z.mean().item(), "latent_std": z.std().item()}
