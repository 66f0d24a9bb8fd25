"""Generated in-memory training data for smoke runs and tests (``data.source: synthetic``).

Every item is a pure function of ``(seed, rank, index)``, so the "loader position" is one integer and
resume is exact by construction. Images are learnable: a background colour and a centred square colour,
named by two caption words (ids from the plain-text range). Rows are laid out with the one sequence
builder (``datasets.sequence``) used by the real loaders, so the loop sees exactly the real batch format:
``collate`` keys + ``pixels`` (one per visual item, slot (i, j) -> item i*M + j, dummies for padding
slots) + ``t_min`` (1 for clean/understanding/dummy items).

Tasks per step (``data.synthetic.tasks``: list of ``{task, batch_size}``, all concatenated into one
micro-batch like the official ``concat_max_size_cycle`` mode): ``t2i``, ``caption``, ``t2v``, ``i2v``,
``mmu_vid`` (video captioning), ``interleaved``. Batches mixing images and videos are not possible
(pixels must stack), so video configs use video tasks only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from datasets.sequence import SequenceBuilder, VisualInfo, collate
from datasets.tokenizer import QWEN_ADDED_TOKENS, SpecialTokens

__all__ = ["synthetic_special_tokens", "SyntheticSource"]

_COLORS = torch.tensor(
    [[1, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1], [1, -1, 1], [-1, 1, 1], [1, 1, 1], [-1, -1, -1]],
    dtype=torch.float32,
)


def synthetic_special_tokens(vocab_size: int) -> SpecialTokens:
    """The demo-tokenizer id layout (plain ids, then Qwen added tokens, then the 4 Show-o2 tokens)."""
    n_plain = vocab_size - len(QWEN_ADDED_TOKENS) - 4
    if n_plain < 16:
        raise ValueError(f"vocab_size {vocab_size} too small for synthetic data")
    names = [s for s, _ in QWEN_ADDED_TOKENS] + ["[PAD]", "<image>", "<|vid_start|>", "<|vid_end|>"]
    ids = {s: n_plain + i for i, s in enumerate(names)}
    return SpecialTokens(
        bos=ids["<|im_start|>"], eos=ids["<|im_end|>"], boi=ids["<|vision_start|>"], eoi=ids["<|vision_end|>"],
        img_pad=ids["<|image_pad|>"], vid_pad=ids["<|video_pad|>"], pad=ids["[PAD]"], img=ids["<image>"],
        bov=ids["<|vid_start|>"], eov=ids["<|vid_end|>"], vocab_size=vocab_size,
    )


class SyntheticSource:
    """Infinite iterator of batches; ``state_dict()``/``load_state_dict()`` = the batch index."""

    def __init__(self, cfg: Mapping[str, Any], *, vocab_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.cfg = dict(cfg)
        self.res = int(self.cfg.get("resolution", 32))
        self.frames = int(self.cfg.get("num_frames", 5))
        self.max_seq_len = int(self.cfg.get("max_seq_len", 128))
        self.cond_dropout = float(self.cfg.get("cond_dropout_prob", 0.1))
        self.tasks = [dict(t) for t in self.cfg.get("tasks", [{"task": "t2i", "batch_size": 2}])]
        self.sp = synthetic_special_tokens(vocab_size)
        self.builder = SequenceBuilder(self.sp, max_seq_len=self.max_seq_len)
        self.seed, self.rank, self.world = int(seed), int(rank), int(world_size)
        self.index = 0
        self.n_plain = self.sp.bos - 1
        self.stats: dict[str, int] = {}

    # -- resumable position -------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        return {"index": self.index, "rank": self.rank}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.index = int(state["index"])

    def __iter__(self):
        return self

    # -- items ----------------------------------------------------------------------------------
    def _image(self, g: torch.Generator, shift: int = 0) -> tuple[torch.Tensor, list[int]]:
        bg, fg = torch.randint(0, len(_COLORS), (2,), generator=g).tolist()
        img = _COLORS[bg].view(3, 1, 1).repeat(1, self.res, self.res)
        q = self.res // 4
        lo = max(0, min(self.res - 2 * q, q + shift))
        img[:, q : 3 * q, lo : lo + 2 * q] = _COLORS[fg].view(3, 1, 1)
        return img, [1 + bg, 1 + len(_COLORS) + fg]

    def _video(self, g: torch.Generator) -> tuple[torch.Tensor, list[int]]:
        step = int(torch.randint(-1, 2, (1,), generator=g))
        frames, cap = [], None
        state = g.get_state()
        for f in range(self.frames):
            g.set_state(state)  # same colours every frame, the square moves
            img, cap = self._image(g, shift=step * f)
            frames.append(img)
        return torch.stack(frames, dim=1), cap + [40 + step]

    def __next__(self) -> dict[str, Any]:
        g = torch.Generator().manual_seed(hash((self.seed, self.rank, self.index)) & 0x7FFF_FFFF)
        self.index += 1
        rows, pixels = [], []
        grid = (self.res // 16, self.res // 16)
        for spec in self.tasks:
            task = spec["task"]
            for _ in range(int(spec["batch_size"])):
                if task in ("t2i", "caption"):
                    px, cap = self._image(g)
                    if task == "t2i":
                        drop = float(torch.rand((), generator=g)) < self.cond_dropout  # CFG dropout
                        rows.append(self.builder.t2i([] if drop else cap, VisualInfo.image(grid)))
                    else:
                        rows.append(self.builder.caption(cap, VisualInfo.image(grid, generate=False)))
                    pixels.append([px])
                elif task in ("t2v", "i2v", "mmu_vid"):
                    px, cap = self._video(g)
                    lf = 1 + (self.frames - 1) // 4
                    if task == "t2v":
                        rows.append(self.builder.t2v(cap, VisualInfo.video(grid, lf)))
                    elif task == "i2v":
                        rows.append(self.builder.i2v(cap, VisualInfo.video(grid, lf), cond_frames=1))
                    else:  # video captioning: clean video, NTP on the caption
                        rows.append(self.builder.caption(cap, VisualInfo.video(grid, lf, generate=False)))
                    pixels.append([px])
                elif task == "interleaved":
                    n = int(torch.randint(1, int(spec.get("max_images", 3)) + 1, (1,), generator=g))
                    ims, caps = zip(*[self._image(g) for _ in range(n)])
                    rows.append(self.builder.interleaved(list(caps), [VisualInfo.image(grid)] * n, flag=[2, 3]))
                    pixels.append(list(ims))
                else:
                    raise ValueError(f"unknown synthetic task {task!r}")
        batch = collate(rows, self.sp.pad, pad_to=self.max_seq_len)
        m = batch["modality_positions"].shape[1]
        items, t_min = [], []
        dummy = torch.zeros_like(pixels[0][0])
        for row, px in zip(rows, pixels):
            for j in range(m):
                if j < len(px):
                    items.append(px[j])
                    t_min.append(0.0 if row.visuals[j].generate else 1.0)
                else:
                    items.append(dummy)
                    t_min.append(1.0)
        batch["pixels"] = torch.stack(items)
        batch["t_min"] = torch.tensor(t_min)
        return batch
