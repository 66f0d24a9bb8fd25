"""lmms-eval plugin package: ``LMMS_EVAL_PLUGINS=evaluation.lmms_plugin`` makes ``--model showo2`` resolve
to ``evaluation.lmms_plugin.models.showo2.Showo2`` (= ``evaluation.lmms_eval_showo2.Showo2``)."""
