"""lmms-eval model plugin ``showo2``: multimodal-understanding benchmarks through ``Showo2Pipeline``.

lmms-eval is *not* a dependency. When it is importable the class subclasses ``lmms_eval.api.model.lmms``
and is registered as ``showo2`` (``register_model`` and, for versions that resolve models through
``lmms_eval.models.AVAILABLE_MODELS``, an entry there); otherwise a compatible standalone base is used
so tests (and other harnesses) can drive it with any objects that have ``.args``.

Request shapes (lmms-eval "simple" models):

* ``generate_until``:             ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``
* ``generate_until_multi_round``: ``(context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split)``;
  rounds after the first come from ``doc_to_text(doc, previous_output=..., round_idx=...,
  previous_round_info=...)`` returning ``(visuals, context, terminal, round_results, round_info)``
  (or just a string, ``None`` = stop); one tuple of per-round answers per request.
* ``loglikelihood``: not supported (the pipeline exposes generation only) -> NotImplementedError.

Visuals: PIL images go to ``pipe.understand`` (the first one when a document has several; counted and
warned), video paths (str) or frame arrays to ``pipe.understand_video``, none -> text-only. ``<image>``
placeholders in the context are removed (the pipeline inserts the visual block itself).

Run (from the repository root so ``evaluation`` is importable)::

    accelerate launch --num_processes 8 -m evaluation.lmms_eval_showo2 --model showo2 \\
        --model_args pretrained=CKPT,vae_path=Wan2.1_VAE.pth --tasks mme,gqa --batch_size 1
    # or lmms-eval's own entry point with its plugin mechanism:
    LMMS_EVAL_PLUGINS=evaluation.lmms_plugin accelerate launch -m lmms_eval --model showo2 ...
"""

from __future__ import annotations

import logging
import re
import sys
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger("showo2.lmms_eval")

try:  # optional: only when lmms-eval is installed
    from lmms_eval.api.model import lmms as _LMMBase  # type: ignore[import-not-found]
    from lmms_eval.api.registry import register_model as _register_model  # type: ignore[import-not-found]

    HAVE_LMMS_EVAL = True
except Exception:  # ImportError, or a broken optional install: fall back to the standalone base
    HAVE_LMMS_EVAL = False

    class _LMMBase:  # type: ignore[no-redef]
        """Minimal stand-in for ``lmms_eval.api.model.lmms`` (rank/world size, task_dict, cache hook)."""

        def __init__(self) -> None:
            self._rank = 0
            self._world_size = 1
            self.task_dict: dict[str, Any] = {}
            self.cache_hook = _NoCache()

        @property
        def rank(self) -> int:
            return self._rank

        @property
        def world_size(self) -> int:
            return self._world_size

        @classmethod
        def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> Any:
            args = dict(kv.split("=", 1) for kv in arg_string.split(",") if kv.strip())
            args.update({k: v for k, v in (additional_config or {}).items() if v is not None})
            return cls(**args)

    _register_model = None  # type: ignore[assignment]


class _NoCache:
    def add_partial(self, *args: Any, **kwargs: Any) -> None:
        pass


__all__ = ["Showo2", "HAVE_LMMS_EVAL", "strip_visual_tokens", "apply_until"]

_IMAGE_TAGS = re.compile(r"<image>\s*\n?|<video>\s*\n?")


def strip_visual_tokens(context: str) -> str:
    """Remove bare ``<image>``/``<video>`` placeholders (numbered ones like ``<image 1>`` stay: they are
    references inside the question text)."""
    return _IMAGE_TAGS.sub("", context).strip()


def apply_until(text: str, until: str | Sequence[str] | None) -> str:
    """Cut ``text`` at the first occurrence of any stop string."""
    if not until:
        return text.strip()
    stops = [until] if isinstance(until, str) else list(until)
    cut = len(text)
    for s in stops:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut].strip()


def _to_bool(v: Any) -> bool:
    return v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes", "y")


def _none_or(v: Any, typ: type) -> Any:
    return None if v is None or (isinstance(v, str) and v.lower() in ("", "none", "null")) else typ(v)


