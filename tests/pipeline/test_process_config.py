"""pipeline.config: the YAML defaults, the --fast preset, option overrides, and errors that name where a bad value
came from."""

from __future__ import annotations

import re
from dataclasses import replace

import cv2
import pytest
from click.testing import CliRunner

from cli import cli
from clips import face_frame
from pipeline.config import (
    DEFAULT_CONFIG, FAST_PRESET, ProcessConfig, check_config, load_process_config,
    parse_edit, share_threads,
)
from pipeline.faces.detector import DetectorConfig
from pipeline.config import DEFAULT_WEIGHTS, SynthesizerConfig
from usgan.config import ConfigError


def test_default_yaml_is_the_dataclass_defaults_and_overrides_apply():
    assert load_process_config() == ProcessConfig()
    config = load_process_config(overrides={"blend": "feather", "tracker.detect_every": 3, "encoder.crf": 23})
    assert (config.blend, config.tracker.detect_every, config.encoder.crf) == ("feather", 3, 23)


def test_fast_preset_sits_between_the_config_file_and_explicit_options():
    fast = load_process_config(preset=FAST_PRESET)
    default = load_process_config()
    assert fast.tracker.detect_every > default.tracker.detect_every
    assert fast.detector.input_size < default.detector.input_size
    assert (fast.synthesizer.precision, fast.clone_scale) == ("auto", 0.25)
    assert (fast.blend, fast.crop_size, fast.encoder) == (default.blend, default.crop_size, default.encoder)
    explicit = load_process_config(preset=FAST_PRESET, overrides={"tracker.detect_every": 1, "clone_scale": None})
    assert (explicit.tracker.detect_every, explicit.clone_scale) == (1, 0.25)  # None leaves the preset's value


