"""pipeline.run: the threaded video workflow and still images, on real little clips and real models."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

import pipeline.run as run
from clips import decode_frames, face_frame, leftovers, make_clip, psnr, tight_crop
from pipeline.faces import DetectorConfig, FaceDetector
from pipeline.run import (
    FaceJob,
    ProcessConfig,
    check_config,
    default_output,
    format_summary,
    load_models,
    load_process_config,
    mix_target,
    process_image,
    process_video,
    synthesize_stage,
)
from pipeline.synthesize import SynthesizerConfig, TorchSynthesizer
from pipeline.types import VideoFrame
from pipeline.video import EncoderConfig, decode_video, encode_video, probe_video
from usgan.config import ConfigError

FAST = EncoderConfig(preset="ultrafast", crf=10)  # near-lossless: comparisons see the pipeline, not x264


def config_for(weights: Path, **changes) -> ProcessConfig:
    """Defaults with the given weights, a fast encoder and no progress bar."""
    base = ProcessConfig(synthesizer=SynthesizerConfig(weights=weights), encoder=FAST, progress=False)
    return replace(base, **changes)


def face_boxes(frames: list[np.ndarray]) -> list[np.ndarray]:
    """The real detector's box per frame (the face is where the edit must be)."""
    detector = FaceDetector()
    return [detector.detect_faces(frame)[0].bbox for frame in frames]


def split_by_face(frame: np.ndarray, box: np.ndarray, grow: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks: inside the face box, and outside the box grown by `grow` of its size on each side."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    inside = np.zeros(frame.shape[:2], bool)
    inside[int(y1 + 0.2 * h):int(y2 - 0.1 * h), int(x1 + 0.2 * w):int(x2 - 0.2 * w)] = True
    outside = np.ones(frame.shape[:2], bool)
    outside[max(0, int(y1 - grow * h)):int(y2 + grow * h), max(0, int(x1 - grow * w)):int(x2 + grow * w)] = False
    return inside, outside


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "face.mp4", frames=10)


# ---------------------------------------------------------------- pure pieces


def test_mix_target():
    vector, intensity = mix_target((("happy", 0.6), ("sad", 0.4)), 0.5)
    assert vector[3] == pytest.approx(0.6) and vector[5] == pytest.approx(0.4) and intensity == pytest.approx(0.5)
    vector, intensity = mix_target((("fearful", 0.25),), 1.0)  # fading in from nothing: one-hot, scaled
    assert vector.tolist() == [0, 0, 1, 0, 0, 0, 0] and intensity == pytest.approx(0.25)
    assert mix_target((), 1.0)[1] == 0.0


def test_default_yaml_is_the_dataclass_defaults_and_overrides_apply():
    assert load_process_config() == ProcessConfig()
    config = load_process_config(overrides={"blend": "feather", "tracker.detect_every": 3, "encoder.crf": 23})
    assert (config.blend, config.tracker.detect_every, config.encoder.crf) == ("feather", 3, 23)


def test_fast_preset_sits_between_the_config_file_and_explicit_options():
    fast = load_process_config(preset=run.FAST_PRESET)
    default = load_process_config()
    assert fast.tracker.detect_every > default.tracker.detect_every
    assert fast.detector.input_size < default.detector.input_size
    assert (fast.synthesizer.precision, fast.clone_scale) == ("auto", 0.25)
    assert (fast.blend, fast.crop_size, fast.encoder) == (default.blend, default.crop_size, default.encoder)
    explicit = load_process_config(preset=run.FAST_PRESET, overrides={"tracker.detect_every": 1, "clone_scale": None})
    assert (explicit.tracker.detect_every, explicit.clone_scale) == (1, 0.25)  # None leaves the preset's value


def test_preset_with_an_unknown_key_is_a_config_error(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text("detector:\n  size: 320\n")
    with pytest.raises(ConfigError, match="unknown key"):
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
])
def test_bad_settings_are_config_errors(change, name):
    with pytest.raises(ConfigError, match=name):
        check_config(replace(ProcessConfig(), **change))
    with pytest.raises(ConfigError, match="unknown key"):
        load_process_config(overrides={"colour": "red"})


@pytest.mark.parametrize("expression, name", [
    ("smile", "clip_happy.mp4"), ("happy@0-3,SAS@3-6,joy@7-", "clip_happy-sad.mp4"), ("fear:0.5", "clip_fearful.mp4"),
])
def test_default_output_names_the_expression(expression, name):
    assert default_output(Path("in/clip.mp4"), expression) == Path("in") / name


class CountingSynthesizer:
    """A real generator that records the batch sizes it is given."""

    def __init__(self, weights: Path):
        self.inner = TorchSynthesizer(weights)
        self.image_size = self.inner.image_size
        self.batches: list[int] = []

    def synthesize(self, crops, targets, intensity):
        self.batches.append(len(crops))
        return self.inner.synthesize(crops, targets, intensity)


