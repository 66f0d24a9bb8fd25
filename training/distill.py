"""Pre-distillation of the semantic layers (spec §8.1; the released code ships only the loss).

Student = the Show-o2 semantic path on VAE latents: 2x2 patch embed (16 -> D) + SigLIP position table
(interpolated to the latent grid by the model's own rule) + SigLIP encoder minus its last layer. Module
names equal the main model's, so the output file holds exactly ``image_embedder_und.*``,
``position_embedding.weight``, ``und_trans.*`` and stage 1 loads it strictly (``load_semantic_layers``).

Teacher = ``SiglipVisionModel`` on the pixels (resized to its ``image_size``, 384 for so400m), features of
the penultimate layer (``hidden_states[-2]``, the layer the student's last layer replaces). If the teacher
grid differs from the student's latent grid the teacher features are bilinearly resized to it.

Objective: ``-mean log clamp(cos(student, teacher), 1e-4, 0.9999)`` over all tokens.

Noise (not released; our choice, documented): the student must produce SigLIP-like features both for
clean latents (understanding) and for noised latents (generation, where the same features feed the
fusion). Per item, with probability ``p_clean`` (0.5) t = 1; otherwise t is drawn from the *training*
distribution (logit-normal with the resolution shift, ``flow.schedule.sample_train_timesteps``) and
x_t = t x1 + (1 - t) x0. The teacher always sees the clean pixels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from datasets.sequence import VisualInfo
from flow.schedule import interpolate, sample_train_timesteps
from models.checkpoints import SEMANTIC_PREFIXES, load_semantic_layers

__all__ = [
    "SEMANTIC_PREFIXES",
    "SemanticStudent",
    "cosine_distill_loss",
    "teacher_features",
    "noised_latents",
    "load_semantic_layers",
    "save_semantic_layers",
    "build_teacher",
]


class SemanticStudent(nn.Module):
    """The main model's semantic path with the main model's parameter names."""

    def __init__(self, config) -> None:
        super().__init__()
        from models.semantic import PatchEmbed, PositionTable, build_semantic_encoder

        self.patch_size = int(config.patch_size)
        self.image_embedder_und = PatchEmbed(config.patch_size, config.image_latent_dim, config.clip_latent_dim)
        self.position_embedding = nn.Embedding(config.num_positions, config.clip_latent_dim)
        self.und_trans = build_semantic_encoder(config.siglip)
        self._pos_table = PositionTable()
        w = self.image_embedder_und.proj.weight  # official init: Xavier on the flattened kernel, zero bias
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.image_embedder_und.proj.bias)

    def init_from_teacher(self, teacher: nn.Module) -> None:
        """SigLIP position table and encoder layers 0..L-2 (as the main model is built; §8)."""
        vm = getattr(teacher, "vision_model", teacher)  # transformers 5 flattened SiglipVisionModel
        with torch.no_grad():
            self.position_embedding.weight.copy_(vm.embeddings.position_embedding.weight)
        enc = {k: v for k, v in vm.encoder.state_dict().items() if int(k.split(".")[1]) < len(self.und_trans.layers)}
        self.und_trans.load_state_dict(enc, strict=True)

    def grid(self, latents: torch.Tensor) -> tuple[int, int]:
        return latents.shape[-2] // self.patch_size, latents.shape[-1] // self.patch_size

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, 16, h, w) latents -> (N, (h/2)(w/2), D) semantic features."""
        gh, gw = self.grid(latents)
        x = self.image_embedder_und(latents.to(self.image_embedder_und.proj.weight.dtype))
        x = x + self._pos_table(self.position_embedding.weight, gh, gw)
        return self.und_trans(inputs_embeds=x).last_hidden_state


def build_teacher(source: str | None, siglip_cfg: Mapping[str, Any] | None = None, seed: int = 0) -> nn.Module:
    """Frozen ``SiglipVisionModel``: pretrained (path / hub id) or, for tests, random from ``siglip_cfg``."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    if source and source != "random":
        teacher = SiglipVisionModel.from_pretrained(source)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            teacher = SiglipVisionModel(SiglipVisionConfig(**dict(siglip_cfg or {})))
    return teacher.eval().requires_grad_(False)


@torch.no_grad()
def teacher_features(teacher: nn.Module, pixels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Penultimate-layer SigLIP features of pixels in [-1, 1], resized to the student's token grid."""
    size = int(teacher.config.image_size)
    x = pixels.float()
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)
    dtype = next(teacher.parameters()).dtype
    hs = teacher(pixel_values=x.to(dtype), output_hidden_states=True).hidden_states[-2]  # (N, g*g, D)
    g = math.isqrt(hs.shape[1])
    if (g, g) != tuple(grid):
        hs = hs.transpose(1, 2).reshape(hs.shape[0], hs.shape[2], g, g)
        hs = F.interpolate(hs.float(), size=grid, mode="bilinear", align_corners=False)
        hs = hs.flatten(2).transpose(1, 2)
    return hs.float()


def cosine_distill_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """-mean log clamp(cos, 1e-4, 0.9999) over tokens (the released distillation objective)."""
    cos = F.cosine_similarity(student.float(), teacher.float(), dim=-1)
    return -torch.log(cos.clamp(1e-4, 0.9999)).mean()


@torch.no_grad()
def noised_latents(x1: torch.Tensor, gen: torch.Generator, p_clean: float = 0.5,
                   patch_size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Per item: clean with prob ``p_clean``, else x_t at a training-distribution t (module docstring)."""
    n = x1.shape[0]
    seq_len = VisualInfo.for_latents(x1.shape[1:], patch_size).block_len
    clean = torch.rand(n, generator=gen) < p_clean
    t = sample_train_timesteps(n, seq_len, t_min=clean.float(), generator=gen)
    t = torch.where(clean, torch.ones_like(t), t)
    x0 = torch.randn(x1.shape, generator=gen, dtype=torch.float32).to(x1.device)
    return interpolate(x0, x1, t.to(x1.device)), t


def save_semantic_layers(student: nn.Module, path: str | Path) -> Path:
    """Exactly the three prefixes, safetensors, atomic (temp file + os.replace)."""
    from training.checkpointing import save_state_dict

    sd = {k: v for k, v in student.state_dict().items() if k.startswith(SEMANTIC_PREFIXES)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    save_state_dict(sd, tmp)
    os.replace(tmp, path)
    return path


