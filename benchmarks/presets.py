"""Named benchmark configurations: a model config plus a realistic sequence layout for every section.

* ``tiny``: the parity-fixture model with a 4x4 token grid; seconds on a CPU, used by the tests.
* ``small``: a CPU-sized model (LLM width 512, 8 layers) with the **official token counts**: 432x432 images ->
  27x27 = 729 visual tokens, 1024-token training rows, 128-token prompts, a ~700-token understanding prefix. The
  speed ratios that caching and packing give depend on the token counts, not on the width, so this is where the
  CPU targets are checked.
* ``showo2-1.5b`` / ``showo2-7b`` (and ``-hq``): the official sizes, for a GPU (random weights, bf16).

Every workload field can be overridden from the command line (``workload.t2i_prompt_len=64``).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, fields
from typing import Any

from models.config import FLOW_HEAD_DEFAULT, Showo2Config

__all__ = ["Workload", "PRESETS", "preset_names", "model_config", "workload_for"]


@dataclass
class Workload:
    """Sequence layout and sizes used by the sections (token counts drive the cost)."""

    grid: int = 27                  # visual token grid side (latent side = 2 * grid, pixels = 16 * grid)
    max_seq_len: int = 1024         # training / official generation row length
    dtype: str = "fp32"             # model dtype (CPU: fp32; bf16 matmuls on CPUs without AMX are very slow)
    # training step: one micro-batch = t2i rows + captioning rows, every row padded to max_seq_len (official)
    train_t2i_rows: int = 1
    train_caption_rows: int = 1
    train_t2i_caption_len: int = 128    # caption tokens of a t2i row
    train_caption_len: int = 30         # caption tokens of a captioning row (~760-token row at 432px)
    # text-to-image generation
    t2i_batch: int = 1
    t2i_prompt_len: int = 128
    t2i_steps: int = 5                  # grid points of the end-to-end latency run (official: 50)
    t2i_report_steps: int = 50          # steps used to extrapolate the per-image latency
    guidance: float = 5.0
    # understanding decoding
    decode_batch: int = 1
    decode_grid: int = 26               # 26x26 = 676 visual tokens + delimiters + text ~ 700-token prefix
    decode_question_len: int = 16
    decode_new_tokens: int = 64
    # VAE
    vae_config: str = "demo"            # tiny | demo | full (random-init Wan2.1 architecture)
    vae_resolution: int = 432
    vae_batch: int = 1
    # packing study
    pack_rows: int = 4                  # samples in the padded baseline micro-batch


def _small_config() -> Showo2Config:
    """LLM 512 x 8 layers (GQA 8/2, head 64), SigLIP-like 384 x 4 layers on a 27x27 table, flow head 384 x 4."""
    return Showo2Config(
        llm_vocab_size=16384, llm_model_path="local-small", load_from_showo=False,
        image_latent_height=27, image_latent_width=27, video_latent_height=27, video_latent_width=27,
        hidden_size=512, clip_latent_dim=384, num_diffusion_layers=4, clip_pretrained_model_path="local-small",
        qwen2=dict(vocab_size=16384, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                   num_attention_heads=8, num_key_value_heads=2, hidden_act="silu", max_position_embeddings=32768,
                   rms_norm_eps=1e-6, rope_theta=1000000.0, rope_scaling=None, tie_word_embeddings=True,
                   use_sliding_window=False, attention_dropout=0.0, initializer_range=0.02),
        siglip=dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=5, num_attention_heads=6,
                    num_channels=3, image_size=378, patch_size=14, hidden_act="gelu_pytorch_tanh",
                    layer_norm_eps=1e-6, attention_dropout=0.0),
        flow_head={**copy.deepcopy(FLOW_HEAD_DEFAULT), "hidden_size": 384, "intermediate_size": 1024,
                   "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 64},
    )


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(model="tiny", workload=dict(
        grid=4, max_seq_len=48, train_t2i_caption_len=8, train_caption_len=10, t2i_prompt_len=8, t2i_steps=3,
        decode_grid=4, decode_question_len=6, decode_new_tokens=8, vae_config="tiny", vae_resolution=32,
        pack_rows=4)),
    "small": dict(model="small", workload=dict()),
    "showo2-1.5b": dict(model="showo2-1.5b", workload=dict(
        dtype="bf16", train_t2i_rows=4, train_caption_rows=4, t2i_batch=4, t2i_steps=50, decode_batch=1,
        decode_grid=27, vae_config="full", vae_batch=4, pack_rows=8)),
    "showo2-1.5b-hq": dict(model="showo2-1.5b-hq", workload=dict(
        dtype="bf16", grid=64, max_seq_len=4352, train_t2i_rows=1, train_caption_rows=1, t2i_batch=1,
        t2i_steps=50, decode_grid=27, vae_config="full", vae_resolution=1024, vae_batch=1, pack_rows=2)),
    "showo2-7b": dict(model="showo2-7b", workload=dict(
        dtype="bf16", train_t2i_rows=1, train_caption_rows=1, t2i_batch=4, t2i_steps=50, decode_grid=27,
        vae_config="full", vae_batch=4, pack_rows=2)),
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def model_config(preset: str) -> Showo2Config:
    """The model config of a benchmark preset (``small`` is defined here, the rest are model presets)."""
    name = PRESETS[preset]["model"] if preset in PRESETS else preset
    if name == "small":
        return _small_config()
    return Showo2Config.preset(name)


def workload_for(preset: str, overrides: dict[str, Any] | None = None) -> Workload:
    """Preset workload with command-line overrides (``None`` values keep the preset's value)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown benchmark preset {preset!r}; choose from {preset_names()}")
    values = dict(PRESETS[preset]["workload"])
    for k, v in (overrides or {}).items():
        if v is not None:
            values[k] = v
    known = {f.name for f in fields(Workload)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown workload keys {unknown}")
    return Workload(**values)


def workload_defaults() -> dict[str, Any]:
    """All workload keys with ``None`` (= preset value), for the CLI's default config."""
    return {k: None for k in asdict(Workload())}
