"""Mixed-modality (interleaved text + image) generation, e.g. VIST-style stories.

Round k (reference §2.4, with the fixes of quirks Q15-Q18):

1. Text. The history ``[bos] flag cap_1 block_1 ... cap_k block_k`` (laid out by
   ``SequenceBuilder.interleaved``; history images are clean context) is prefilled once and the model
   writes text (KV-cached) until it emits ``<|vision_start|>`` (an image follows), ``<|im_end|>``
   (story over) or runs out of tokens. History images get ``t = history_t``: 1.0 (clean, the
   training convention) by default; ``history_t=0.0`` reproduces the official ``mm_generate`` (Q14).
2. Image. If the text ended with ``<|vision_start|>``, the new caption is appended and the image is
   generated in the new slot by prefix-cached flow sampling (``generation.image``): the whole history
   up to the new ``<|vision_start|>`` is cached once; history images are clean context with t = 1;
   CFG against the canonical unconditional row ``[bos] [boi] block`` (Q16). The guidance scale is the
   same in every round unless ``later_guidance_scale`` is given (official: 5.0 after round 0, Q15).
3. Stop after ``<|im_end|>`` or ``rounds`` rounds (Q18: the official always runs 4 rounds).

``retokenize=True`` (default, as officially, Q17) re-encodes the decoded caption text, so the
conditioning ids are canonical tokenizations; ``False`` keeps the sampled ids.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from datasets.sequence import SequenceBuilder, VisualInfo
from datasets.tokenizer import SpecialTokens
from flow.samplers import make_noise
from generation.image import VisualRow, generate_visual
from generation.text import TextPrompt, generate_text

__all__ = ["Story", "generate_interleaved"]


@dataclass
class Story:
    """A generated story: ordered segments ``("text", str)`` / ``("image", PIL.Image)``."""

    prompt: str
    segments: list[tuple[str, Any]] = field(default_factory=list)
    finished: bool = False          # the model closed the story with <|im_end|>
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def texts(self) -> list[str]:
        return [s for k, s in self.segments if k == "text"]

    @property
    def images(self) -> list[Image.Image]:
        return [s for k, s in self.segments if k == "image"]

    def to_markdown(self, image_names: list[str]) -> str:
        out, i = [f"# {self.prompt}", ""], 0
        for kind, item in self.segments:
            if kind == "text":
                out += [item.strip(), ""]
            else:
                out += [f"![image {i + 1}]({image_names[i]})", ""]
                i += 1
        return "\n".join(out)

    def to_html(self, image_names: list[str]) -> str:
        body, i = [f"<h1>{html.escape(self.prompt)}</h1>"], 0
        for kind, item in self.segments:
            if kind == "text":
                body.append(f"<p>{html.escape(item.strip())}</p>")
            else:
                body.append(f'<img src="{html.escape(image_names[i])}" alt="image {i + 1}">')
                i += 1
        return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>story</title></head>\n<body>\n"
                + "\n".join(body) + "\n</body></html>\n")

    def save(self, out_dir: str | Path, stem: str = "story") -> dict[str, Path]:
        """Write ``<stem>_image<i>.png``, ``<stem>.md``, ``<stem>.html`` and ``<stem>.json``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        names = []
        for i, img in enumerate(self.images):
            name = f"{stem}_image{i}.png"
            img.save(out / name)
            names.append(name)
        paths = {"markdown": out / f"{stem}.md", "html": out / f"{stem}.html", "json": out / f"{stem}.json"}
        paths["markdown"].write_text(self.to_markdown(names))
        paths["html"].write_text(self.to_html(names))
        record = {"prompt": self.prompt, "finished": self.finished, "settings": self.settings,
                  "segments": [{"text": s} if k == "text" else {"image": names[j]}
                               for j, (k, s) in zip(_image_counter(self.segments), self.segments)]}
        paths["json"].write_text(json.dumps(record, indent=2))
        return paths


