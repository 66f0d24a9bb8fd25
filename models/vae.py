"""Wan2.1 3D causal VAE, wrapped the way Show-o2 uses it.

The network itself is diffusers' :class:`~diffusers.AutoencoderKLWan` (never re-implemented here). This module adds
what Show-o2 puts around it (reference-architecture §10, reference-inference §1.7, reference-training §3.1):

* the 16 per-channel Wan2.1 latent mean/std constants and the normalisation
  ``z = (mu - mean) * (1/std) [+ exp(0.5*clamp(logvar, -30, 20)) * eps]`` (noise **not** divided by std),
  with the constants stored in the VAE's compute dtype (bf16-rounded in bf16, quirk Q28);
* images ``(B, 3, H, W)`` as one-frame videos, videos ``(B, 3, F, H, W)``, both in [-1, 1];
* ``decode``: ``z / r + mean`` -> decoder -> fp32, clamped to [-1, 1];
* ``to_uint8``: the official truncating ``denorm`` (``floor(255 * clamp((x+1)/2, 0, 1))``, channels last);
* resolution rules (spatial multiple of 16 = 8x VAE stride x 2x patch, frames ``1 + 4k``) with clear errors;
* loading from the original ``Wan2.1_VAE.pth``, a diffusers folder or a hub id, fully offline when local;
* memory controls: batch slicing and automatic spatial tiling for large inputs.

Shapes: pixels ``(B, 3, H, W)`` / ``(B, 3, F, H, W)`` -> latents ``(B, 16, H/8, W/8)`` /
``(B, 16, 1 + (F-1)/4, H/8, W/8)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "WAN21_LATENT_MEAN",
    "WAN21_LATENT_STD",
    "LATENT_CHANNELS",
    "SPATIAL_STRIDE",
    "TEMPORAL_STRIDE",
    "PATCH_SIZE",
    "SPATIAL_MULTIPLE",
    "WanVAE",
    "enable_single_frame_fast_path",
    "check_resolution",
    "check_num_frames",
    "num_latent_frames",
    "num_pixel_frames",
    "latent_shape",
    "sample_from_posterior",
    "to_uint8",
    "wan_vae_diffusers_to_original",
    "infer_config_from_original",
    "write_full_size_config",
    "TINY_CONFIG_PATH",
    "DEMO_CONFIG_PATH",
]

# Per-channel statistics of Wan2.1 latents (spec §10; identical to diffusers' AutoencoderKLWan defaults).
WAN21_LATENT_MEAN: tuple[float, ...] = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENT_STD: tuple[float, ...] = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip

LATENT_CHANNELS = 16
SPATIAL_STRIDE = 8  # VAE spatial downsampling
TEMPORAL_STRIDE = 4  # VAE temporal downsampling after the causal first frame
PATCH_SIZE = 2  # Show-o2 patchifies latents 2x2
SPATIAL_MULTIPLE = SPATIAL_STRIDE * PATCH_SIZE  # pixel sizes must be multiples of 16

_REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIG_PATH = _REPO_ROOT / "configs" / "vae" / "tiny.json"
DEMO_CONFIG_PATH = _REPO_ROOT / "configs" / "vae" / "demo.json"

_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


# ----------------------------------------------------------------------------------------------------------------
# Resolution rules
# ----------------------------------------------------------------------------------------------------------------
def _nearest_multiples(value: int, multiple: int) -> str:
    lo = (value // multiple) * multiple
    hi = lo + multiple
    return f"{lo} or {hi}" if lo > 0 else f"{hi}"


def check_resolution(height: int, width: int, multiple: int = SPATIAL_MULTIPLE) -> None:
    """Raise ``ValueError`` unless ``height`` and ``width`` (pixels) are positive multiples of ``multiple``.

    The default 16 = 8 (VAE stride) x 2 (Show-o2 patch); pass ``multiple=8`` for plain VAE use.
    """
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % multiple != 0:
            raise ValueError(
                f"image {name} {value} is not a multiple of {multiple} (Wan2.1 VAE stride {SPATIAL_STRIDE}"
                f"{' x Show-o2 patch ' + str(multiple // SPATIAL_STRIDE) if multiple > SPATIAL_STRIDE else ''});"
                f" nearest valid {name}: {_nearest_multiples(value, multiple)} (got {height}x{width}, HxW)"
            )


def check_num_frames(num_frames: int) -> None:
    """Raise ``ValueError`` unless ``num_frames`` has the form ``1 + 4k`` (k >= 0): the causal first frame is
    encoded alone, then groups of 4 frames become one latent frame."""
    if num_frames < 1 or (num_frames - 1) % TEMPORAL_STRIDE != 0:
        lo = 1 + max(0, (num_frames - 1) // TEMPORAL_STRIDE) * TEMPORAL_STRIDE
        near = f"{lo} or {lo + TEMPORAL_STRIDE}"
        raise ValueError(
            f"num_frames {num_frames} is not of the form 1 + 4k (Wan2.1 VAE: causal first frame, then groups of "
            f"{TEMPORAL_STRIDE}); nearest valid: {near}"
        )


def num_latent_frames(num_frames: int) -> int:
    """Latent frames for ``num_frames`` pixel frames: ``1 + (F - 1) // 4``."""
    check_num_frames(num_frames)
    return 1 + (num_frames - 1) // TEMPORAL_STRIDE


