"""pipeline.stills: many still images through overlapping stages, a bad file or a failed batch isolated."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from clips import CountingSynthesizer, face_frame, portrait, process_config
from pipeline.edit import load_models
from pipeline.stills import process_images


class FailingOnceSynthesizer(CountingSynthesizer):
    """A real generator whose first call fails (a batch-level error)."""

    def synthesize(self, crops, targets, intensity, fields=None, texture=None):
        if not self.batches:
            self.batches.append(-len(crops))
            raise RuntimeError("out of memory")
        return super().synthesize(crops, targets, intensity, fields, texture)


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
    config = process_config(weights["random"], crop_size=32, batch_size=3)
    models = load_models(config)
    synthesizer = CountingSynthesizer(weights["random"])
    models = replace(models, synthesizer=synthesizer)
    pairs = image_pairs(tmp_path, 6, bad=2)
    outcomes = list(process_images(pairs, config, models))
    assert [outcome.source for outcome in outcomes] == [source for source, _ in pairs]
    assert "in2.png" in str(outcomes[2].error) and outcomes[2].result is None and not pairs[2][1].exists()
    assert [o.result.faces_edited for n, o in enumerate(outcomes) if n != 2] == [1] * 5
    assert synthesizer.batches == [2, 3]  # images 0-2 (the bad one has no crop), then 3-5: 3 images or 3 crops
    for n, (source, output) in enumerate(pairs):
        if n != 2:
            assert np.abs(cv2.imread(str(output)).astype(int) - cv2.imread(str(source))).mean() > 0.5


def test_process_images_fails_only_the_batch_whose_generator_call_failed(weights, tmp_path):
    config = process_config(weights["random"], crop_size=32, batch_size=2)
    models = replace(load_models(config), synthesizer=FailingOnceSynthesizer(weights["random"]))
    outcomes = list(process_images(image_pairs(tmp_path, 4), config, models))
    assert [str(o.error) if o.error else "ok" for o in outcomes] == ["out of memory", "out of memory", "ok", "ok"]


def test_process_images_stops_its_threads_when_the_caller_stops_early(weights, tmp_path):
    config = process_config(weights["random"], crop_size=32, batch_size=2)
    before = threading.active_count()
    outcomes = process_images(image_pairs(tmp_path, 6), config, load_models(config))
    next(outcomes)
    outcomes.close()
    assert threading.active_count() == before


def test_a_schedule_that_edits_no_still_warns_once(weights, tmp_path, caplog):
    config = process_config(weights["random"], crop_size=32, expression="happy@1-3")
    with caplog.at_level(logging.WARNING, logger="pipeline.process"):
        outcomes = list(process_images(image_pairs(tmp_path, 3), config))
    assert [o.result.faces_edited for o in outcomes] == [0, 0, 0]
    assert caplog.text.count("edits nothing at 0 s, the only moment of a still image") == 1


def test_one_photo_goes_through_the_still_image_workflow(weights, tmp_path, monkeypatch):
    """process on a photo runs the same stages as convert's photos (no copy of the workflow)."""
    import pipeline.stills
    from pipeline.process import process_file

    calls = []
    original = pipeline.stills.plan_tasks

    def counted(tasks, models, config):
        calls.append(1)
        return original(tasks, models, config)
    monkeypatch.setattr(pipeline.stills, "plan_tasks", counted)
    source = tmp_path / "in.png"
    cv2.imwrite(str(source), portrait())
    result = process_file(source, tmp_path / "out.png", process_config(weights["identity"]))
    assert calls == [1] and result.kind == "image" and (tmp_path / "out.png").is_file()
