"""Show-o2 model configuration.

`Showo2Config` carries the official constructor fields (same names as the released `config.json`) plus
the backbone configs embedded as plain dicts, so that building the model never needs a Hub download.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

# ---------------------------------------------------------------------------------------------------------
# Embedded backbone configs (public Qwen2.5 / SigLIP-so400m configs, Show-o2 flow-head defaults).

_QWEN25_COMMON: dict[str, Any] = {
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_scaling": None,
    "use_sliding_window": False,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
}

QWEN25_1_5B: dict[str, Any] = {
    **_QWEN25_COMMON,
    "vocab_size": 151936,
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,
}

QWEN25_7B: dict[str, Any] = {
    **_QWEN25_COMMON,
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "tie_word_embeddings": False,
}

SIGLIP_SO400M_384: dict[str, Any] = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,  # the last layer is dropped when building `und_trans`
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 384,
    "patch_size": 14,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
    "attention_dropout": 0.0,
}

LLAMA3_ROPE_SCALING: dict[str, Any] = {
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}

FLOW_HEAD_DEFAULT: dict[str, Any] = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,  # block norms; q/k-norm and the final norm use 1e-6 (spec Q7)
    "qk_norm_eps": 1e-6,
    "final_norm_eps": 1e-6,
    "rope_theta": 500000.0,
    "rope_scaling": LLAMA3_ROPE_SCALING,
    "max_position_embeddings": 131072,
    "attention_bias": False,
    "mlp_bias": False,
    "attention_dropout": 0.0,
    "qk_norm": True,
    "attn_implementation": "sdpa",
    "timestep_frequency_dim": 256,
}

# Official config.json fields (constructor arguments recorded by diffusers' ConfigMixin).
OFFICIAL_FIELDS = (
    "llm_vocab_size", "llm_model_path", "load_from_showo", "image_latent_dim", "image_latent_height",
    "image_latent_width", "video_latent_height", "video_latent_width", "patch_size", "hidden_size",
    "clip_latent_dim", "num_diffusion_layers", "add_time_embeds", "add_qk_norm", "clip_pretrained_model_path",
)
# Keys that may appear in a released config.json or an official yaml `model` section but change nothing.
OFFICIAL_IGNORED_KEYS = frozenset({
    "_class_name", "_diffusers_version", "_name_or_path", "_use_default_values", "model_name",
    "pretrained_model_path", "num_und_trans_layers", "num_refiner_layers", "clip", "frozen_params",
    "torch_dtype", "dtype",
})

_QWEN_BY_PATH = {
    "Qwen/Qwen2.5-1.5B-Instruct": QWEN25_1_5B,
    "Qwen/Qwen2.5-7B-Instruct": QWEN25_7B,
}


@dataclass
class Showo2Config:
    """All sizes needed to build `Showo2Model` offline.

    Official fields keep their released names. `qwen2` is the *original* Qwen2 config (its `vocab_size` is the
    pre-resize row count; the model is built with `llm_vocab_size` rows). `siglip` is the SigLIP vision config
    (its last layer is dropped). `flow_head` is the flow-head (DiffusionHeadConfig) setting.
    """

    # official fields
    llm_vocab_size: int = 151669
    llm_model_path: str = "Qwen/Qwen2.5-1.5B-Instruct"
    load_from_showo: bool = True
    image_latent_dim: int = 16
    image_latent_height: int = 27
    image_latent_width: int = 27
    video_latent_height: int = 27
    video_latent_width: int = 27
    patch_size: int = 2
    hidden_size: int = 1536
    clip_latent_dim: int = 1152
    num_diffusion_layers: int = 10
    add_time_embeds: bool = True
    add_qk_norm: bool = True
    clip_pretrained_model_path: str = "google/siglip-so400m-patch14-384"
    # embedded sub-configs
    qwen2: dict = field(default_factory=lambda: copy.deepcopy(QWEN25_1_5B))
    siglip: dict = field(default_factory=lambda: copy.deepcopy(SIGLIP_SO400M_384))
    flow_head: dict = field(default_factory=lambda: copy.deepcopy(FLOW_HEAD_DEFAULT))
    # project fields
    timestep_scale: float = 1.0         # t multiplier before the sinusoids (official raw t = 1, quirk Q10)
    rope_bf16_parity: bool = False      # spec Q1: bf16-rounded RoPE frequencies when the model runs in bf16
    bos_overwrite_quirk: bool = False   # spec Q9: (0, 0) slots write their time token into position 0
    gradient_checkpointing: bool = False
    attn_implementation: str = "sdpa"   # LLM / SigLIP attention backend (bool omni masks need sdpa)

    def __post_init__(self) -> None:
        self.validate()

    # -------------------------------------------------------------------------------------------------
    def validate(self) -> None:
        if not self.add_time_embeds:
            raise ValueError("add_time_embeds=False is not supported (no official checkpoint uses it)")
        if self.qwen2["hidden_size"] != self.hidden_size:
            raise ValueError(f"hidden_size {self.hidden_size} != qwen2.hidden_size {self.qwen2['hidden_size']}")
        if self.siglip["hidden_size"] != self.clip_latent_dim:
            raise ValueError(f"clip_latent_dim {self.clip_latent_dim} != siglip.hidden_size "
                             f"{self.siglip['hidden_size']}")
        if self.siglip["num_hidden_layers"] < 2:
            raise ValueError("siglip.num_hidden_layers must be >= 2 (the last layer is dropped)")
        if self.attn_implementation not in ("sdpa",):
            raise ValueError("only attn_implementation='sdpa' is supported (bool omni masks)")

    @property
    def num_semantic_layers(self) -> int:
        return int(self.siglip["num_hidden_layers"]) - 1

    @property
    def num_positions(self) -> int:
        """Rows of the SigLIP position table ((image_size / patch_size) ** 2)."""
        return (int(self.siglip["image_size"]) // int(self.siglip["patch_size"])) ** 2

    @property
    def flow_hidden_size(self) -> int:
        return int(self.flow_head["hidden_size"])

    @property
    def patch_dim(self) -> int:
        """Velocity values per token (p * p * C)."""
        return self.patch_size * self.patch_size * self.image_latent_dim

    # -------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return copy.deepcopy(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> Showo2Config:
        """Build from the project's own dict (as written by `to_dict` / `save_pretrained`).

        A dict without sub-configs but with official fields (a released config.json) is routed to
        `from_official`. Unknown keys raise.
        """
        d = dict(d)
        if "qwen2" not in d or "_class_name" in d:
            return cls.from_official(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in d if k not in names and k not in OFFICIAL_IGNORED_KEYS)
        if unknown:
            raise ValueError(f"unknown Showo2Config keys: {unknown}")
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_official(cls, d: dict, **overrides: Any) -> Showo2Config:
        """Build from a released `config.json` (diffusers ConfigMixin format) or an official yaml `model` dict.

        Backbone configs are chosen from `llm_model_path` (Qwen2.5-1.5B / 7B-Instruct); an unknown path must
        come with an explicit `qwen2=` override.
        """
        d = dict(d)
        cls_name = d.get("_class_name")
        if cls_name is not None and cls_name != "Showo2Qwen2_5":
            raise ValueError(f"unsupported _class_name {cls_name!r} (expected 'Showo2Qwen2_5')")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in d if k not in names and k not in OFFICIAL_IGNORED_KEYS)
        if unknown:
            raise ValueError(f"unknown keys in Show-o2 config: {unknown}")
        kwargs = {k: v for k, v in d.items() if k in names}
        kwargs.update(overrides)
        if "qwen2" not in kwargs:
            path = kwargs.get("llm_model_path", cls.llm_model_path)
            if path not in _QWEN_BY_PATH:
                raise ValueError(f"no embedded Qwen2 config for llm_model_path={path!r}; pass qwen2=...")
            kwargs["qwen2"] = copy.deepcopy(_QWEN_BY_PATH[path])
        return cls(**kwargs)

    def to_official_dict(self, include_subconfigs: bool | None = None) -> dict:
        """The released config.json content (diffusers ConfigMixin format).

        Sub-configs are added (extra keys the official loader ignores) when `llm_model_path` names no embedded
        Qwen config, e.g. tiny / demo models, so such folders stay loadable offline. None = automatic.
        """
        out: dict[str, Any] = {"_class_name": "Showo2Qwen2_5", "_diffusers_version": "0.31.0"}
        out.update({k: getattr(self, k) for k in OFFICIAL_FIELDS})
        if include_subconfigs is None:
            include_subconfigs = _QWEN_BY_PATH.get(self.llm_model_path) != self.qwen2 or \
                self.siglip != SIGLIP_SO400M_384 or self.flow_head != FLOW_HEAD_DEFAULT
        if include_subconfigs:
            out.update(qwen2=copy.deepcopy(self.qwen2), siglip=copy.deepcopy(self.siglip),
                       flow_head=copy.deepcopy(self.flow_head))
        if self.timestep_scale != 1.0:  # a from-scratch model's choice; the official loader ignores the key
            out["timestep_scale"] = self.timestep_scale
        return out

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> Showo2Config:
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def to_json_file(self, path: str | os.PathLike, official: bool = False) -> None:
        with open(path, "w") as f:
            json.dump(self.to_official_dict() if official else self.to_dict(), f, indent=2, sort_keys=False)

    # -------------------------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Showo2Config:
        """Named configurations: showo2-1.5b, showo2-1.5b-hq, showo2-7b, tiny (parity fixture), demo.

        A sub-config override (``qwen2``, ``siglip``, ``flow_head``) is merged key by key into the
        preset's, so ``qwen2={"rope_theta": 1e4}`` changes one field instead of replacing the dict.
        """
        if name not in _PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(_PRESETS)}")
        kwargs = copy.deepcopy(_PRESETS[name])
        for key, value in overrides.items():
            base = kwargs.get(key)
            if key in _SUBCONFIGS and isinstance(value, dict) and isinstance(base, dict):
                unknown = sorted(set(value) - set(base) - _hf_config_keys(key))
                if unknown:
                    raise ValueError(f"preset {name!r}: unknown {key} keys {unknown}; known: {sorted(base)}")
                base.update(copy.deepcopy(value))
            else:
                kwargs[key] = copy.deepcopy(value)
        return cls(**kwargs)


_SUBCONFIGS = ("qwen2", "siglip", "flow_head")


def _hf_config_keys(sub: str) -> set[str]:
    """Fields the transformers config behind a sub-config accepts (none for our own flow head)."""
    if sub == "qwen2":
        from transformers import Qwen2Config

        return set(Qwen2Config().to_dict())
    if sub == "siglip":
        from transformers import SiglipVisionConfig

        return set(SiglipVisionConfig().to_dict())
    return set()


_PRESETS: dict[str, dict[str, Any]] = {
    "showo2-1.5b": dict(llm_model_path="Qwen/Qwen2.5-1.5B-Instruct", hidden_size=1536, qwen2=QWEN25_1_5B),
    # HQ: any grid other than 27x27 switches on position-table interpolation; 64 = the 1024px demo yaml
    "showo2-1.5b-hq": dict(llm_model_path="Qwen/Qwen2.5-1.5B-Instruct", hidden_size=1536, qwen2=QWEN25_1_5B,
                           image_latent_height=64, image_latent_width=64),
    "showo2-7b": dict(llm_model_path="Qwen/Qwen2.5-7B-Instruct", hidden_size=3584, qwen2=QWEN25_7B),
    # exactly the parity fixture (tests/fixtures/parity/fixture.json["model"])
    "tiny": dict(
        llm_vocab_size=512, llm_model_path="unused", load_from_showo=False,
        image_latent_height=4, image_latent_width=4, video_latent_height=4, video_latent_width=4,
        hidden_size=48, clip_latent_dim=32, num_diffusion_layers=2, clip_pretrained_model_path="unused",
        qwen2=dict(vocab_size=544, hidden_size=48, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, hidden_act="silu", max_position_embeddings=4096,
                   rms_norm_eps=1e-6, rope_theta=1000000.0, rope_scaling=None, tie_word_embeddings=True,
                   use_sliding_window=False, attention_dropout=0.0, initializer_range=0.3),
        siglip=dict(hidden_size=32, intermediate_size=80, num_hidden_layers=3, num_attention_heads=2,
                    num_channels=3, image_size=16, patch_size=4, hidden_act="gelu_pytorch_tanh",
                    layer_norm_eps=1e-6, attention_dropout=0.0),
        flow_head={**FLOW_HEAD_DEFAULT, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "head_dim": 16},
    ),
    # small CPU-trainable model; 64px images -> 8x8 latents -> 4x4 tokens; pass llm_vocab_size for your tokenizer
    "demo": dict(
        llm_vocab_size=1024, llm_model_path="local-demo", load_from_showo=False,
        image_latent_height=4, image_latent_width=4, video_latent_height=4, video_latent_width=4,
        hidden_size=128, clip_latent_dim=64, num_diffusion_layers=2, clip_pretrained_model_path="local-demo",
        qwen2=dict(vocab_size=1024, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2, hidden_act="silu", max_position_embeddings=4096,
                   rms_norm_eps=1e-6, rope_theta=1000000.0, rope_scaling=None, tie_word_embeddings=True,
                   use_sliding_window=False, attention_dropout=0.0, initializer_range=0.02),
        siglip=dict(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=2,
                    num_channels=3, image_size=16, patch_size=4, hidden_act="gelu_pytorch_tanh",
                    layer_norm_eps=1e-6, attention_dropout=0.0),
        flow_head={**FLOW_HEAD_DEFAULT, "hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "head_dim": 32},
    ),
}