def num_pixel_frames(latent_frames: int) -> int:
    """Pixel frames the decoder produces for ``latent_frames`` latent frames: ``1 + 4 (T - 1)``."""
    if latent_frames < 1:
        raise ValueError(f"latent_frames must be >= 1, got {latent_frames}")
    return 1 + TEMPORAL_STRIDE * (latent_frames - 1)


def latent_shape(height: int, width: int, num_frames: int | None = None) -> tuple[int, ...]:
    """Latent shape without the batch: ``(16, h, w)`` for an image, ``(16, T, h, w)`` for a video."""
    check_resolution(height, width, SPATIAL_STRIDE)
    h, w = height // SPATIAL_STRIDE, width // SPATIAL_STRIDE
    if num_frames is None:
        return (LATENT_CHANNELS, h, w)
    return (LATENT_CHANNELS, num_latent_frames(num_frames), h, w)


# ----------------------------------------------------------------------------------------------------------------
# Pure helpers shared with the latent cache
# ----------------------------------------------------------------------------------------------------------------
def sample_from_posterior(
    mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw ``z = mean + exp(0.5 * clamp(logvar, -30, 20)) * eps`` in fp32 (Show-o2's posterior sample).

    ``mean`` is the *normalised* posterior mean, ``logvar`` the raw posterior log-variance (the noise scale is the
    raw posterior std, not divided by the channel std: spec §10). ``eps ~ N(0, I)`` is drawn in fp32 on the
    generator's device (so a CPU generator gives the same numbers for CPU and CUDA tensors) and moved over.
    """
    gen_device = generator.device if generator is not None else mean.device
    eps = torch.randn(mean.shape, generator=generator, device=gen_device, dtype=torch.float32).to(mean.device)
    std = torch.exp(0.5 * torch.clamp(logvar.float(), -30.0, 20.0))
    return mean.float() + std * eps


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """Official ``denorm``: ``floor(255 * clamp((x + 1) / 2, 0, 1))`` in fp32, channels moved last.

    (3, H, W) -> (H, W, 3); (B, 3, H, W) -> (B, H, W, 3); (B, 3, F, H, W) -> (B, F, H, W, 3). uint8.
    It truncates (no rounding), so 255 only appears for x == 1 exactly.
    """
    x = torch.clamp((pixels.float() + 1.0) / 2.0, 0.0, 1.0) * 255.0
    x = x.to(torch.uint8)  # truncation toward zero == floor for these non-negative values
    if x.dim() == 3:
        return x.permute(1, 2, 0).contiguous()
    if x.dim() == 4:
        return x.permute(0, 2, 3, 1).contiguous()
    if x.dim() == 5:
        return x.permute(0, 2, 3, 4, 1).contiguous()
    raise ValueError(f"to_uint8 expects (3,H,W), (B,3,H,W) or (B,3,F,H,W) pixels, got shape {tuple(pixels.shape)}")


# ----------------------------------------------------------------------------------------------------------------
# Original (Wan2.1 repo) <-> diffusers checkpoint layout
# ----------------------------------------------------------------------------------------------------------------
_RES_RENAMES = (
    ("norm1.gamma", "residual.0.gamma"),
    ("conv1.", "residual.2."),
    ("norm2.gamma", "residual.3.gamma"),
    ("conv2.", "residual.6."),
    ("conv_shortcut.", "shortcut."),
)


def _res_to_original(rest: str) -> str:
    for new, old in _RES_RENAMES:
        if rest.startswith(new):
            return old + rest[len(new) :]
    return rest


def wan_vae_diffusers_to_original(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers ``AutoencoderKLWan`` state dict into the original ``Wan2.1_VAE.pth`` key layout.

    The inverse of diffusers' ``convert_wan_vae_to_diffusers``; used to build original-layout test files (and to
    export). Assumes ``num_res_blocks=2`` and 4 levels (what the diffusers converter hard-codes).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)", key):
            new = f"{m[1]}.middle.{2 * int(m[2])}.{_res_to_original(m[3])}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
            new = f"{m[1]}.middle.1.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.norm_out\.(.+)", key):
            new = f"{m[1]}.head.0.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.conv_out\.(.+)", key):
            new = f"{m[1]}.head.2.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.conv_in\.(.+)", key):
            new = f"{m[1]}.conv1.{m[2]}"
        elif m := re.fullmatch(r"(post_)?quant_conv\.(.+)", key):
            new = f"{'conv2' if m[1] else 'conv1'}.{m[2]}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(.+)", key):
            new = f"encoder.downsamples.{m[1]}.{_res_to_original(m[2])}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"decoder.upsamples.{4 * int(m[1]) + int(m[2])}.{_res_to_original(m[3])}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
            new = f"decoder.upsamples.{4 * int(m[1]) + 3}.{m[2]}"
        else:
            new = key
        out[new] = value
    return out


def infer_config_from_original(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Read the ``AutoencoderKLWan`` constructor arguments off an original-layout state dict.

    The full Wan2.1 file gives the constructor defaults (base_dim 96, dim_mult [1,2,4,4], temporal downsample
    [False, True, True]); tiny test files give their own widths, so both load through the same code path.
    Encoder level ``l`` holds residual blocks at ``downsamples.{3l}``, ``{3l+1}`` and its downsampler at ``{3l+2}``
    (the layout diffusers' converter assumes: 4 levels, 2 residual blocks each).
    """
    try:
        base_dim = int(state_dict["encoder.conv1.weight"].shape[0])
        z_dim = int(state_dict["conv2.weight"].shape[0])
        decoder_dim = int(state_dict["decoder.head.2.weight"].shape[1])
    except KeyError as e:
        raise ValueError(f"not an original-layout Wan2.1 VAE state dict (missing key {e})") from None
    dim_mult = []
    for level in range(4):
        key = f"encoder.downsamples.{3 * level}.residual.2.weight"
        if key not in state_dict:
            raise ValueError(f"unsupported Wan VAE layout: missing {key} (expected 4 levels x 2 residual blocks)")
        dim_mult.append(int(state_dict[key].shape[0]) // base_dim)
    if "encoder.downsamples.11.residual.2.weight" in state_dict or "encoder.downsamples.2.residual.2.weight" in state_dict:
        raise ValueError("unsupported Wan VAE layout: only num_res_blocks=2 checkpoints can be converted")
    temporal = [f"encoder.downsamples.{3 * level + 2}.time_conv.weight" in state_dict for level in range(3)]
    cfg: dict[str, Any] = {
        "base_dim": base_dim,
        "z_dim": z_dim,
        "dim_mult": dim_mult,
        "num_res_blocks": 2,
        "attn_scales": [],
        "temperal_downsample": temporal,
    }
    # diffusers derives the decoder width from base_dim; it only differs in Wan2.2-style files
    if decoder_dim != base_dim * dim_mult[0]:
        cfg["decoder_base_dim"] = decoder_dim // dim_mult[0]
    return cfg


def write_full_size_config(directory: str | Path, **overrides: Any) -> Path:
    """Write a diffusers ``config.json`` for ``AutoencoderKLWan(**overrides)`` into ``directory`` (no download:
    the constructor defaults are the Wan2.1 VAE). The model is built on the meta device, so this is instant."""
    from diffusers import AutoencoderKLWan

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        AutoencoderKLWan(**overrides).save_config(str(directory))
    return directory


def _load_weight_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a weight file safely: safetensors, or a pickle with ``weights_only=True`` (never arbitrary code)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd: Any = load_file(str(path))
    else:
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # old (non-zip) serialisation cannot be memory-mapped
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    while isinstance(sd, Mapping) and "state_dict" in sd:  # some checkpoints nest the weights
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path} does not hold a flat state dict of tensors")
    return dict(sd)


# ----------------------------------------------------------------------------------------------------------------
# The wrapper
# ----------------------------------------------------------------------------------------------------------------
def _causal_conv_forward(conv: nn.Module, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
    """``WanCausalConv3d.forward`` with a 2D shortcut for one-frame inputs that carry no cache.

    A causal conv pads ``kernel_t - 1`` zero frames *before* the clip, so on one frame only the kernel's
    last temporal slice meets data: ``conv3d(pad(x)) == conv2d(x, w[:, :, -1])`` exactly (gradients too:
    the other slices only ever multiply zeros). Images are one-frame clips, and the first chunk of every
    video is one uncached frame, so this skips two thirds of the work there (2.7x faster image
    encode+decode measured on CPU).
    """
    kt = conv.kernel_size[0]
    pad = conv._padding
    if (x.shape[2] == 1 and cache_x is None and conv.stride[0] == 1 and conv.dilation[0] == 1 and conv.groups == 1
            and pad[4] == kt - 1 and pad[5] == 0):
        y = F.conv2d(F.pad(x[:, :, 0], pad[:4]), conv.weight[:, :, -1], conv.bias,
                     stride=conv.stride[1:], dilation=conv.dilation[1:])
        return y.unsqueeze(2)
    return type(conv).forward(conv, x, cache_x)


def enable_single_frame_fast_path(vae: nn.Module) -> int:
    """Route every diffusers ``WanCausalConv3d`` inside ``vae`` through :func:`_causal_conv_forward`.

    Per instance (the diffusers class is untouched); weights, state dicts and results are unchanged.
    Returns the number of convolutions switched.
    """
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    n = 0
    for m in vae.modules():
        if isinstance(m, WanCausalConv3d):
            m.forward = types.MethodType(_causal_conv_forward, m)
            n += 1
    return n


class WanVAE(nn.Module):
    """Show-o2's view of the Wan2.1 VAE: normalised latents in, pixels in [-1, 1] out.

    Args:
        vae: a diffusers ``AutoencoderKLWan`` (any width; ``z_dim`` must be 16 for the Wan2.1 constants).
        autocast_dtype: if set, run the network under ``torch.autocast`` with this dtype (the official setup:
            fp32 weights under bf16 autocast). The normalisation constants follow this dtype when set, otherwise
            the weights' dtype.
        slice_size: encode/decode at most this many batch items at a time (memory); ``None`` = whole batch.
        tiling: ``"auto"`` (tile when a frame has >= ``tile_min_area`` pixels or a clip >= ``tile_min_volume``
            pixel voxels), ``True`` (always, above the tile size) or ``False``.
        tile_sample_size / tile_sample_stride: diffusers tile size and stride in pixels (defaults 256 / 192).
        spatial_multiple: the resolution rule enforced on inputs (16 for Show-o2; 8 for plain VAE use).
        source: a free-form description of where the weights came from (recorded by the latent cache).
        single_frame_fast_path: run one-frame, uncached causal convs as the equivalent 2D convs
            (:func:`enable_single_frame_fast_path`; same numbers, a third of the work on images).
    """

    latent_channels = LATENT_CHANNELS
    spatial_stride = SPATIAL_STRIDE
    temporal_stride = TEMPORAL_STRIDE

    def __init__(
        self,
        vae: nn.Module,
        *,
        autocast_dtype: torch.dtype | None = None,
        slice_size: int | None = 8,
        tiling: bool | str = "auto",
        tile_min_area: int = 1024 * 1024,
        tile_min_volume: int = 33 * 480 * 480,
        tile_sample_size: int = 256,
        tile_sample_stride: int = 192,
        spatial_multiple: int = SPATIAL_MULTIPLE,
        source: str = "random",
        single_frame_fast_path: bool = True,
    ) -> None:
        super().__init__()
        z_dim = int(getattr(vae.config, "z_dim", LATENT_CHANNELS))
        if z_dim != LATENT_CHANNELS:
            raise ValueError(f"Wan2.1 normalisation needs z_dim={LATENT_CHANNELS}, the VAE has z_dim={z_dim}")
        if tiling not in (True, False, "auto"):
            raise ValueError(f"tiling must be True, False or 'auto', got {tiling!r}")
        self.vae = vae.eval().requires_grad_(False)  # frozen everywhere in Show-o2
        if single_frame_fast_path:
            enable_single_frame_fast_path(self.vae)
        self.autocast_dtype = autocast_dtype
        self.slice_size = slice_size
        self.tiling = tiling
        self.tile_min_area = tile_min_area
        self.tile_min_volume = tile_min_volume
        self.tile_sample_size = tile_sample_size
        self.tile_sample_stride = tile_sample_stride
        self.spatial_multiple = spatial_multiple
        self.source = source
        self._fingerprint: str | None = None
        self._const_cache: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(
        cls,
        config: str | Path | Mapping[str, Any] = TINY_CONFIG_PATH,
        *,
        seed: int | None = 0,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        **kwargs: Any,
    ) -> WanVAE:
        """A randomly initialised VAE from a config (a JSON file such as ``configs/vae/tiny.json`` or a dict of
        ``AutoencoderKLWan`` constructor arguments). ``seed`` makes the random weights reproducible.
        Extra ``kwargs`` go to :class:`WanVAE` (slicing, tiling, autocast)."""
        from diffusers import AutoencoderKLWan

        name = "dict"
        if not isinstance(config, Mapping):
            name = str(config)
            config = json.loads(Path(config).read_text())
        cfg = {k: v for k, v in dict(config).items() if not k.startswith("_")}  # drop diffusers metadata / comments
        if seed is None:
            vae = AutoencoderKLWan(**cfg)
        else:
            with torch.random.fork_rng(devices=[]):  # do not disturb the caller's global RNG
                torch.manual_seed(seed)
                vae = AutoencoderKLWan(**cfg)
        kwargs.setdefault("source", f"random:{name}:seed={seed}")
        return cls(vae, **kwargs).to(device=device, dtype=dtype)

    @classmethod
    def load(
        cls,
        source: str | Path,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        config: str | Path | None = None,
        subfolder: str | None = None,
        local_files_only: bool | None = None,
        **kwargs: Any,
    ) -> WanVAE:
        """Load pretrained weights.

        ``source`` may be
        * an original-layout weight file (``Wan2.1_VAE.pth``; ``.pt/.bin/.ckpt/.safetensors`` too), read with
          ``weights_only=True`` and converted by diffusers' ``from_single_file``. The architecture is read off the
          file (full size for the real file) and its ``config.json`` written locally, so nothing is downloaded.
          ``config`` may name a local diffusers config folder to use instead;
        * a local diffusers folder (``config.json`` + weights), or a pipeline folder holding ``vae/``;
        * a local folder holding ``Wan2.1_VAE.pth``;
        * a hub id of a diffusers repo (``subfolder="vae"`` is tried first, for pipeline repos), or
          ``owner/repo/path/Wan2.1_VAE.pth`` for a file inside a hub repo. ``HF_HUB_OFFLINE=1`` is honoured
          (cache only).
        """
        from diffusers import AutoencoderKLWan

        src = str(source)
        path = Path(src).expanduser()
        if local_files_only is None:
            local_files_only = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
        kwargs.setdefault("source", src)

        if path.is_file():
            vae = cls._load_original_file(path, dtype=dtype, config=config)
        elif path.is_dir():
            if subfolder is None and not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
                subfolder = "vae"
            if (path / (subfolder or "") / "config.json").is_file():
                vae = AutoencoderKLWan.from_pretrained(
                    str(path), subfolder=subfolder, torch_dtype=dtype, local_files_only=True
                )
            else:
                files = sorted(p for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES)
                if len(files) != 1:
                    raise FileNotFoundError(
                        f"{path} is neither a diffusers VAE folder (config.json), a pipeline folder (vae/config.json)"
                        f" nor a folder with exactly one weight file (found {[p.name for p in files]})"
                    )
                vae = cls._load_original_file(files[0], dtype=dtype, config=config)
        elif src.startswith((".", "/", "~")) or (path.suffix in _WEIGHT_SUFFIXES and len(src.split("/")) < 3):
            raise FileNotFoundError(
                f"VAE source {src} does not exist (a hub file is written owner/repo/path/file{path.suffix})"
            )
        else:
            vae = cls._load_from_hub(
                src, dtype=dtype, config=config, subfolder=subfolder, local_files_only=local_files_only
            )
        return cls(vae, **kwargs).to(device=device, dtype=dtype)

    @staticmethod
    def _load_original_file(path: Path, *, dtype: torch.dtype, config: str | Path | None) -> nn.Module:
        from diffusers import AutoencoderKLWan

        state_dict = _load_weight_file(path)
        if "decoder.middle.0.residual.0.gamma" not in state_dict:
            raise ValueError(
                f"{path} is not an original-layout Wan2.1 VAE checkpoint (no 'decoder.middle.0.residual.0.gamma';"
                " for diffusers-format weights pass the folder holding config.json)"
            )
        with tempfile.TemporaryDirectory(prefix="wan_vae_cfg_") as tmp:
            if config is None:  # write the config read off the file: no network, same path for tiny and full size
                config = write_full_size_config(tmp, **infer_config_from_original(state_dict))
            return AutoencoderKLWan.from_single_file(
                state_dict, config=str(config), local_files_only=True, torch_dtype=dtype
            )

    @classmethod
    def _load_from_hub(
        cls,
        repo: str,
        *,
        dtype: torch.dtype,
        config: str | Path | None,
        subfolder: str | None,
        local_files_only: bool,
    ) -> nn.Module:
        from diffusers import AutoencoderKLWan

        parts = repo.split("/")
        if len(parts) > 2 and parts[-1].endswith(_WEIGHT_SUFFIXES):  # a single file inside a hub repo
            from huggingface_hub import hf_hub_download

            local = hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]), local_files_only=local_files_only)
            return cls._load_original_file(Path(local), dtype=dtype, config=config)
        tries = [subfolder] if subfolder is not None else ["vae", None]  # pipeline repos keep the VAE in vae/
        errors = []
        for sub in tries:
            try:
                return AutoencoderKLWan.from_pretrained(
                    repo, subfolder=sub, torch_dtype=dtype, local_files_only=local_files_only
                )
            except (OSError, ValueError) as e:  # missing file / repo / offline cache miss
                errors.append(f"subfolder={sub!r}: {type(e).__name__}: {e}")
        raise OSError(
            f"could not load a Wan VAE from hub id {repo!r} (local_files_only={local_files_only}):\n  "
            + "\n  ".join(errors)
        )

    # ------------------------------------------------------------------ properties
    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the VAE weights."""
        return next(self.vae.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype Show-o2 calls 'the VAE dtype': autocast dtype if set, else the weights' dtype."""
        return self.autocast_dtype or self.dtype

    @property
    def config(self) -> dict[str, Any]:
        """The diffusers constructor config (plain dict)."""
        return {k: v for k, v in dict(self.vae.config).items() if not k.startswith("_")}

    def fingerprint(self) -> str:
        """sha256 (first 16 hex digits) of the config and every weight's bytes: identifies the VAE in caches.

        Computed once (about 1 s for the full-size model) and cached; dtype is part of the bytes on purpose.
        """
        if self._fingerprint is None:
            h = hashlib.sha256(json.dumps(self.config, sort_keys=True, default=str).encode())
            for name, t in sorted(self.vae.state_dict().items()):
                t = t.detach().to("cpu").contiguous()
                h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def identity(self) -> dict[str, Any]:
        """What a latent cache records about the VAE that produced it."""
        return {
            "source": self.source,
            "fingerprint": self.fingerprint(),
            "dtype": str(self.compute_dtype).replace("torch.", ""),
            "base_dim": self.config.get("base_dim"),
        }

    def constants(
        self, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, r)`` with ``r = 1 / std``, shape (16,), in ``dtype`` (default: :attr:`compute_dtype`).

        Like the official wrapper, std is first stored in that dtype and the reciprocal computed in it, so in bf16
        both constants are bf16-rounded (quirk Q28; e.g. std 2.8184 -> 2.8125).
        """
        dtype = dtype or self.compute_dtype
        device = torch.device(device) if device is not None else self.device
        key = (dtype, device)
        if key not in self._const_cache:
            mean = torch.tensor(WAN21_LATENT_MEAN, dtype=dtype, device=device)
            inv_std = 1.0 / torch.tensor(WAN21_LATENT_STD, dtype=dtype, device=device)
            self._const_cache[key] = (mean, inv_std)
        return self._const_cache[key]

    # ------------------------------------------------------------------ memory helpers
    def _want_tiling(self, frames: int, height: int, width: int) -> bool:
        if self.tiling == "auto":
            return height * width >= self.tile_min_area or frames * height * width >= self.tile_min_volume
        return bool(self.tiling)

    @contextlib.contextmanager
    def _tiling(self, enabled: bool) -> Iterator[None]:
        """Switch diffusers tiling for one call and restore the previous state (thread-unsafe, like diffusers)."""
        vae = self.vae
        saved = (
            vae.use_tiling,
            vae.tile_sample_min_height,
            vae.tile_sample_min_width,
            vae.tile_sample_stride_height,
            vae.tile_sample_stride_width,
        )
        vae.use_tiling = enabled
        if enabled:
            vae.tile_sample_min_height = vae.tile_sample_min_width = self.tile_sample_size
            vae.tile_sample_stride_height = vae.tile_sample_stride_width = self.tile_sample_stride
        try:
            yield
        finally:
            (
                vae.use_tiling,
                vae.tile_sample_min_height,
                vae.tile_sample_min_width,
                vae.tile_sample_stride_height,
                vae.tile_sample_stride_width,
            ) = saved

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _chunks(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.slice_size is None or x.shape[0] <= self.slice_size:
            return [x]
        return list(x.split(self.slice_size))

    # ------------------------------------------------------------------ encode / decode
    def _check_pixels(self, pixels: torch.Tensor) -> tuple[torch.Tensor, bool]:
        if pixels.dim() == 4:
            is_image = True
            pixels = pixels.unsqueeze(2)  # images are one-frame videos
        elif pixels.dim() == 5:
            is_image = False
        else:
            raise ValueError(f"pixels must be (B,3,H,W) or (B,3,F,H,W), got shape {tuple(pixels.shape)}")
        if pixels.shape[1] != 3:
            raise ValueError(f"pixels must have 3 channels at dim 1, got shape {tuple(pixels.shape)}")
        check_resolution(pixels.shape[-2], pixels.shape[-1], self.spatial_multiple)
        if not is_image:
            check_num_frames(pixels.shape[2])
        return pixels, is_image

    @torch.no_grad()
    def encode_posterior(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior of ``pixels`` in [-1, 1]: ``(mean_norm, logvar)``, both fp32, shape (B,16,h,w) or (B,16,T,h,w).

        ``mean_norm = (mu - mean) * r`` computed in the VAE dtype (as official); ``logvar`` is the raw posterior
        log-variance clamped to [-30, 20]. :func:`sample_from_posterior` turns them into an ``encode`` sample.
        """
        x, is_image = self._check_pixels(pixels)
        f, h, w = x.shape[2:]
        # under autocast the network casts itself; otherwise feed the weights' dtype
        x = x.to(device=self.device, dtype=self.dtype if self.autocast_dtype is None else x.dtype)
        mus, logvars = [], []
        with self._tiling(self._want_tiling(f, h, w)), self._autocast():
            for chunk in self._chunks(x):
                dist = self.vae.encode(chunk).latent_dist
                mus.append(dist.mean)
                logvars.append(dist.logvar)
            mu = torch.cat(mus)
            mean, r = self.constants(device=mu.device)
            mu_n = (mu.to(mean.dtype) - mean.view(1, -1, 1, 1, 1)) * r.view(1, -1, 1, 1, 1)
        logvar = torch.clamp(torch.cat(logvars).float(), -30.0, 20.0)
        mu_n = mu_n.float()
        if is_image:
            mu_n, logvar = mu_n.squeeze(2), logvar.squeeze(2)
        return mu_n, logvar

    def encode(
        self, pixels: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Pixels in [-1, 1] -> normalised latents (fp32).

        (B, 3, H, W) -> (B, 16, H/8, W/8); (B, 3, F, H, W) -> (B, 16, 1 + (F-1)/4, H/8, W/8).
        ``sample=True`` (Show-o2's default for training and understanding) adds the posterior noise
        ``exp(0.5*logvar) * eps``; eps comes from ``generator`` when given (drawn for the whole batch at once, so
        results do not depend on ``slice_size``). ``sample=False`` returns the normalised posterior mean.
        """
        mean, logvar = self.encode_posterior(pixels)
        if not sample:
            return mean
        return sample_from_posterior(mean, logvar, generator)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> pixels in [-1, 1], fp32.

        (B, 16, h, w) -> (B, 3, 8h, 8w); (B, 16, T, h, w) -> (B, 3, 1 + 4(T-1), 8h, 8w).
        ``z_raw = z / r + mean`` (constants in the VAE dtype, arithmetic promoted to fp32 as in the official
        wrapper), then the Wan decoder, fp32 cast and clamp.
        """
        if latents.dim() == 4:
            is_image, z = True, latents.unsqueeze(2)
        elif latents.dim() == 5:
            is_image, z = False, latents
        else:
            raise ValueError(f"latents must be (B,16,h,w) or (B,16,T,h,w), got shape {tuple(latents.shape)}")
        if z.shape[1] != LATENT_CHANNELS:
            raise ValueError(f"latents must have {LATENT_CHANNELS} channels at dim 1, got shape {tuple(latents.shape)}")
        h, w = z.shape[-2] * SPATIAL_STRIDE, z.shape[-1] * SPATIAL_STRIDE
        check_resolution(h, w, self.spatial_multiple)
        frames = num_pixel_frames(z.shape[2])
        z = z.to(self.device)
        mean, r = self.constants(device=z.device)
        z_raw = z.float() / r.view(1, -1, 1, 1, 1) + mean.view(1, -1, 1, 1, 1)
        z_raw = z_raw.to(self.dtype if self.autocast_dtype is None else torch.float32)
        outs = []
        with self._tiling(self._want_tiling(frames, h, w)), self._autocast():
            for chunk in self._chunks(z_raw):
                outs.append(self.vae.decode(chunk).sample.float())
        pixels = torch.clamp(torch.cat(outs), -1.0, 1.0)
        return pixels.squeeze(2) if is_image else pixels

    @staticmethod
    def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
        """See :func:`to_uint8` (official truncating ``denorm``, channels last)."""
        return to_uint8(pixels)

    def forward(self, pixels: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None):
        """Reconstruction ``decode(encode(pixels))`` (handy for sanity checks)."""
        return self.decode(self.encode(pixels, sample=sample, generator=generator))

    def _apply(self, fn, *args, **kwargs):  # .to()/.half()/...: cached constants and fingerprint go stale
        self._const_cache = {}
        self._fingerprint = None
        return super()._apply(fn, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"source={self.source!r}, autocast_dtype={self.autocast_dtype}, slice_size={self.slice_size}, "
            f"tiling={self.tiling!r}, spatial_multiple={self.spatial_multiple}"
        )
