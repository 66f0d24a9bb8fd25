"""The speed/memory harness: utilities, and benchmarks/run.py end to end on the tiny preset."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.common import Timing, fmt_bytes, fmt_num, measure_peak_memory, time_fn


def test_time_fn_counts_repeats_and_excludes_warmup():
    calls = []
    t = time_fn(lambda: calls.append(1), "cpu", repeats=3, warmup=2)
    assert len(calls) == 5 and len(t.samples) == 3 and len(t.cpu_samples) == 3
    assert t.median >= 0 and Timing([1.0, 3.0, 2.0]).median == 2.0


def test_peak_memory_sees_a_transient_allocation():
    with measure_peak_memory("cpu") as mem:
        x = torch.ones(64 * 1024 * 1024 // 4 * 3)  # 192 MiB, touched
        del x
    assert mem.peak_bytes > 0 and mem.method
    assert mem.delta_bytes > 120 * 1024 * 1024, mem.to_dict()


def test_formatters():
    assert fmt_bytes(3 * 1024**3) == "3.0 GiB"
    assert fmt_num(1.5e12, "FLOP/s") == "1.5 TFLOP/s"


def _run(tmp_path, *extra):
    from benchmarks.run import DEFAULTS, format_table, run
    from utils.config import load_config

    out = tmp_path / "res.json"
    cfg = load_config(["preset=tiny", "repeats=1", "warmup=0", "threads=1", f"output={out}", *extra],
                      default_config=DEFAULTS)
    old = torch.get_num_threads()
    try:
        res = run(cfg)
    finally:
        torch.set_num_threads(old)
    table = format_table(res)
    data = json.loads(out.read_text())
    return res, data, table


def test_harness_train_and_decode_sections_on_tiny(tmp_path):
    res, data, table = _run(tmp_path, "sections=matmul,train,decode", "matmul_sizes=256",
                            "workload.decode_new_tokens=4")
    assert not data["errors"], data["errors"]
    tr = data["sections"]["train"]["loop"]
    assert tr["time"]["median_s"] > 0 and tr["tokens"] == 2 * 48
    assert tr["flops"]["total"] > 0 and tr["achieved_flops_per_s"] > 0
    assert 0 < tr["fraction_of_matmul_peak"] < 10
    assert tr["memory"]["peak_bytes"] > 0
    dec = data["sections"]["decode"]
    assert dec["new_tokens"] == 4 and dec["speedup_cached_vs_nocache"] > 0
    assert "train[loop]" in table and "decode" in table
    s = data["summary"]
    assert "target_train_mfu_ge_0.5" in s and "target_decode_speedup_ge_10" in s


def test_unknown_section_is_reported(tmp_path):
    from benchmarks.run import _sections

    with pytest.raises(ValueError, match="unknown sections"):
        _sections("train,warp")


@pytest.mark.slow
@pytest.mark.ci_e2e
def test_harness_all_sections_on_tiny(tmp_path):
    """Every section (incl. the packing study) runs and the JSON holds all of them (~1 min on 2 busy cores)."""
    res, data, table = _run(tmp_path, "sections=matmul,train,t2i,decode,vae,packing", "matmul_sizes=512")
    assert not data["errors"], data["errors"]
    for name in ("matmul", "train", "t2i", "decode", "vae", "packing"):
        assert name in data["sections"], name
    t2i = data["sections"]["t2i"]
    assert set(t2i["paths"]) == {"uncached", "uncached_unpadded", "cached"}
    assert t2i["paths"]["cached"]["step_flops"] < t2i["paths"]["uncached"]["step_flops"]
    assert data["sections"]["vae"]["encode_s"] > 0
    assert data["sections"]["packing"]["layouts"]
    assert all(k in data["summary"] for k in ("train_step_s", "t2i_cached_step_ratio", "decode_speedup"))
    print(table)