def test_preset_with_an_unknown_key_is_a_config_error_naming_the_preset(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text("detector:\n  size: 320\n")
    with pytest.raises(ConfigError, match=r"preset.yaml: unknown key\(s\) detector.size; valid: detector.model_pack"):
        load_process_config(preset=preset)
    preset.write_text("- just a list\n")
    with pytest.raises(ConfigError, match="preset.yaml: a preset must be a mapping"):
        load_process_config(preset=preset)


@pytest.mark.parametrize("change, name", [
    ({"synthesizer": SynthesizerConfig(precision="fp16")}, "synthesizer.precision"),
    ({"synthesizer": SynthesizerConfig(backend="onnx", precision="bf16")}, "bf16 is torch-only"),
    ({"detector": DetectorConfig(input_size=16)}, "detector.input_size"),
])
def test_bad_generator_and_detector_settings_are_config_errors(change, name):
    with pytest.raises(ConfigError, match=name):
        check_config(replace(ProcessConfig(), **change))
    assert check_config(replace(ProcessConfig(), synthesizer=SynthesizerConfig(backend="onnx", precision="auto")))


@pytest.mark.parametrize("change, name", [
    ({"blend": "poisson"}, "blend"), ({"intensity": 1.5}, "intensity"), ({"batch_size": 0}, "batch_size"),
    ({"faces": "some"}, "faces"), ({"video_codec": "mpeg2"}, "video_codec"), ({"clone_scale": 2.0}, "clone_scale"),
    ({"fade": float("nan")}, "fade"), ({"crop_size": 64.5}, "crop_size"), ({"intensity": "high"}, "intensity"),
    ({"queue_size": True}, "queue_size"),
])
def test_bad_settings_are_config_errors(change, name):
    with pytest.raises(ConfigError, match=name):
        check_config(replace(ProcessConfig(), **change))
    with pytest.raises(ConfigError, match="unknown key"):
        load_process_config(overrides={"colour": "red"})


def test_a_bad_override_names_its_option_not_the_file():
    with pytest.raises(ConfigError) as caught:
        load_process_config(overrides={"intensity": float("nan")}, option_names={"intensity": "--intensity"})
    assert str(caught.value) == "--intensity: must be a number, got nan"  # NaN fails the type check, before its bound
    with pytest.raises(ConfigError, match=r"^override batch_size: must be a whole number in \[1, 512\], got 0$"):
        load_process_config(overrides={"batch_size": 0})


def test_a_bad_value_names_the_file_or_preset_it_came_from(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("intensity: high\n")
    with pytest.raises(ConfigError, match=r"^\S*mine.yaml: intensity must be a number, got 'high'$"):
        load_process_config(config)
    config.write_text("intensity: 1.5\n")
    with pytest.raises(ConfigError, match=r"mine.yaml: intensity must be a finite number in \[0, 1\], got 1.5"):
        load_process_config(config)
    preset = tmp_path / "preset.yaml"
    preset.write_text("clone_scale: 5\n")
    with pytest.raises(ConfigError, match=r"preset.yaml: clone_scale must be"):
        load_process_config(DEFAULT_CONFIG, preset=preset)


def test_cli_intensity_nan_is_blamed_on_the_option(weights, tmp_path):
    source = tmp_path / "in.png"
    cv2.imwrite(str(source), face_frame(96, 72, 0))
    result = CliRunner().invoke(cli, ["process", str(source), "-e", "sad", "--weights", str(weights["identity"]),
                                      "--intensity", "nan"])
    assert result.exit_code == 2  # click's usage error: the option's own type refuses nan
    assert "'--intensity': 'nan' is not a number" in result.output
    assert "default.yaml" not in result.output


def test_parse_edit_parses_the_schedule_and_resolves_the_weights_once(tmp_path):
    edit = parse_edit(replace(ProcessConfig(), expression="smile@0-2,SAS@2-", fade=0.5))
    assert [s.expression for s in edit.schedule.segments] == ["happy", "sad"] and edit.schedule.fade_s == 0.5
    assert edit.weights == DEFAULT_WEIGHTS
    chosen = replace(ProcessConfig(), synthesizer=SynthesizerConfig(weights=tmp_path / "w.safetensors"))
    assert parse_edit(chosen).weights == tmp_path / "w.safetensors"


def test_share_threads_fills_only_automatic_counts():
    config = replace(ProcessConfig(), detector=replace(ProcessConfig().detector, threads=3))
    shared = share_threads(config, cpus=8)
    assert (shared.detector.threads, shared.synthesizer.threads, shared.synthesizer.onnx.threads) == (3, 8, 8)
    automatic = share_threads(ProcessConfig(), cpus=2)  # the heavier generator gets the detector's idle core
    assert (automatic.detector.threads, automatic.synthesizer.threads) == (1, 2)
    assert share_threads(ProcessConfig(), cpus=1).synthesizer.threads == 1


MALFORMED = {  # config text -> the error after "FILE: "
    "- a\n- list\n": "expected a mapping of settings, got a list",
    "batch_size: four\n": "batch_size must be a whole number, got 'four'",
    "detector:\n  providers: CUDAExecutionProvider\n": "detector.providers must be a list",
    "encoder:\n  crf: x\n": "encoder.crf must be a whole number, got 'x'",
    "synthesizer:\n  threads: -3\n": "synthesizer.threads must be a whole number in [0, 1024], got -3",
    "synthesizer: 3\n": "synthesizer must be a mapping of settings, got a number",
    "synthesizer:\n  onnx:\n    fp16: maybe\n": "synthesizer.onnx.fp16 must be true or false or null",
    "fade: 120\n": "fade must be a finite number in [0, 60], got 120",
    "tracker:\n  detect_every: 500\n": "tracker.detect_every must be a whole number in [1, 100], got 500",
}


@pytest.mark.parametrize("text, message", MALFORMED.items())
def test_a_malformed_config_is_one_line_naming_the_file_and_the_key(tmp_path, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    pytest.raises(ConfigError, load_process_config, config).match(f"^{re.escape(f'{config}: {message}')}[^\n]*$")


def test_a_binary_config_file_is_one_line_from_the_cli(tmp_path):
    config = tmp_path / "weights.bin"
    config.write_bytes(bytes(range(256)) * 4)
    result = CliRunner().invoke(cli, ["process", str(tmp_path / "in.png"), "-e", "sad", "--config", str(config)])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {config}: not a text (YAML) config file"