class Showo2(_LMMBase):
    """Show-o2 for lmms-eval. ``--model_args`` keys: ``pretrained`` (checkpoint), ``vae_path``,
    ``tokenizer_path``, ``device`` (auto), ``dtype`` (auto|float32|bfloat16|float16), ``batch_size``,
    ``max_new_tokens`` (default when a task gives none), ``num_frames`` (videos), ``layout`` (passed to
    ``pipe.understand``; default: the pipeline's), ``pipe`` (an already built pipeline object; tests)."""

    def __init__(self, pretrained: str = "", vae_path: str | None = None, tokenizer_path: str | None = None,
                 device: str = "auto", dtype: str = "auto", batch_size: int | str = 1,
                 max_new_tokens: int | str = 300, num_frames: int | str = 17, layout: str | None = None,
                 pipe: Any = None, **kwargs: Any) -> None:
        super().__init__()
        if kwargs:
            log.warning("showo2: ignoring unknown model_args %s", sorted(kwargs))
        self.pretrained = pretrained
        self.batch_size_per_gpu = int(batch_size)
        self.default_max_new_tokens = int(max_new_tokens)
        self.num_frames = int(num_frames)
        self.layout = _none_or(layout, str)
        self.extra_images_dropped = 0
        self._setup_distributed()
        if pipe is None:
            from evaluation.common import load_pipeline

            dev = device
            if device == "auto" and getattr(self, "_device", None) is not None:
                dev = str(self._device)
            pipe = load_pipeline(pretrained, _none_or(vae_path, str), _none_or(tokenizer_path, str), dev, dtype)
        self.pipe = pipe

    def _setup_distributed(self) -> None:
        """Under ``accelerate launch`` each process evaluates its share of requests (lmms-eval splits them
        by ``rank``/``world_size`` and synchronises through ``self.accelerator``)."""
        import os

        from evaluation.common import process_rank

        self._device = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import Accelerator

            self.accelerator = Accelerator()  # lmms-eval synchronises ranks through it
            self._rank, self._world_size = process_rank()
            self._device = self.accelerator.device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    # ---- helpers ------------------------------------------------------------------------------
    def _doc(self, task: str, split: str, doc_id: Any) -> Any:
        return self.task_dict[task][split][doc_id]

    def _split_visuals(self, visuals: Any) -> tuple[str, Any]:
        """('image', PIL) | ('video', path or frames) | ('text', None) for one document's visuals."""
        if visuals is None:
            return "text", None
        if not isinstance(visuals, (list, tuple)):
            visuals = [visuals]
        visuals = [v for v in visuals if v is not None]
        if not visuals:
            return "text", None
        first = visuals[0]
        if isinstance(first, str) or (isinstance(first, np.ndarray) and first.ndim == 4):
            return "video", first
        if isinstance(first, dict) and "path" in first:  # some tasks wrap media as {"path": ...}
            return "video", first["path"]
        if len(visuals) > 1:
            # Show-o2's understanding layout holds one visual block; keep the first and count the rest
            self.extra_images_dropped += len(visuals) - 1
            log.warning("showo2: document has %d images; using the first", len(visuals))
        if hasattr(first, "convert"):
            first = first.convert("RGB")
        return "image", first

    def _decode_kwargs(self, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
        do_sample = _to_bool(gen_kwargs.get("do_sample", False))
        temperature = float(gen_kwargs.get("temperature", 0.0) or 0.0)
        kw = {
            "max_new_tokens": int(gen_kwargs.get("max_new_tokens", self.default_max_new_tokens)),
            "temperature": temperature if do_sample or temperature > 0 else 0.0,
        }
        if gen_kwargs.get("top_p") is not None and do_sample:
            kw["top_p"] = float(gen_kwargs["top_p"])
        if gen_kwargs.get("top_k") is not None and do_sample:
            kw["top_k"] = int(gen_kwargs["top_k"])
        return kw

    def _answer(self, kind: str, visuals: list[Any], questions: list[str], gen_kwargs: dict[str, Any]) -> list[str]:
        """One batched pipeline call for items of the same kind and generation settings."""
        kw = self._decode_kwargs(gen_kwargs)
        extra = {"layout": self.layout} if self.layout else {}
        if kind == "video":
            outs = self.pipe.understand_video(visuals, questions, num_frames=self.num_frames,
                                              batch_size=self.batch_size_per_gpu, **kw, **extra)
        else:
            ims = visuals if kind == "image" else [None] * len(questions)
            outs = self.pipe.understand(ims, questions, batch_size=self.batch_size_per_gpu, **kw, **extra)
        return [apply_until(o, gen_kwargs.get("until")) for o in outs]

    # ---- lmms-eval API ------------------------------------------------------------------------
    def generate_until(self, requests: list[Any]) -> list[str]:
        """Greedy (by default) answers, batched by visual kind and generation settings, in request order."""
        items = []
        for i, req in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            kind, vis = self._split_visuals(doc_to_visual(self._doc(task, split, doc_id)))
            items.append((i, kind, vis, strip_visual_tokens(context), dict(gen_kwargs or {})))
        groups: dict[tuple, list] = defaultdict(list)
        for it in items:
            g = it[4]
            key = (it[1], repr(sorted((k, str(v)) for k, v in g.items())))
            groups[key].append(it)
        out: list[str | None] = [None] * len(requests)
        for (kind, _), group in groups.items():
            bs = max(1, self.batch_size_per_gpu)
            for s in range(0, len(group), bs):
                chunk = group[s:s + bs]
                answers = self._answer(kind, [c[2] for c in chunk], [c[3] for c in chunk], chunk[0][4])
                for c, a in zip(chunk, answers):
                    out[c[0]] = a
                    self.cache_hook.add_partial("generate_until", (c[3], c[4]), a)
        return [o if o is not None else "" for o in out]

    def generate_until_multi_round(self, requests: list[Any]) -> list[tuple[str, ...]]:
        """Multi-round dialogue per document; each round's context comes from the task's ``doc_to_text``
        (it carries whatever history the task wants the model to see)."""
        results = []
        for req in requests:
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = req.args
            doc = self._doc(task, split, doc_id)
            gen_kwargs = dict(gen_kwargs or {})
            kind, vis = self._split_visuals(doc_to_visual(doc))
            outputs: list[str] = []
            info = None
            round_idx = 0
            while True:
                if round_idx > 0:
                    step = self._next_round(doc_to_text, doc, outputs, round_idx, info)
                    if step is None:
                        break
                    visuals, context, terminal, round_results, info = step
                    if round_results is not None:
                        outputs = [str(r) for r in round_results]
                    if terminal:
                        break
                    if visuals is not None:
                        kind, vis = self._split_visuals(visuals)
                answer = self._answer(kind, [vis], [strip_visual_tokens(context)], gen_kwargs)[0]
                outputs.append(answer)
                round_idx += 1
            results.append(tuple(outputs))
            self.cache_hook.add_partial("generate_until_multi_round", (context, gen_kwargs), tuple(outputs))
        return results

    @staticmethod
    def _next_round(doc_to_text: Any, doc: Any, outputs: list[str], round_idx: int, info: Any) -> tuple | None:
        try:
            ret = doc_to_text(doc, previous_output=list(outputs), round_idx=round_idx, previous_round_info=info)
        except TypeError:  # tasks whose doc_to_text takes no previous_round_info
            ret = doc_to_text(doc, previous_output=list(outputs), round_idx=round_idx)
        if ret is None:
            return None
        if isinstance(ret, str):
            return None, ret, False, None, info
        ret = tuple(ret)
        if len(ret) == 5:
            return ret
        if len(ret) == 3:  # (visuals, context, terminal)
            return ret[0], ret[1], ret[2], None, info
        raise ValueError(f"doc_to_text returned {len(ret)} values; expected 5 (visuals, context, terminal, "
                         "round_results, round_info), 3, a string or None")

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            "showo2: loglikelihood is not supported (Showo2Pipeline exposes generation only); use tasks with "
            "output_type generate_until (mme, gqa, seedbench, mmbench, mmmu_val, mmstar, ai2d, ...)")


