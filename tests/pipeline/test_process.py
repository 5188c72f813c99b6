"""pipeline.process (and the per-frame steps of pipeline.edit): the threaded video workflow and still images, on
real little clips and real models."""

from __future__ import annotations

import logging
import threading
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

import pipeline.process as process
from clips import (
    CountingSynthesizer, decode_frames, face_frame, leftovers, make_clip, process_config, psnr, tight_crop,
)
from pipeline.edit import FaceJob, load_models, mix_target, plan_faces
from pipeline.errors import InputError
from pipeline.faces.detector import FaceDetector
from pipeline.process import (
    STAGES, default_output, process_file, process_image, process_result_line, process_video, synthesize_stage,
)
from pipeline.schedule import parse_schedule
from pipeline.types import VideoFrame
from pipeline.video.codecs import EncoderConfig
from pipeline.video.decode import decode_video
from pipeline.video.encode import encode_video
from pipeline.video.probe import probe_video

FAST = EncoderConfig(preset="ultrafast", crf=10)  # near-lossless: comparisons see the pipeline, not x264


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


def test_mix_target():
    vector, intensity = mix_target((("happy", 0.6), ("sad", 0.4)), 0.5)
    assert vector[3] == pytest.approx(0.6) and vector[5] == pytest.approx(0.4) and intensity == pytest.approx(0.5)
    vector, intensity = mix_target((("fearful", 0.25),), 1.0)  # fading in from nothing: one-hot, scaled
    assert vector.tolist() == [0, 0, 1, 0, 0, 0, 0] and intensity == pytest.approx(0.25)
    assert mix_target((), 1.0)[1] == 0.0


@pytest.mark.parametrize("expression, name", [
    ("smile", "clip_happy.mp4"), ("happy@0-3,SAS@3-6,joy@7-", "clip_happy-sad.mp4"), ("fear:0.5", "clip_fearful.mp4"),
])
def test_default_output_names_the_expression(expression, name):
    assert default_output(Path("in/clip.mp4"), parse_schedule(expression)) == Path("in") / name


def test_synthesis_batches_across_frames_and_keeps_order(weights):
    synthesizer = CountingSynthesizer(weights["random"])
    config = process_config(weights["random"], crop_size=32)
    models = load_models(config)
    jobs = []
    for index in range(7):
        image = face_frame(160, 120, index)
        frame = VideoFrame(index, image, index, Fraction(1, 25), index / 25)
        faces = [] if index == 3 else models.finder.detector.detect_faces(image)
        jobs.append(plan_faces(frame, faces, (("happy", 1.0),), config))
    edited = list(synthesize_stage(jobs, synthesizer, batch_size=3))
    assert [e.frame.index for e in edited] == list(range(7))
    assert [len(e.edits) for e in edited] == [1, 1, 1, 0, 1, 1, 1]
    assert synthesizer.batches == [3, 2, 1]  # 3 crops (frames 0-2), 3 frames (3-5, one faceless), the rest
    assert all(isinstance(job, FaceJob) for job in jobs)


@pytest.mark.parametrize("blend", ["feather", "seamless"])
def test_identity_generator_output_equals_input_within_encoding_error(weights, clip, tmp_path, blend):
    output = tmp_path / "out.mp4"
    result = process_video(clip, output, process_config(weights["identity"], blend=blend))
    reference = tmp_path / "pass_through.mp4"
    encode_video(decode_video(clip), clip, reference, FAST, probe_video(clip))
    got, expected, source = decode_frames(output), decode_frames(reference), decode_frames(clip)
    assert result.frames == len(got) == len(source) == 10 and result.faces_edited == 10
    assert min(psnr(a, b) for a, b in zip(got, expected)) >= 40.0
    assert min(psnr(a, b) for a, b in zip(got, source)) >= 40.0
    assert set(result.stage_seconds) == set(STAGES) - {"geometry"} and "\n" not in process_result_line(result)


def test_random_generator_changes_the_face_only(weights, clip, tmp_path):
    output = tmp_path / "out.mp4"
    process_video(clip, output, process_config(weights["random"], blend="feather"))
    got, source = decode_frames(output), decode_frames(clip)
    for frame_in, frame_out, box in zip(source[::4], got[::4], face_boxes(source[::4])):
        inside, outside = split_by_face(frame_in, box)
        assert np.abs(frame_out[inside].astype(int) - frame_in[inside]).mean() > 5.0
        assert psnr(frame_out[outside], frame_in[outside]) >= 40.0


def test_rotated_video_is_edited_upright_and_keeps_its_rotation(weights, tmp_path):
    source = make_clip(tmp_path / "phone.mp4", frames=6, rotation=90, audio=False)
    output = tmp_path / "out.mp4"
    result = process_video(source, output, process_config(weights["random"], blend="feather", crop_size=64))
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
    result = process_video(clip, output, process_config(weights["random"], expression="sad@0-0.2", blend="feather"))
    got, source = decode_frames(output), decode_frames(clip)
    assert result.faces_found == 10 and result.faces_edited == 5  # 25 fps: frames 0..4 start before 0.2 s
    assert psnr(got[2], source[2]) < 35.0
    assert min(psnr(a, b) for a, b in zip(got[5:], source[5:])) >= 40.0


