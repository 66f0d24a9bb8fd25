"""The parity fixture's tiny model, loaded through the official-key loading path (meta build + assign)."""
from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from models.checkpoints import build_empty, load_state_dict_into, materialize
from models.config import Showo2Config
from models.showo2 import Showo2Model

FIX = Path(__file__).parent / "fixtures" / "parity"


def load_parity_model(**overrides) -> Showo2Model:
    """A fresh fixture model in eval mode; `overrides` go to `Showo2Config.preset("tiny", ...)`."""
    m = build_empty(Showo2Config.preset("tiny", **overrides))
    load_state_dict_into(m, load_file(str(FIX / "weights.safetensors")), strict=True, assign=True)
    return materialize(m).eval()