def _register() -> None:
    """Register ``showo2`` with lmms-eval: its ``register_model`` registry, and ``AVAILABLE_MODELS`` for
    versions that resolve ``--model`` through that table (a dotted class path is accepted there)."""
    if not HAVE_LMMS_EVAL or __name__ == "__main__":  # run as a script, main() imports the real module
        return
    try:
        _register_model("showo2")(Showo2)
    except Exception as e:  # already registered (module imported twice under another name)
        log.debug("showo2: register_model skipped (%s)", e)
    try:
        import lmms_eval.models as models  # type: ignore[import-not-found]

        table = getattr(models, "AVAILABLE_MODELS", None)
        if isinstance(table, dict):
            table.setdefault("showo2", f"{__name__}.Showo2")
    except Exception as e:  # registry via the decorator may still work
        log.debug("showo2: AVAILABLE_MODELS not updated (%s)", e)


_register()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m evaluation.lmms_eval_showo2 <lmms-eval CLI args>``: lmms-eval's CLI with ``showo2`` registered."""
    if not HAVE_LMMS_EVAL:
        raise SystemExit("lmms-eval is not installed: pip install lmms-eval (it is not a dependency of this repo)")
    from lmms_eval.__main__ import cli_evaluate  # type: ignore[import-not-found]

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    from evaluation.lmms_eval_showo2 import main as _main  # registers under the importable module name

    _main()