def test_video_without_faces_is_passed_through_with_a_warning(weights, tmp_path, caplog):
    source = make_clip(tmp_path / "empty.mp4", frames=5, face=False)
    output = tmp_path / "out.mp4"
    with caplog.at_level(logging.WARNING, logger="pipeline.process"):
        result = process_video(source, output, process_config(weights["random"]))
    assert result.faces_found == 0 and f"{source}: no face found" in caplog.text
    assert min(psnr(a, b) for a, b in zip(decode_frames(output), decode_frames(source))) >= 40.0


def test_a_failing_stage_stops_every_thread_and_raises_in_the_caller(weights, clip, tmp_path, monkeypatch):
    real_blend = process.blend_frame

    def broken_blend(edited, mask, config):
        if edited.frame.index == 3:
            raise RuntimeError("blend exploded")
        return real_blend(edited, mask, config)

    monkeypatch.setattr(process, "blend_frame", broken_blend)
    output = tmp_path / "out.mp4"
    started = time.perf_counter()
    with pytest.raises(RuntimeError, match="blend exploded"):
        process_video(clip, output, process_config(weights["identity"], queue_size=1))
    assert time.perf_counter() - started < 30
    assert not output.exists() and leftovers(tmp_path) == []
    assert not [t for t in threading.enumerate() if t.name.startswith("usgan-") and t.is_alive()]


def test_a_decode_error_mid_stream_propagates(weights, tmp_path, monkeypatch):
    source = make_clip(tmp_path / "in.mp4", frames=6)
    real_decode = process.decode_stage

    def failing_decode(path, rotation):
        for frame in real_decode(path, rotation):
            if frame.index == 2:
                raise InputError(f"{path}: cannot decode video (boom)")
            yield frame

    monkeypatch.setattr(process, "decode_stage", failing_decode)
    with pytest.raises(InputError, match="boom"):
        process_video(source, tmp_path / "out.mp4", process_config(weights["identity"]))
    assert not (tmp_path / "out.mp4").exists() and leftovers(tmp_path) == []


def test_tight_face_crop_is_found_with_the_padded_retry(weights, tmp_path):
    source = tmp_path / "tight.png"
    cv2.imwrite(str(source), tight_crop())
    result = process_image(source, tmp_path / "out.png", process_config(weights["random"]))
    assert result.faces_edited == 1
    assert np.abs(cv2.imread(str(tmp_path / "out.png")).astype(int) - tight_crop()).mean() > 3.0


def test_image_without_a_face_is_written_unchanged(weights, tmp_path, caplog):
    source = tmp_path / "wall.png"
    cv2.imwrite(str(source), face_frame(120, 90, 0, face=False))
    with caplog.at_level(logging.WARNING, logger="pipeline.process"):
        result = process_image(source, tmp_path / "out.png", process_config(weights["random"]))
    assert result.faces_found == 0 and "no face found" in caplog.text
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "out.png")), cv2.imread(str(source)))


def test_process_file_picks_the_workflow_and_names_a_missing_output_after_the_expression(weights, tmp_path):
    source = tmp_path / "photo.png"
    cv2.imwrite(str(source), face_frame(160, 120, 0))
    result = process_file(source, None, process_config(weights["random"], expression="smile@0-2,SAS@2-"))
    assert result.kind == "image" and result.output == tmp_path / "photo_happy-sad.png" and result.output.is_file()


@pytest.mark.parametrize("expression, intensity", [("happy@2-", 1.0), ("happy", 0.0)])
def test_photo_whose_schedule_edits_nothing_is_unchanged_with_a_warning(weights, tmp_path, caplog, expression,
                                                                        intensity):
    source = tmp_path / "photo.png"
    cv2.imwrite(str(source), face_frame(160, 120, 0))
    config = process_config(weights["random"], expression=expression, intensity=intensity)
    with caplog.at_level(logging.WARNING, logger="pipeline.process"):
        result = process_image(source, tmp_path / "out.png", config)
    assert result.faces_found == 1 and result.faces_edited == 0
    assert f"{source}: expression {expression!r} at intensity {intensity:g} edits nothing at 0 s" in caplog.text
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "out.png")), cv2.imread(str(source)))


def test_video_whose_schedule_covers_no_frame_warns(weights, clip, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.process"):
        result = process_video(clip, tmp_path / "out.mp4", process_config(weights["random"], expression="sad@100-"))
    assert result.faces_found == 10 and result.faces_edited == 0
    assert f"{clip}: faces found but none edited: expression 'sad@100-'" in caplog.text


@pytest.mark.parametrize("name", ["in.mp4", "in.png"])
def test_an_input_and_its_output_are_checked_once(weights, tmp_path, monkeypatch, name):
    import os

    clip = make_clip(tmp_path / name, frames=4) if name.endswith(".mp4") else tmp_path / name
    if name.endswith(".png"):
        cv2.imwrite(str(clip), face_frame(96, 72, 0))
    config = process_config(weights["identity"], encoder=FAST)
    models = load_models(config)
    calls, access = [], os.access
    monkeypatch.setattr(os, "access", lambda path, mode: calls.append((str(path), mode)) or access(path, mode))
    process_file(clip, tmp_path / f"out{clip.suffix}", config, models)
    assert [mode for path, mode in calls if path == str(clip)] == [os.R_OK]
    assert [mode for _, mode in calls if mode == os.W_OK | os.X_OK] == [os.W_OK | os.X_OK]