def test_synthesis_batches_across_frames_and_keeps_order(weights):
    synthesizer = CountingSynthesizer(weights["random"])
    config = config_for(weights["random"], crop_size=32)
    models = load_models(config)
    jobs = []
    for index in range(7):
        image = face_frame(160, 120, index)
        frame = VideoFrame(index, image, index, Fraction(1, 25), index / 25)
        faces = [] if index == 3 else models.finder.detector.detect_faces(image)
        jobs.append(run.plan_faces(frame, faces, (("happy", 1.0),), config))
    edited = list(synthesize_stage(jobs, synthesizer, batch_size=3))
    assert [e.frame.index for e in edited] == list(range(7))
    assert [len(e.edits) for e in edited] == [1, 1, 1, 0, 1, 1, 1]
    assert synthesizer.batches == [3, 2, 1]  # 3 crops (frames 0-2), 3 frames (3-5, one faceless), the rest
    assert all(isinstance(job, FaceJob) for job in jobs)


# ---------------------------------------------------------------- videos


@pytest.mark.parametrize("blend", ["feather", "seamless"])
def test_identity_generator_output_equals_input_within_encoding_error(weights, clip, tmp_path, blend):
    output = tmp_path / "out.mp4"
    result = process_video(clip, output, config_for(weights["identity"], blend=blend))
    reference = tmp_path / "pass_through.mp4"
    encode_video(decode_video(clip), clip, reference, FAST, probe_video(clip))
    got, expected, source = decode_frames(output), decode_frames(reference), decode_frames(clip)
    assert result.frames == len(got) == len(source) == 10 and result.faces_edited == 10
    assert min(psnr(a, b) for a, b in zip(got, expected)) >= 40.0
    assert min(psnr(a, b) for a, b in zip(got, source)) >= 40.0
    assert set(result.stage_seconds) == set(run.STAGES) and "\n" not in format_summary(result)


def test_random_generator_changes_the_face_only(weights, clip, tmp_path):
    output = tmp_path / "out.mp4"
    process_video(clip, output, config_for(weights["random"], blend="feather"))
    got, source = decode_frames(output), decode_frames(clip)
    for frame_in, frame_out, box in zip(source[::4], got[::4], face_boxes(source[::4])):
        inside, outside = split_by_face(frame_in, box)
        assert np.abs(frame_out[inside].astype(int) - frame_in[inside]).mean() > 5.0
        assert psnr(frame_out[outside], frame_in[outside]) >= 40.0


def test_rotated_video_is_edited_upright_and_keeps_its_rotation(weights, tmp_path):
    source = make_clip(tmp_path / "phone.mp4", frames=6, rotation=90, audio=False)
    output = tmp_path / "out.mp4"
    result = process_video(source, output, config_for(weights["random"], blend="feather", crop_size=64))
    info_in, info_out = probe_video(source), probe_video(output)
    assert (info_out.width, info_out.height, info_out.rotation) == (info_in.width, info_in.height, 90)
    assert result.faces_edited == 6  # SCRFD finds the face only in the upright picture
    frame_in, frame_out = decode_frames(source)[0], decode_frames(output)[0]
    upright_in, upright_out = (np.ascontiguousarray(np.rot90(f, k=1)) for f in (frame_in, frame_out))
    inside, outside = split_by_face(upright_in, face_boxes([upright_in])[0])
    assert np.abs(upright_out[inside].astype(int) - upright_in[inside]).mean() > 5.0
    assert psnr(upright_out[outside], upright_in[outside]) >= 40.0


def test_schedule_leaves_unscheduled_times_unchanged(weights, clip, tmp_path):
    output = tmp_path / "out.mp4"
    result = process_video(clip, output, config_for(weights["random"], expression="sad@0-0.2", blend="feather"))
    got, source = decode_frames(output), decode_frames(clip)
    assert result.faces_found == 10 and result.faces_edited == 5  # 25 fps: frames 0..4 start before 0.2 s
    assert psnr(got[2], source[2]) < 35.0
    assert min(psnr(a, b) for a, b in zip(got[5:], source[5:])) >= 40.0


def test_video_without_faces_is_passed_through_with_a_warning(weights, tmp_path, caplog):
    source = make_clip(tmp_path / "empty.mp4", frames=5, face=False)
    output = tmp_path / "out.mp4"
    with caplog.at_level(logging.WARNING, logger="pipeline.run"):
        result = process_video(source, output, config_for(weights["random"]))
    assert result.faces_found == 0 and f"{source}: no face found" in caplog.text
    assert min(psnr(a, b) for a, b in zip(decode_frames(output), decode_frames(source))) >= 40.0


def test_a_failing_stage_stops_every_thread_and_raises_in_the_caller(weights, clip, tmp_path, monkeypatch):
    real_blend = run.blend_frame

    def broken_blend(edited, mask, config):
        if edited.frame.index == 3:
            raise RuntimeError("blend exploded")
        return real_blend(edited, mask, config)

    monkeypatch.setattr(run, "blend_frame", broken_blend)
    output = tmp_path / "out.mp4"
    started = time.perf_counter()
    with pytest.raises(RuntimeError, match="blend exploded"):
        process_video(clip, output, config_for(weights["identity"], queue_size=1))
    assert time.perf_counter() - started < 30
    assert not output.exists() and leftovers(tmp_path) == []
    assert not [t for t in threading.enumerate() if t.name.startswith("usgan-") and t.is_alive()]


