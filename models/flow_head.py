"""Flow head: timestep embedder, adaLN-Zero attention blocks (`diffusion_head_a`) and final layer
(`diffusion_head_b`), spec §2.7-§2.9.

adaLN parameters are computed once per visual item, (N, k*D), and placed per position with an index
tensor `item_index` (B, L): 0 = outside every block (shift = scale = 0, gate = 1), m + 1 = item m.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .norms import RMSNorm, modulate
from .rope import apply_rotary


class TimestepEmbedder(nn.Module):
    """Raw t in [0, 1] -> [cos(t f), sin(t f)] (fp32, 256-d) -> Linear -> SiLU -> Linear. (N,) -> (N, D).

    ``scale`` multiplies t first. Official Show-o2 feeds raw t (scale 1, quirk Q10), so the sinusoids
    barely move over [0, 1] (the fastest one spans one radian); the released weights need it that way.
    A model trained from scratch can use scale 1000 (the DiT convention) to see the noise level clearly.
    """

    def __init__(self, hidden_size: int, frequency_dim: int = 256, max_period: float = 10000.0,
                 scale: float = 1.0) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.max_period = max_period
        self.scale = float(scale)
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def sinusoid(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequency_dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = (t.reshape(-1, 1).float() * self.scale) * freqs[None]   # x 1.0 is exact: official numbers kept
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.sinusoid(t).to(self.mlp[0].weight.dtype))


def place_modulation(params: torch.Tensor, item_index: torch.Tensor, defaults: torch.Tensor) -> torch.Tensor:
    """params (N, k*D) per item, item_index (B, L) in 0..N, defaults (k*D,) -> (B, L, k*D) by one gather."""
    table = torch.cat([defaults.to(params.dtype)[None], params], dim=0)
    return table[item_index]


@functools.cache
def _flex(device_type: str):
    """flex_attention, compiled on accelerators (the eager version materialises the full score matrix)."""
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention) if device_type != "cpu" else flex_attention


class FlowAttention(nn.Module):
    """GQA attention with per-head q/k RMSNorm (before RoPE) and an optional DynamicCache."""

    def __init__(self, cfg: dict, layer_idx: int) -> None:
        super().__init__()
        d, hd = cfg["hidden_size"], cfg["head_dim"]
        self.num_heads, self.num_kv_heads, self.head_dim = cfg["num_attention_heads"], cfg["num_key_value_heads"], hd
        self.layer_idx = layer_idx
        bias = cfg.get("attention_bias", False)
        self.q_proj = nn.Linear(d, self.num_heads * hd, bias=bias)
        self.k_proj = nn.Linear(d, self.num_kv_heads * hd, bias=bias)
        self.v_proj = nn.Linear(d, self.num_kv_heads * hd, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * hd, d, bias=bias)
        self.q_norm = RMSNorm(hd, eps=cfg.get("qk_norm_eps", 1e-6))
        self.k_norm = RMSNorm(hd, eps=cfg.get("qk_norm_eps", 1e-6))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                cache=None) -> torch.Tensor:
        """x (B, L, D); cos/sin (1|B, L, hd); mask bool (B, 1, L, L_kv); cache: transformers Cache or None."""
        b, n, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, n, self.num_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(b, n, self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        gqa = self.num_heads != self.num_kv_heads   # KV head g serves query heads g*rep .. g*rep+rep-1
        if isinstance(mask, torch.Tensor):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        else:   # a flex-attention BlockMask (inference fast path)
            out = _flex(q.device.type)(q, k, v, block_mask=mask, enable_gqa=gqa)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class FlowMLP(nn.Module):
    """SwiGLU MLP without biases."""

    def __init__(self, d: int, inter: int, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d, inter, bias=bias)
        self.up_proj = nn.Linear(d, inter, bias=bias)
        self.down_proj = nn.Linear(inter, d, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class ModulatedAttentionBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero modulation (shift/scale/gate for attention and MLP)."""

    def __init__(self, cfg: dict, layer_idx: int) -> None:
        super().__init__()
        d = cfg["hidden_size"]
        self.self_attn = FlowAttention(cfg, layer_idx)
        self.mlp = FlowMLP(d, cfg["intermediate_size"], cfg.get("mlp_bias", False))
        self.input_layernorm = RMSNorm(d, eps=cfg["rms_norm_eps"])
        self.post_attention_layernorm = RMSNorm(d, eps=cfg["rms_norm_eps"])
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d, bias=True))

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor, item_index: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor, mask: torch.Tensor, cache=None) -> torch.Tensor:
        """x (B, L, D), t_emb (N, D), item_index (B, L) -> (B, L, D)."""
        params = self.adaLN_modulation(t_emb)                                   # once per item
        defaults = params.new_zeros(6, x.shape[-1])
        defaults[2] = 1.0   # gate_msa = 1 outside blocks
        defaults[5] = 1.0   # gate_mlp
        mod = place_modulation(params, item_index, defaults.flatten())          # (B, L, 6D)
        sh1, sc1, g1, sh2, sc2, g2 = mod.chunk(6, dim=-1)
        h = x + g1 * self.self_attn(modulate(self.input_layernorm(x), sh1, sc1), cos, sin, mask, cache)
        return h + g2 * self.mlp(modulate(self.post_attention_layernorm(h), sh2, sc2))


class FinalLayer(nn.Module):
    """adaLN RMSNorm -> Linear(D -> p*p*C)."""

    def __init__(self, d: int, out_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm_final = RMSNorm(d, eps=eps)
        self.linear = nn.Linear(d, out_dim, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d, bias=True))

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor, item_index: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), t_emb (N, D), item_index (B, L) -> (B, L, p*p*C)."""
        params = self.adaLN_modulation(t_emb)
        mod = place_modulation(params, item_index, params.new_zeros(params.shape[-1]))
        shift, scale = mod.chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))
