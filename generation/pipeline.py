"""``Showo2Pipeline``: model + VAE + tokenizer + special tokens, one object for every inference mode.

Used by the ``inference_*.py`` scripts, the evaluation samplers and the demo. The public signatures
below are a contract with the evaluation code; keep them stable.

Official-vs-training switches (each lives in exactly one place):

* understanding prompt + mask offset: ``understand(layout="train" | "official_demo")`` -- the demo
  prompt has no ``<|im_end|>`` after the question and no newline after the image (Q4) and its
  bidirectional block starts one position late (Q2); ``official_mask_offset`` toggles the mask part
  alone (``datasets.sequence.SequenceBuilder.mmu_prompt``);
* understanding preprocessing: ``preprocess="pad"`` (training) or ``"crop"`` (official demo, Q5);
  default follows the layout;
* VAE posterior for understanding inputs: ``vae_sample`` (official: stochastic, Q6; default: mean);
* history images in mixed-modality text generation: ``history_t`` 1.0 (training) or 0.0 (official, Q14);
* initial-noise rounding: ``noise_bf16_round`` (official: fp32 noise rounded to bf16, Q7).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from datasets.sequence import RESOLUTION_PRESETS, SequenceBuilder, VisualInfo
from datasets.tokenizer import ChatIds, SpecialTokens
from flow.samplers import SAMPLERS, make_noise
from generation.image import VisualRow, generate_visual
from generation.interleaved import Story, generate_interleaved
from generation.runtime import model_device, model_dtype, model_patch_size
from generation.text import TextPrompt, generate_text

__all__ = ["Showo2Pipeline", "InputError"]

logger = logging.getLogger(__name__)

VAE_STRIDE = 8
PATCH = 2
LATENT_C = 16


class InputError(ValueError):
    """Bad user input (empty prompt, bad resolution, unreadable media, ...): entry points print it in one line."""


def _progress(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is in requirements
        return None
    return tqdm(total=total, desc=desc, leave=False)


def check_resolution(resolution: int) -> None:
    step = VAE_STRIDE * PATCH
    if not isinstance(resolution, int) or resolution <= 0 or resolution % step:
        lo = (int(resolution) // step) * step if isinstance(resolution, int | float) else 0
        hint = f" (nearest: {lo} or {lo + step})" if lo > 0 else f" (e.g. {step * 27})"
        raise InputError(f"resolution must be a positive multiple of {step}, got {resolution!r}{hint}")


def _training_run_tokenizer(folder: Path) -> str | None:
    """A training export (``<run>/export``) has no tokenizer files; the run's ``config.yaml`` names it."""
    for cfg_file in (folder / "config.yaml", folder.parent / "config.yaml"):
        if cfg_file.is_file():
            try:
                from omegaconf import OmegaConf

                tok = OmegaConf.select(OmegaConf.load(cfg_file), "data.tokenizer")
            except Exception:  # noqa: BLE001 - an unrelated yaml: ignore
                continue
            if tok:
                return str(tok)
    return None