def test_a_decode_error_mid_stream_propagates(weights, tmp_path, monkeypatch):
    source = make_clip(tmp_path / "in.mp4", frames=6)
    real_decode = run.decode_stage

    def failing_decode(path, rotation):
        for frame in real_decode(path, rotation):
            if frame.index == 2:
                raise run.InputError(f"{path}: cannot decode video (boom)")
            yield frame

    monkeypatch.setattr(run, "decode_stage", failing_decode)
    with pytest.raises(run.InputError, match="boom"):
        process_video(source, tmp_path / "out.mp4", config_for(weights["identity"]))
    assert not (tmp_path / "out.mp4").exists() and leftovers(tmp_path) == []


# ---------------------------------------------------------------- still images


def test_tight_face_crop_is_found_with_the_padded_retry(weights, tmp_path):
    source = tmp_path / "tight.png"
    cv2.imwrite(str(source), tight_crop())
    result = process_image(source, tmp_path / "out.png", config_for(weights["random"]))
    assert result.faces_edited == 1
    assert np.abs(cv2.imread(str(tmp_path / "out.png")).astype(int) - tight_crop()).mean() > 3.0


def test_image_without_a_face_is_written_unchanged(weights, tmp_path, caplog):
    source = tmp_path / "wall.png"
    cv2.imwrite(str(source), face_frame(120, 90, 0, face=False))
    with caplog.at_level(logging.WARNING, logger="pipeline.run"):
        result = process_image(source, tmp_path / "out.png", config_for(weights["random"]))
    assert result.faces_found == 0 and "no face found" in caplog.text
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "out.png")), cv2.imread(str(source)))


def test_share_threads_fills_only_automatic_counts():
    config = replace(ProcessConfig(), detector=replace(ProcessConfig().detector, threads=3))
    shared = run.share_threads(config, cpus=8)
    assert (shared.detector.threads, shared.synthesizer.threads, shared.synthesizer.onnx.threads) == (3, 8, 8)
    automatic = run.share_threads(ProcessConfig(), cpus=2)  # the heavier generator gets the detector's idle core
    assert (automatic.detector.threads, automatic.synthesizer.threads) == (1, 2)
    assert run.share_threads(ProcessConfig(), cpus=1).synthesizer.threads == 1


# ---------------------------------------------------------------- many still images


class FailingOnceSynthesizer(CountingSynthesizer):
    """A real generator whose first call fails (a batch-level error)."""

    def synthesize(self, crops, targets, intensity):
        if not self.batches:
            self.batches.append(-len(crops))
            raise RuntimeError("out of memory")
        return super().synthesize(crops, targets, intensity)


def image_pairs(tmp_path: Path, count: int, bad: int | None = None) -> list[tuple[Path, Path]]:
    """count photos with a face (the one at index `bad` is a text file named .png) and their output paths."""
    pairs = []
    for index in range(count):
        source = tmp_path / f"in{index}.png"
        if index == bad:
            source.write_text("not an image")
        else:
            cv2.imwrite(str(source), face_frame(160, 120, index))
        pairs.append((source, tmp_path / f"out{index}.png"))
    return pairs


def test_process_images_batches_across_images_in_order_and_isolates_a_bad_file(weights, tmp_path):
    config = config_for(weights["random"], crop_size=32, batch_size=3)
    models = load_models(config)
    synthesizer = CountingSynthesizer(weights["random"])
    models = replace(models, synthesizer=synthesizer)
    pairs = image_pairs(tmp_path, 6, bad=2)
    outcomes = list(run.process_images(pairs, config, models))
    assert [outcome.source for outcome in outcomes] == [source for source, _ in pairs]
    assert "in2.png" in str(outcomes[2].error) and outcomes[2].result is None and not pairs[2][1].exists()
    assert [o.result.faces_edited for n, o in enumerate(outcomes) if n != 2] == [1] * 5
    assert synthesizer.batches == [2, 3]  # images 0-2 (the bad one has no crop), then 3-5: 3 images or 3 crops
    for n, (source, output) in enumerate(pairs):
        if n != 2:
            assert np.abs(cv2.imread(str(output)).astype(int) - cv2.imread(str(source))).mean() > 0.5


def test_process_images_fails_only_the_batch_whose_generator_call_failed(weights, tmp_path):
    config = config_for(weights["random"], crop_size=32, batch_size=2)
    models = replace(load_models(config), synthesizer=FailingOnceSynthesizer(weights["random"]))
    outcomes = list(run.process_images(image_pairs(tmp_path, 4), config, models))
    assert [str(o.error) if o.error else "ok" for o in outcomes] == ["out of memory", "out of memory", "ok", "ok"]


def test_process_images_stops_its_threads_when_the_caller_stops_early(weights, tmp_path):
    config = config_for(weights["random"], crop_size=32, batch_size=2)
    before = threading.active_count()
    outcomes = run.process_images(image_pairs(tmp_path, 6), config, load_models(config))
    next(outcomes)
    outcomes.close()
    assert threading.active_count() == before
