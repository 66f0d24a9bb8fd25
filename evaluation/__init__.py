"""Evaluation: GenEval / DPG-Bench samplers, the lmms-eval plugin, and the shapes mini-benchmark.

Modules: ``evaluation.geneval``, ``evaluation.dpg``, ``evaluation.lmms_eval_showo2``,
``evaluation.shapes_bench``, ``evaluation.common`` (sharding, seeds, layouts). See README.md here.
"""