def _image_counter(segments: list[tuple[str, Any]]) -> list[int]:
    out, i = [], 0
    for kind, _ in segments:
        out.append(i)
        if kind == "image":
            i += 1
    return out


def _history_ids(builder: SequenceBuilder, flag: list[int], captions: list[list[int]],
                 visual: VisualInfo, special: SpecialTokens) -> tuple[torch.Tensor, torch.Tensor]:
    """The story so far as a prompt to continue: the interleaved layout without its closing ``<|im_end|>``.

    TODO(data API): a ``SequenceBuilder.interleaved_prompt`` would avoid trimming the closing token here.
    """
    if captions:
        s = builder.interleaved(captions, [visual] * len(captions), flag=flag or None, pad_to=None)
    else:
        s = builder.text(flag, pad_to=None)
    n = s.unpadded_len or len(s)
    ids = s.input_ids[:n]
    if int(ids[-1]) != special.eos:
        raise RuntimeError("unexpected interleaved layout: the row does not end with <|im_end|>")
    return ids[:-1], s.modality_positions


@torch.no_grad()
def generate_interleaved(
    model: torch.nn.Module,
    tokenizer: Any,
    special: SpecialTokens,
    builder: SequenceBuilder,
    prompt: str,
    *,
    visual: VisualInfo,
    decode_latents: Callable[[torch.Tensor], list[Image.Image]],
    rounds: int = 4,
    max_new_tokens: int = 200,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    guidance_scale: float = 5.0,
    later_guidance_scale: float | None = None,
    num_steps: int = 50,
    shift: float = 3.0,
    sampler: str = "euler",
    history_t: float = 1.0,
    retokenize: bool = True,
    seed: int = 0,
    noise_bf16_round: bool = False,
    cached: bool = True,
    latent_shape: tuple[int, ...],
) -> Story:
    """Generate one story from ``prompt`` (the task flag, e.g. "Mixed-modality generation (VIST).")."""
    flag = builder.ids(prompt)
    captions: list[list[int]] = []
    latents: list[torch.Tensor] = []
    story = Story(prompt=prompt)
    text_seed = seed
    for r in range(rounds):
        ids, blocks = _history_ids(builder, flag, captions, visual, special)
        tp = TextPrompt(ids, blocks if latents else None, None, list(latents), [history_t] * len(latents))
        res = generate_text(model, [tp], pad_id=special.pad, max_new_tokens=max_new_tokens,
                            temperature=temperature, top_k=top_k, top_p=top_p,
                            stop_ids=(special.boi, special.eos), seeds=[text_seed + r])
        new = res.tokens[0]
        text = tokenizer.decode(new, skip_special_tokens=True) if new else ""
        ended_with = res.stop_tokens[0]
        if text.strip():
            story.segments.append(("text", text))
        if ended_with != special.boi:
            story.finished = ended_with == special.eos
            break
        cap = builder.ids(text) if retokenize else new
        captions.append(cap)
        s = builder.interleaved(captions, [visual] * len(captions), flag=flag or None, pad_to=None)
        cond = [VisualRow(s.input_ids, s.modality_positions, list(latents), [1.0] * len(latents))]
        u = builder.t2i(None, visual, pad_to=None)
        unc = [VisualRow(u.input_ids, u.modality_positions)]
        g = guidance_scale if (r == 0 or later_guidance_scale is None) else later_guidance_scale
        noise = make_noise((1, *latent_shape), seeds=[seed * 1000 + r], noise_bf16_round=noise_bf16_round)
        lat = generate_visual(model, cond, unc, noise, guidance_scale=g, num_steps=num_steps, shift=shift,
                              sampler=sampler, pad_id=special.pad, cached=cached)
        latents.append(lat[0].cpu())
        story.segments.append(("image", decode_latents(lat)[0]))
    story.settings = dict(rounds=rounds, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                          top_p=top_p, guidance_scale=guidance_scale, later_guidance_scale=later_guidance_scale,
                          num_steps=num_steps, shift=shift, sampler=sampler, history_t=history_t,
                          retokenize=retokenize, seed=seed)
    return story
