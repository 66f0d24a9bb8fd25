"""Model table read by lmms-eval's ``LMMS_EVAL_PLUGINS`` loader: ``{model name: class name in models/<name>.py}``."""

AVAILABLE_MODELS = {"showo2": "Showo2"}
