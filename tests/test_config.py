"""The YAML boundary: defaults, merging, overrides, and the errors users see."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alphastomics.config import (
    Config,
    ConfigError,
    config_from_dict,
    load_config,
    parse_override,
    to_dict,
)


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_without_files():
    assert load_config() == Config()


def test_design_note_block_loads_as_written(design_note_yaml):
    cfg = load_config(design_note_yaml)
    assert cfg.model.gate == "headwise" and cfg.model.qk_norm and cfg.model.attention == "softmax"
    assert cfg.training.batch_size == 1024 and cfg.training.accumulate_grad_batches == 4
    # PyYAML reads 1e-4 (no dot) as the string '1e-4'; the boundary makes it the float it means.
    assert yaml.safe_load("x: 1e-4")["x"] == "1e-4"
    assert cfg.training.learning_rate == pytest.approx(1e-4)
    assert isinstance(cfg.training.learning_rate, float)


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().training.batch_size = 3  # type: ignore[misc]


def test_later_files_and_overrides_win(tmp_path):
    a = write(tmp_path, "training: {batch_size: 8, max_steps: 10}\n", "a.yaml")
    b = write(tmp_path, "training: {batch_size: 16}\n", "b.yaml")
    cfg = load_config([a, b], ["training.max_steps=20", "TransformerLayer_setting.gate_type=elementwise"])
    assert cfg.training.batch_size == 16  # b over a
    assert cfg.training.max_steps == 20  # --set over files
    assert cfg.model.gate == "elementwise"


def test_round_trip_through_dict_and_yaml(tmp_path):
    cfg = load_config(overrides=["dataset.test_sections=[s1, s2]", "diffusion.mode=joint",
                                 "dataset.annotation_keys.layer=z", "dataset.rdata.counts=cnts",
                                 'dataset.files=[{"name": "a.csv", "url": "u", "sha256": "00"}]'])
    assert cfg.dataset.annotation_keys == {"layer": "z"} and cfg.dataset.files[0].name == "a.csv"
    assert config_from_dict(to_dict(cfg)) == cfg
    (tmp_path / "out.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    assert load_config(tmp_path / "out.yaml") == cfg
    assert cfg.dataset.test_sections == ("s1", "s2")


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("training: {batch_sise: 4}\n", ["unknown key 'training.batch_sise'", "batch_size"]),
        ("trainig: {batch_size: 4}\n", ["unknown key 'trainig'", "training"]),
        ("training: {batch_size: four}\n", ["'training.batch_size' must be an integer", "'four'"]),
        ("training: {batch_size: 4.5}\n", ["'training.batch_size' must be an integer"]),
        ("training: {learning_rate: fast}\n", ["'training.learning_rate' must be a finite number"]),
        ("training: {learning_rate: .nan}\n", ["'training.learning_rate' must be a finite number"]),
        ("TransformerLayer_setting: {gate_type: headwize}\n", ["'headwize'", "'headwise'", "'elementwise'"]),
        ("TransformerLayer_setting: {use_qk_norm: 'yes'}\n", ["must be true or false"]),
        ("training: 3\n", ["'training' must be a mapping"]),
        ("- a\n- b\n", ["top level must be a mapping"]),
        ("training: {batch_size: [\n", ["not valid YAML", "line"]),
        ("dataset: {files: [{name: a.csv, url: u}]}\n", ["'dataset.files[0]' lacks key(s) sha256"]),
        ("dataset: {annotation_keys: [layer]}\n", ["'dataset.annotation_keys' must be a mapping"]),
        ("dataset: {rdata: {count: x}}\n", ["unknown key 'dataset.rdata.count'", "counts"]),
    ],
)
def test_bad_config_is_one_sentence_naming_file_and_key(tmp_path, text, fragments):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize("times", ["[]", "[0]", "[0.5, 1.5]", "[-0.1]"])
def test_gate_times_are_fractions_of_the_diffusion_time(tmp_path, times):
    assert load_config().evaluation.gate_times == (0.1, 0.3, 0.5, 0.7, 0.9)
    assert load_config(overrides=["evaluation.gate_times=[0.25, 1]"]).evaluation.gate_times == (0.25, 1.0)
    path = write(tmp_path, f"evaluation: {{gate_times: {times}}}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "'evaluation.gate_times'" in message and "(0, 1]" in message


def test_missing_file_and_malformed_override(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("training.batch_size")


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    from alphastomics.__main__ import main

    path = write(tmp_path, "training: {batch_sise: 4}\n")
    assert main(["params", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0
    assert err.startswith("error: ") and "unknown key 'training.batch_sise'" in err


def test_every_stage_runs_with_freed_memory_kept(tmp_path, monkeypatch):
    import alphastomics.__main__ as cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(True))
    cli.main(["params", "--config", str(write(tmp_path, "training: {batch_size: 4}\n"))])
    assert calls == [True]


def test_every_stage_has_help(capsys):
    from alphastomics.__main__ import STAGES, main

    for stage in STAGES:
        with pytest.raises(SystemExit) as exit_:
            main([stage, "--help"])
        assert exit_.value.code == 0
        assert "--config" in capsys.readouterr().out


@pytest.mark.parametrize("module", ["alphastomics", "alphastomics.main"])
def test_both_module_entry_points_run_a_stage(module):
    proc = subprocess.run([sys.executable, "-m", module, "params", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "--config" in proc.stdout
