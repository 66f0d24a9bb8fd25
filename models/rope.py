"""Rotary position embeddings: frequency tables and application (half-split convention).

The LLM uses transformers' own Qwen2 rotary module; this file holds the flow head's rotary module and
the helpers that keep every `inv_freq` table in fp32 (or bf16-rounded for spec quirk Q1).
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS


def default_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """theta^(-2j/d), j = 0..d/2-1, fp32 on CPU."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim))


def flow_head_inv_freq(flow_cfg: dict) -> torch.Tensor:
    """Flow-head frequencies (llama3-scaled when `rope_scaling` says so), fp32 on CPU."""
    scaling = flow_cfg.get("rope_scaling")
    if not scaling or scaling.get("rope_type", "default") == "default":
        return default_inv_freq(flow_cfg["head_dim"], flow_cfg["rope_theta"])
    cfg = LlamaConfig(hidden_size=flow_cfg["hidden_size"], num_attention_heads=flow_cfg["num_attention_heads"],
                      head_dim=flow_cfg["head_dim"], rope_theta=flow_cfg["rope_theta"], rope_scaling=dict(scaling),
                      max_position_embeddings=flow_cfg["max_position_embeddings"])
    inv_freq, _ = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](cfg, "cpu")
    return inv_freq.float()


def bf16_round(inv_freq: torch.Tensor) -> torch.Tensor:
    """Spec Q1: the frequencies the reference uses after `model.to(bfloat16)`."""
    return inv_freq.to(torch.bfloat16).float()


class RotaryEmbedding(nn.Module):
    """cos/sin tables for given positions. forward(x, position_ids (B|1, L)) -> cos, sin (B|1, L, d) in x.dtype."""

    def __init__(self, inv_freq: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type=x.device.type, enabled=False):
            freqs = position_ids[..., None].float() * self.inv_freq.to(x.device, torch.float32)
            emb = torch.cat((freqs, freqs), dim=-1)
            return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, heads, L, d); cos/sin: (B|1, L, d)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin
