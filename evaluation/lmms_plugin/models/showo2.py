"""``showo2`` for lmms-eval's plugin loader; the implementation lives in ``evaluation.lmms_eval_showo2``."""

from evaluation.lmms_eval_showo2 import Showo2

__all__ = ["Showo2"]
