"""The config loader every entry point uses: YAML + dot-list overrides, strict about unknown keys."""

import pytest

from utils.config import ConfigError, load_config, load_yaml


@pytest.fixture()
def yaml_file(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("training:\n  lr: 1.0e-4\n  steps: 10\nmodel:\n  name: tiny\n  width: 8\n  double: ${model.width}\n")
    child = tmp_path / "child.yaml"
    child.write_text("_base_: base.yaml\ntraining:\n  steps: 20\n")
    return base, child


def test_valid_override_changes_value(yaml_file):
    base, _ = yaml_file
    cfg = load_config([f"config={base}", "training.lr=0.5", "model.name=big"])
    assert cfg.training.lr == 0.5 and cfg.model.name == "big"
    assert cfg.training.steps == 10  # untouched keys keep their values


def test_misspelled_override_fails_naming_the_key(yaml_file):
    base, _ = yaml_file
    with pytest.raises(ConfigError) as e:
        load_config([f"config={base}", "training.lrr=0.5"])
    msg = str(e.value)
    assert "training.lrr" in msg and "training.lr" in msg  # names the typo and suggests the real key
    with pytest.raises(ConfigError, match="trainin"):
        load_config([f"config={base}", "trainin.lr=0.5"])


def test_interpolation_follows_overrides(yaml_file):
    base, _ = yaml_file
    cfg = load_config([f"config={base}", "model.width=32"])
    assert cfg.model.double == 32


def test_plus_prefix_adds_new_key(yaml_file):
    base, _ = yaml_file
    cfg = load_config([f"config={base}", "+training.extra.depth=3"])
    assert cfg.training.extra.depth == 3


def test_base_inheritance(yaml_file):
    _, child = yaml_file
    cfg = load_yaml(child)
    assert cfg.training.steps == 20 and cfg.training.lr == 1.0e-4 and "_base_" not in cfg


def test_default_config_mapping_and_bad_args(tmp_path):
    cfg = load_config(["a.b=2"], default_config={"a": {"b": 1}})
    assert cfg.a.b == 2
    with pytest.raises(ConfigError, match="key=value"):
        load_config(["oops"], default_config={"a": 1})
    with pytest.raises(ConfigError, match="not found"):
        load_config([f"config={tmp_path / 'missing.yaml'}"])


def test_help_prints_usage_and_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        load_config(["--help"], default_config={"steps": 3}, usage="usage: python demo.py [key=value ...]")
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: python demo.py" in out and "steps: 3" in out


def test_list_entries_can_be_overridden(tmp_path):
    f = tmp_path / "list.yaml"
    f.write_text("data:\n  sources:\n    - {name: t2i, batch_size: 6}\n    - {name: mmu, batch_size: 2}\n")
    cfg = load_config([f"config={f}", "data.sources.0.batch_size=4", "data.sources.1.name=und"])
    assert cfg.data.sources[0].batch_size == 4 and cfg.data.sources[1].name == "und"
    assert cfg.data.sources[1].batch_size == 2
    with pytest.raises(ConfigError, match="data.sources.5"):
        load_config([f"config={f}", "data.sources.5.batch_size=4"])
    with pytest.raises(ConfigError, match="data.sources.0.batchsize"):
        load_config([f"config={f}", "data.sources.0.batchsize=4"])