class Showo2Pipeline:
    """Inference front end.

    Args:
        model: a ``Showo2Model`` (eval mode; its dtype/device are used for everything).
        vae: a ``models.vae.WanVAE`` (None: only understanding of pre-computed latents / no decoding).
        tokenizer: the (extended) Qwen2.5 tokenizer; special_tokens: its ``SpecialTokens``.
        resolution: default image side in pixels (432 / 512 / 1024 presets, or any multiple of 16).
        chat_ids: chat-template pieces (default: tokenised from ``tokenizer``).
        max_text_len: caption budget when ``resolution`` is not a preset (presets use theirs: 290 / 251).
        shift: time-grid shift (3.0 in every released config).
        cached: prefix-cached denoising (False = the official full-sequence path, slow; reference).
        noise_bf16_round: round the fp32 initial noise to bf16 (Q7; default on when the model is bf16).
        vae_sample: stochastic VAE posterior for understanding inputs (official Q6); default: the mean.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        vae: Any,
        tokenizer: Any,
        special_tokens: SpecialTokens,
        resolution: int = 432,
        *,
        chat_ids: ChatIds | None = None,
        max_text_len: int = 256,
        max_prompt_len: int = 8192,
        shift: float = 3.0,
        cached: bool = True,
        noise_bf16_round: bool | None = None,
        vae_sample: bool = False,
    ) -> None:
        check_resolution(resolution)
        self.model = model.eval()
        self.vae = vae
        self.tokenizer = tokenizer
        self.special = special_tokens
        self.resolution = resolution
        self.chat_ids = chat_ids if chat_ids is not None else (
            ChatIds.from_tokenizer(tokenizer) if tokenizer is not None else None)
        self.max_text_len = max_text_len
        self.max_prompt_len = max_prompt_len
        self.shift = shift
        self.cached = cached
        self.noise_bf16_round = (model_dtype(model) == torch.bfloat16) if noise_bf16_round is None else noise_bf16_round
        self.vae_sample = vae_sample
        self.builder = SequenceBuilder(self.special, self.chat_ids, tokenizer, patch_size=model_patch_size(model))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        model_path: str | os.PathLike,
        vae_path: str | os.PathLike | None = None,
        tokenizer_path: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        **kwargs: Any,
    ) -> Showo2Pipeline:
        """Official checkpoint (hub id / folder) or project export (``save_pretrained`` / training export).

        Tokenizer: ``tokenizer_path``, else a tokenizer saved in the model folder (or its ``tokenizer/``),
        else the config's ``llm_model_path`` (HF cache / hub). VAE: ``vae_path`` (``Wan2.1_VAE.pth``, a
        diffusers folder or hub id), else ``<model>/vae`` or ``<model>/Wan2.1_VAE.pth``, else
        ``./Wan2.1_VAE.pth``; without any, the pipeline cannot decode images.
        """
        from datasets.tokenizer import load_tokenizer
        from models.checkpoints import load_official_checkpoint
        from models.vae import WanVAE

        model = load_official_checkpoint(model_path, dtype=dtype, device=device).eval()
        folder = Path(model_path)
        if tokenizer_path is None:
            for cand in (folder / "tokenizer", folder):
                if (cand / "tokenizer.json").is_file() or (cand / "tokenizer_config.json").is_file():
                    tokenizer_path = cand
                    break
        if tokenizer_path is None:
            tokenizer_path = _training_run_tokenizer(folder)
        if tokenizer_path is None:
            tokenizer_path = model.config.llm_model_path
        try:
            tokenizer, special = load_tokenizer(str(tokenizer_path))
        except (OSError, ValueError) as e:
            raise InputError(f"cannot load the tokenizer {tokenizer_path!r} (pass tokenizer_path=...): "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        if special.vocab_size > model.config.llm_vocab_size:
            raise InputError(f"tokenizer has {special.vocab_size} tokens but the model only "
                             f"{model.config.llm_vocab_size} rows (wrong tokenizer for this checkpoint?)")
        if vae_path is None:
            for cand in (folder / "vae", folder / "Wan2.1_VAE.pth", Path("Wan2.1_VAE.pth")):
                if cand.exists():
                    vae_path = cand
                    break
        vae = None
        if vae_path is not None:
            autocast = dtype if (dtype != torch.float32 and torch.device(device).type == "cuda") else None
            vae = WanVAE.load(str(vae_path), dtype=torch.float32, device=device, autocast_dtype=autocast)
        else:
            logger.warning("no VAE found (pass vae_path=...): image/video outputs cannot be decoded")
        return cls(model, vae, tokenizer, special, **kwargs)

    @classmethod
    def from_training(cls, model: torch.nn.Module, vae: Any, cfg: Any, **kwargs: Any) -> Showo2Pipeline:
        """Pipeline around an in-memory training model (periodic sample grids of ``training/loop.py``).

        Tokenizer: ``cfg.data.tokenizer``; resolution: ``cfg.generation.resolution`` if set, else the
        model's configured token grid x 16 (432 for the released sizes, 64 for the tiny/demo presets).
        """
        from datasets.tokenizer import load_tokenizer

        def sel(path: str) -> Any:
            node = cfg
            for part in path.split("."):
                node = node.get(part) if hasattr(node, "get") else None
                if node is None:
                    return None
            return node

        tok_path = sel("data.tokenizer")
        if not tok_path:
            raise InputError("cfg.data.tokenizer is not set: cannot build a pipeline for sampling")
        tokenizer, special = load_tokenizer(str(tok_path))
        res = sel("generation.resolution") or int(getattr(model.config, "image_latent_height", 27)) * VAE_STRIDE * PATCH
        kwargs.setdefault("resolution", int(res))
        return cls(model, vae, tokenizer, special, **kwargs)

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def _need_vae(self) -> Any:
        if self.vae is None:
            raise InputError("this pipeline has no VAE (pass vae_path=...)")
        return self.vae

    def _visual(self, resolution: int, frames: int = 1, generate: bool = True) -> VisualInfo:
        check_resolution(resolution)
        return self.builder.visual_for_pixels(resolution, resolution, frames=frames, generate=generate)

    def _text_budget(self, resolution: int) -> int:
        p = RESOLUTION_PRESETS.get(resolution)
        return p.max_text_len if p is not None else self.max_text_len

    def _pad_to(self, resolution: int, block_len: int) -> int | None:
        """Official right padding (uncached reference path only; the cached path drops the tail)."""
        if self.cached:
            return None
        p = RESOLUTION_PRESETS.get(resolution)
        return p.max_seq_len if p is not None and p.block_len == block_len else None

    def _latent_hw(self, resolution: int) -> tuple[int, int]:
        return resolution // VAE_STRIDE, resolution // VAE_STRIDE

    def _check_prompts(self, prompts: Sequence[str], what: str = "prompt") -> list[str]:
        if isinstance(prompts, str):
            prompts = [prompts]
        out = []
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise InputError(f"empty {what} at index {i}")
            out.append(p)
        return out

    def _check_guidance(self, g: float) -> float:
        if g < 0:
            raise InputError(f"guidance_scale must be >= 0, got {g}")
        if g == 0:
            logger.warning("guidance_scale=0: classifier-free guidance off (conditional pass only)")
        return float(g)

    def _seeds(self, seeds: Sequence[int] | None, n: int) -> list[int]:
        if seeds is None:
            return list(range(n))
        seeds = [int(s) for s in seeds]
        if len(seeds) != n:
            raise InputError(f"{len(seeds)} seeds for {n} prompts")
        return seeds

    def decode_images(self, latents: torch.Tensor) -> list[Image.Image]:
        """(B, 16, h, w) latents -> PIL images (official truncating denorm, Q10)."""
        from models.vae import to_uint8

        px = self._need_vae().decode(latents.float())
        return [Image.fromarray(a.cpu().numpy()) for a in to_uint8(px)]

    def decode_videos(self, latents: torch.Tensor) -> list[np.ndarray]:
        """(B, 16, T, h, w) latents -> uint8 (F, H, W, 3) arrays."""
        from models.vae import to_uint8

        px = self._need_vae().decode(latents.float())
        return [a.cpu().numpy() for a in to_uint8(px)]

    def _encode_pixels(self, pixels: torch.Tensor, seed: int = 0) -> torch.Tensor:
        vae = self._need_vae()
        gen = torch.Generator().manual_seed(seed) if self.vae_sample else None
        return vae.encode(pixels.to(vae.device), sample=self.vae_sample, generator=gen).float().cpu()

    def _load_image(self, image: Image.Image | np.ndarray | str | os.PathLike) -> Image.Image:
        from datasets.transforms import load_image, to_rgb

        if isinstance(image, Image.Image):
            return to_rgb(image, strict=False)
        if isinstance(image, np.ndarray):
            if image.ndim not in (2, 3) or image.dtype != np.uint8:
                raise InputError(f"image arrays must be uint8 (H, W[, 3]), got {image.dtype} {image.shape}")
            return to_rgb(Image.fromarray(image), strict=False)
        p = Path(image)
        if not p.is_file():
            raise InputError(f"image not found: {p}")
        try:
            return load_image(p, strict=False)
        except Exception as e:  # noqa: BLE001 - corrupt / unsupported file -> one clean message
            raise InputError(f"cannot read image {p}: {type(e).__name__}: {e}") from e

    def _preprocess(self, image: Image.Image, resolution: int, mode: str) -> torch.Tensor:
        from datasets.transforms import preprocess_image

        return preprocess_image(image, resolution, mode=mode)

    def _run_visual(self, cond: list[VisualRow], unc: list[VisualRow] | None, noise: torch.Tensor, *,
                    guidance_scale: float, num_steps: int, sampler: str, bar: Any,
                    first_frame: torch.Tensor | None = None) -> torch.Tensor:
        if sampler not in SAMPLERS:
            raise InputError(f"unknown sampler {sampler!r} (choose from {sorted(SAMPLERS)})")
        if num_steps < 2:
            raise InputError(f"num_steps counts grid points and must be >= 2, got {num_steps}")
        cb = (lambda k, n: bar.update(1)) if bar is not None else None
        return generate_visual(self.model, cond, unc if guidance_scale != 0 else None, noise,
                               guidance_scale=guidance_scale, num_steps=num_steps, shift=self.shift, sampler=sampler,
                               pad_id=self.special.pad, cached=self.cached, first_frame=first_frame, callback=cb)

    # ------------------------------------------------------------------ text-to-image
    @torch.no_grad()
    def text_to_image_latents(
        self,
        prompts: Sequence[str],
        *,
        guidance_scale: float = 7.5,
        num_steps: int = 50,
        sampler: str = "euler",
        seeds: Sequence[int] | None = None,
        batch_size: int = 8,
        resolution: int | None = None,
        progress: bool = True,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Like :meth:`text_to_image` but returns the float32 latents (N, 16, h, w)."""
        prompts = self._check_prompts(prompts)
        res = resolution or self.resolution
        info = self._visual(res)
        g = self._check_guidance(guidance_scale)
        if seeds is None and seed is not None:
            seeds = [int(seed) + i for i in range(len(prompts))]
        seeds = self._seeds(seeds, len(prompts))
        h, w = self._latent_hw(res)
        steps_per = (num_steps - 1) * (1 if sampler == "euler" else 2)
        bar = _progress(progress, steps_per * math.ceil(len(prompts) / batch_size), "text-to-image")
        out = []
        for s in range(0, len(prompts), batch_size):
            caps = prompts[s: s + batch_size]
            rows = self.builder.t2i_cfg(caps, info, pad_to=self._pad_to(res, info.block_len),
                                        max_text_len=self._text_budget(res), guidance=g != 0)
            rows = [VisualRow(r.input_ids, r.modality_positions) for r in rows]
            cond, unc = rows[: len(caps)], (rows[len(caps):] or None)
            noise = make_noise((len(caps), LATENT_C, h, w), seeds=seeds[s: s + batch_size],
                               noise_bf16_round=self.noise_bf16_round)
            out.append(self._run_visual(cond, unc, noise, guidance_scale=g, num_steps=num_steps, sampler=sampler,
                                        bar=bar).cpu())
        if bar is not None:
            bar.close()
        return torch.cat(out)

    def text_to_image(
        self,
        prompts: list[str],
        *,
        guidance_scale: float = 7.5,
        num_steps: int = 50,
        sampler: str = "euler",
        seeds: list[int] | None = None,
        batch_size: int = 8,
        resolution: int | None = None,
        progress: bool = True,
        seed: int | None = None,
    ) -> list[Image.Image]:
        """One image per prompt. ``num_steps`` counts grid points (official ``num_inference_steps``:
        Euler makes ``num_steps - 1`` model evaluations). ``seeds`` default to the prompt indices
        (``seed + index`` when only ``seed`` is given)."""
        lat = self.text_to_image_latents(prompts, guidance_scale=guidance_scale, num_steps=num_steps,
                                         sampler=sampler, seeds=seeds, batch_size=batch_size,
                                         resolution=resolution, progress=progress, seed=seed)
        images: list[Image.Image] = []
        for s in range(0, lat.shape[0], batch_size):
            images += self.decode_images(lat[s: s + batch_size])
        return images

    # ------------------------------------------------------------------ video generation
    @torch.no_grad()
    def text_to_video(
        self,
        prompts: list[str],
        num_frames: int = 17,
        *,
        guidance_scale: float = 5.0,
        num_steps: int = 50,
        sampler: str = "euler",
        seeds: list[int] | None = None,
        batch_size: int = 1,
        resolution: int | None = None,
        progress: bool = True,
        images: list[Image.Image | str] | None = None,
    ) -> list[np.ndarray]:
        """One uint8 (F, H, W, 3) clip per prompt (F = ``num_frames`` = 1 + 4k). With ``images``:
        image-to-video (see :meth:`image_to_video`)."""
        prompts = self._check_prompts(prompts)
        res = resolution or self.resolution
        if num_frames < 1 or (num_frames - 1) % 4:
            raise InputError(f"num_frames must be 1 + 4k (e.g. 17), got {num_frames}")
        info = self._visual(res, frames=num_frames)
        g = self._check_guidance(guidance_scale)
        seeds = self._seeds(seeds, len(prompts))
        T = 1 + (num_frames - 1) // 4
        h, w = self._latent_hw(res)
        first_all = None
        if images is not None:
            if len(images) != len(prompts):
                raise InputError(f"{len(images)} images for {len(prompts)} prompts")
            if T < 2:
                raise InputError("image-to-video needs num_frames >= 5 (at least one generated latent frame)")
            px = torch.stack([self._preprocess(self._load_image(im), res, "crop") for im in images])
            first_all = torch.cat([self._encode_pixels(px[i: i + 1], seeds[i]) for i in range(len(images))])
        steps_per = (num_steps - 1) * (1 if sampler == "euler" else 2)
        bar = _progress(progress, steps_per * math.ceil(len(prompts) / batch_size), "video")
        out: list[np.ndarray] = []
        for s in range(0, len(prompts), batch_size):
            caps = prompts[s: s + batch_size]
            mk = (lambda c: self.builder.i2v(c, info, 1, pad_to=None, max_text_len=self._text_budget(res))) \
                if first_all is not None else \
                (lambda c: self.builder.t2v(c, info, pad_to=None, max_text_len=self._text_budget(res)))
            cond = [VisualRow(r.input_ids, r.modality_positions) for r in (mk(c) for c in caps)]
            unc = None
            if g != 0:
                unc = [VisualRow(r.input_ids, r.modality_positions) for r in (mk(None) for _ in caps)]
            noise = make_noise((len(caps), LATENT_C, T, h, w), seeds=seeds[s: s + batch_size],
                               noise_bf16_round=self.noise_bf16_round)
            ff = first_all[s: s + batch_size] if first_all is not None else None
            lat = self._run_visual(cond, unc, noise, guidance_scale=g, num_steps=num_steps, sampler=sampler,
                                   bar=bar, first_frame=ff)
            out += self.decode_videos(lat)
        if bar is not None:
            bar.close()
        return out

    def image_to_video(self, images: list[Image.Image | str], prompts: list[str], num_frames: int = 17,
                       **kwargs: Any) -> list[np.ndarray]:
        """The first latent frame is the encoded image (clean, its velocity zeroed); the rest is generated."""
        return self.text_to_video(prompts, num_frames, images=images, **kwargs)

    # ------------------------------------------------------------------ understanding
    def _question_ids(self, q: str, budget: int) -> list[int]:
        ids = self.builder.ids(q)
        if len(ids) > budget:
            logger.warning("question of %d tokens truncated to %d to fit the context", len(ids), budget)
            ids = ids[:budget]
        return ids

    def _mmu_prompt(self, question: str, info: VisualInfo | None, latent: torch.Tensor | None, layout: str,
                    official_mask_offset: bool | None) -> TextPrompt:
        if layout not in ("train", "official_demo"):
            raise InputError(f"unknown understanding layout {layout!r} (train | official_demo)")
        vis_len = info.block_len if info is not None else 0
        budget = max(1, self.max_prompt_len - vis_len - 64)
        q = self._question_ids(question, budget)
        # an <image> tag typed into the question would open a second block: drop it
        q = [t for t in q if t != self.special.img]
        s = self.builder.mmu_prompt(q, info, layout=layout, off_by_one_block=official_mask_offset)
        if info is None:
            return TextPrompt(s.input_ids)
        scatter = torch.tensor([[v.offset, v.block_len] for v in s.visuals], dtype=torch.long)
        return TextPrompt(s.input_ids, scatter, s.modality_positions, [latent])

    def _answer(self, prompts: list[TextPrompt], *, max_new_tokens: int, temperature: float, top_k: int | None,
                top_p: float | None, batch_size: int, seeds: list[int],
                visual_pool: tuple[int, int] | None = None) -> list[str]:
        # one batch holds one visual-latent shape (text-only prompts form their own batches)
        by_shape: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            by_shape.setdefault(str([tuple(v.shape) for v in p.visual_latents]), []).append(i)
        groups = [idx[k: k + batch_size] for idx in by_shape.values() for k in range(0, len(idx), batch_size)]
        result: dict[int, str] = {}
        for grp in groups:
            res = generate_text(self.model, [prompts[i] for i in grp], pad_id=self.special.pad,
                                max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                stop_ids=(self.special.eos,), seeds=[seeds[i] for i in grp],
                                visual_pool=visual_pool)
            for i, toks in zip(grp, res.tokens):
                result[i] = self.tokenizer.decode(toks, skip_special_tokens=True)
        return [result[i] for i in range(len(prompts))]

    @torch.no_grad()
    def understand(
        self,
        images: list[Image.Image | str | None],
        questions: list[str],
        *,
        max_new_tokens: int = 300,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        layout: str = "train",
        batch_size: int = 8,
        preprocess: str | None = None,
        official_mask_offset: bool | None = None,
        resolution: int | None = None,
        seeds: list[int] | None = None,
    ) -> list[str]:
        """Answer ``questions[i]`` about ``images[i]`` (None = text only). Greedy by default.

        ``layout="official_demo"`` reproduces the demo prompt and mask (Q2/Q4) and, unless
        ``preprocess`` says otherwise, its centre crop (Q5); ``"train"`` uses the training chat layout
        and resize-and-pad.
        """
        questions = self._check_prompts(questions, "question")
        if len(images) != len(questions):
            raise InputError(f"{len(images)} images for {len(questions)} questions")
        res = resolution or self.resolution
        mode = preprocess or ("crop" if layout == "official_demo" else "pad")
        info = self._visual(res, generate=False)
        seeds = self._seeds(seeds, len(questions))
        prompts = []
        for i, (img, q) in enumerate(zip(images, questions)):
            if img is None:
                prompts.append(self._mmu_prompt(q, None, None, layout, official_mask_offset))
                continue
            px = self._preprocess(self._load_image(img), res, mode)[None]
            lat = self._encode_pixels(px, seeds[i])[0]
            prompts.append(self._mmu_prompt(q, info, lat, layout, official_mask_offset))
        return self._answer(prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p, batch_size=batch_size, seeds=seeds)

    @torch.no_grad()
    def understand_video(
        self,
        videos: list[str | np.ndarray],
        questions: list[str],
        num_frames: int = 17,
        *,
        max_new_tokens: int = 300,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        layout: str | None = None,
        batch_size: int = 4,
        resolution: int | None = None,
        official_mask_offset: bool | None = None,
        video_mode: str = "clip",
        seeds: list[int] | None = None,
    ) -> list[str]:
        """Answer questions about videos (a path or uint8 (F, H, W, 3) frames each).

        ``num_frames`` frames are sampled uniformly (``linspace``, as the reference) and padded to the
        resolution. Two encodings (one switch):

        * ``video_mode="clip"`` (default; the project's video-text training): F = 1 + 4k frames encoded
          as one clip by the causal VAE -> (16, 1 + (F-1)/4, h, w), all tokens kept; layout default "train".
        * ``video_mode="official"`` (released ``-w-video-und`` checkpoints, reference §2.3): any F, every
          frame encoded on its own, each frame's token grid bilinearly pooled to ceil(g/2) (27 -> 14),
          demo prompt (layout default "official_demo") and the demo's mask block of one *image* length
          (g^2 + 1 = 730 at 432 px) whatever the video length (quirk Q3).
        """
        from datasets.transforms import frames_to_tensor, resize_and_pad
        from utils.media import MediaError, read_video_frames

        if video_mode not in ("clip", "official"):
            raise InputError(f"video_mode must be 'clip' or 'official', got {video_mode!r}")
        official = video_mode == "official"
        layout = layout or ("official_demo" if official else "train")
        questions = self._check_prompts(questions, "question")
        if len(videos) != len(questions):
            raise InputError(f"{len(videos)} videos for {len(questions)} questions")
        if num_frames < 1 or (not official and (num_frames - 1) % 4):
            raise InputError(f"num_frames must be 1 + 4k (e.g. 17) for video_mode='clip', got {num_frames}")
        res = resolution or self.resolution
        check_resolution(res)
        g = res // (VAE_STRIDE * PATCH)
        pool = ((g + 1) // 2, (g + 1) // 2) if official else None
        if official:
            info = VisualInfo.video(pool, num_frames, generate=False)
        else:
            info = self._visual(res, frames=num_frames, generate=False)
        seeds = self._seeds(seeds, len(questions))
        prompts = []
        for i, (v, q) in enumerate(zip(videos, questions)):
            if isinstance(v, np.ndarray):
                frames = v
                if frames.ndim != 4 or frames.shape[-1] != 3:
                    raise InputError(f"video {i}: expected uint8 (F, H, W, 3) frames, got {frames.shape}")
                frames = frames[np.linspace(0, len(frames) - 1, num_frames).astype(int)]
            else:
                try:
                    frames = read_video_frames(v, num_frames)
                except (MediaError, FileNotFoundError, OSError) as e:
                    raise InputError(f"cannot read video {v}: {e}") from e
            padded = np.stack([np.asarray(resize_and_pad(Image.fromarray(f), res)) for f in frames])
            px = frames_to_tensor(padded)                                  # (3, F, H, W)
            if official:  # F one-frame encodes, stacked on the time axis
                lat = self._encode_pixels(px.permute(1, 0, 2, 3), seeds[i]).permute(1, 0, 2, 3)
            else:
                lat = self._encode_pixels(px[None], seeds[i])[0]
            p = self._mmu_prompt(q, info, lat, layout, official_mask_offset)
            if official:
                p.mask_positions = p.mask_positions.clone()
                p.mask_positions[:, 1] = g * g + 1  # Q3: the demo's block length is that of one image
            prompts.append(p)
        return self._answer(prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p, batch_size=batch_size, seeds=seeds, visual_pool=pool)

    # ------------------------------------------------------------------ mixed modality
    @torch.no_grad()
    def mixed_modality(
        self,
        prompt: str = "Mixed-modality generation (VIST).",
        rounds: int = 4,
        *,
        max_new_tokens: int = 200,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        guidance_scale: float = 5.0,
        later_guidance_scale: float | None = None,
        num_steps: int = 50,
        sampler: str = "euler",
        history_t: float = 1.0,
        retokenize: bool = True,
        seed: int = 0,
        resolution: int | None = None,
    ) -> Story:
        """Interleaved story: text until ``<|vision_start|>``, an image in that slot, text again ...
        (``generation.interleaved``). ``history_t=0.0`` reproduces the official t = 0 for history images
        while writing text (Q14)."""
        (prompt,) = self._check_prompts([prompt])
        res = resolution or self.resolution
        if rounds < 1:
            raise InputError(f"rounds must be >= 1, got {rounds}")
        g = self._check_guidance(guidance_scale)
        if sampler not in SAMPLERS:
            raise InputError(f"unknown sampler {sampler!r} (choose from {sorted(SAMPLERS)})")
        h, w = self._latent_hw(res)
        return generate_interleaved(
            self.model, self.tokenizer, self.special, self.builder, prompt, visual=self._visual(res),
            decode_latents=self.decode_images, rounds=rounds, max_new_tokens=max_new_tokens,
            temperature=temperature, top_k=top_k, top_p=top_p, guidance_scale=g,
            later_guidance_scale=later_guidance_scale, num_steps=num_steps, shift=self.shift, sampler=sampler,
            history_t=history_t, retokenize=retokenize, seed=seed, noise_bf16_round=self.noise_bf16_round,
            cached=self.cached, latent_shape=(LATENT_C, h, w))
