"""The studio's controls make the ProcessConfig process would, and errors name the control."""

from __future__ import annotations

import pytest

from pipeline.config import DEFAULT_WEIGHTS
from pipeline.studio.settings import (
    SHIPPED_GEOMETRY, SHIPPED_TEXTURE, StudioSettings, shown_path, studio_config, weights_choices,
)
from usgan.config import ConfigError


def test_controls_set_the_same_keys_as_process_options():
    settings = StudioSettings("sad", 0.4, "", "off", "largest", "feather", str(DEFAULT_WEIGHTS))
    config = studio_config(settings, "image")
    assert (config.expression, config.intensity, config.faces, config.blend) == ("sad", 0.4, "largest", "feather")
    assert config.synthesizer.weights == DEFAULT_WEIGHTS and config.synthesizer.geometry == "off"
    assert config.progress is False


@pytest.mark.parametrize("geometry, setting", [("auto", "auto"), ("off", "off"), ("on", str(SHIPPED_GEOMETRY))])
def test_geometry_control(geometry, setting):
    assert studio_config(StudioSettings(geometry=geometry), "image").synthesizer.geometry == setting


@pytest.mark.parametrize("texture, setting", [("auto", "auto"), ("off", "off"), ("on", str(SHIPPED_TEXTURE))])
def test_texture_control(texture, setting):
    assert studio_config(StudioSettings(texture=texture), "image").synthesizer.texture == setting


def test_a_schedule_applies_to_videos_only():
    settings = StudioSettings(expression="happy", schedule=" sad@0-1,happy@1- ")
    assert studio_config(settings, "video").expression == "sad@0-1,happy@1-"
    assert studio_config(settings, "image").expression == "happy"
    assert studio_config(StudioSettings(expression="sad", schedule="  "), "video").expression == "sad"


def test_a_bad_value_names_the_control():
    with pytest.raises(ConfigError, match=r"^Intensity: must be a finite number in \[0, 1\], got 2"):
        studio_config(StudioSettings(intensity=2.0), "image")


def test_weights_choices_list_generators_not_shape_models(tmp_path, weights):
    extra = tmp_path / "mine"
    extra.mkdir()
    (extra / "mine.safetensors").write_bytes(weights["random"].read_bytes())
    (extra / "junk.safetensors").write_text("not weights")
    choices = weights_choices([extra])
    assert choices[0] == str(DEFAULT_WEIGHTS) and str(extra / "mine.safetensors") in choices
    assert str(SHIPPED_GEOMETRY) not in choices and str(extra / "junk.safetensors") not in choices
    assert shown_path(choices[0]) == "weights/usgan_tfeid.safetensors"
    assert shown_path(str(extra / "mine.safetensors")) == str(extra / "mine.safetensors")
