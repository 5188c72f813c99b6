"""Judges: the Keras -> torch port against a numpy reference of TF semantics, the crops, and both real models."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from pipeline.evaluation.judges import (
    FER_BOX_CENTER, FER_BOX_SIDE, FER_LABELS, FER_ORDER, FER_TO_CANONICAL, ExpressionJudge,
    IdentityJudge, arcface_crop, cosine_similarity, fer_affine, fer_input, fer_model_path, top_expression,
)
from pipeline.evaluation.keras_port import JudgeError, load_keras_model, tf_same_padding
from pipeline.evaluation.prepare import TFEID_CODES
from pipeline.faces.align import crop_template, select_faces
from pipeline.faces.detector import DetectorConfig, FaceDetector
from usgan.expressions import EXPRESSIONS

TFEID = "data/tfeid/faces_256x256"


# --- a tiny Keras 2 HDF5 model and a numpy reference with TensorFlow's semantics ------------------------------------


def _layer(cls: str, name: str, inputs: list[str], **config) -> dict:
    return {"class_name": cls, "name": name, "config": {"name": name, **config},
            "inbound_nodes": [[[i, 0, 0, {}] for i in inputs]] if inputs else []}


def _tiny_graph() -> list[dict]:
    conv = dict(activation="linear", use_bias=False, strides=[1, 1])
    return [
        _layer("InputLayer", "input_1", [], batch_input_shape=[None, 10, 10, 2]),
        _layer("Conv2D", "conv_a", ["input_1"], filters=3, kernel_size=[3, 3], padding="valid", **conv),
        _layer("BatchNormalization", "bn_a", ["conv_a"], epsilon=1e-3, axis=-1),
        _layer("Activation", "relu_a", ["bn_a"], activation="relu"),
        _layer("SeparableConv2D", "sep_b", ["relu_a"], filters=4, kernel_size=[3, 3], padding="same",
               depth_multiplier=2, **conv),
        _layer("MaxPooling2D", "pool_b", ["sep_b"], pool_size=[3, 3], strides=[2, 2], padding="same"),
        _layer("Conv2D", "short_b", ["relu_a"], filters=4, kernel_size=[1, 1], padding="same",
               **{**conv, "strides": [2, 2]}),
        _layer("Add", "add_b", ["pool_b", "short_b"]),
        _layer("Conv2D", "conv_c", ["add_b"], filters=3, kernel_size=[3, 3], padding="same",
               **{**conv, "use_bias": True}),
        _layer("GlobalAveragePooling2D", "gap", ["conv_c"]),
        _layer("Activation", "predictions", ["gap"], activation="softmax"),
    ]


def _tiny_weights(rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    r = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    return {
        "conv_a": {"kernel": r(3, 3, 2, 3)},
        "bn_a": {"gamma": r(3), "beta": r(3), "moving_mean": r(3), "moving_variance": np.abs(r(3)) + 0.5},
        "sep_b": {"depthwise_kernel": r(3, 3, 3, 2), "pointwise_kernel": r(1, 1, 6, 4)},
        "short_b": {"kernel": r(1, 1, 3, 4)},
        "conv_c": {"kernel": r(3, 3, 4, 3), "bias": r(3)},
    }


def write_keras_h5(path: Path, layers: list[dict], weights: dict[str, dict[str, np.ndarray]]) -> None:
    """The layout Keras 2.0 writes: model_config JSON, model_weights/<layer>/<layer>_1/<name>:0 with weight_names."""
    with h5py.File(path, "w") as handle:
        config = {"class_name": "Model", "config": {"name": "tiny", "layers": layers,
                                                    "output_layers": [[layers[-1]["name"], 0, 0]]}}
        handle.attrs["model_config"] = json.dumps(config)
        group = handle.create_group("model_weights")
        for layer in layers:
            sub = group.create_group(layer["name"])
            names = [f"{layer['name']}_1/{key}:0" for key in weights.get(layer["name"], {})]
            sub.attrs["weight_names"] = np.array([n.encode() for n in names])
            for name, value in zip(names, weights.get(layer["name"], {}).values()):
                sub.create_dataset(name, data=value)


def _pad(x: np.ndarray, k: int, s: int, value: float) -> np.ndarray:
    (top, bottom), (left, right) = tf_same_padding(x.shape[0], k, s), tf_same_padding(x.shape[1], k, s)
    return np.pad(x, ((top, bottom), (left, right), (0, 0)), constant_values=value)


def _windows(x: np.ndarray, k: int, s: int):
    for i in range((x.shape[0] - k) // s + 1):
        for j in range((x.shape[1] - k) // s + 1):
            yield i, j, x[i * s:i * s + k, j * s:j * s + k]


def ref_conv(x, kernel, stride=1, same=False):
    k = kernel.shape[0]
    x = _pad(x, k, stride, 0.0) if same else x
    out = np.zeros(((x.shape[0] - k) // stride + 1, (x.shape[1] - k) // stride + 1, kernel.shape[3]), np.float64)
    for i, j, window in _windows(x, k, stride):
        out[i, j] = np.einsum("hwc,hwco->o", window, kernel)
    return out


def ref_depthwise(x, kernel):
    x = _pad(x, 3, 1, 0.0)
    out = np.zeros((x.shape[0] - 2, x.shape[1] - 2, kernel.shape[2] * kernel.shape[3]))
    for i, j, window in _windows(x, 3, 1):
        out[i, j] = np.einsum("hwc,hwcm->cm", window, kernel).reshape(-1)  # channel c*mult+m, as Keras
    return out


def ref_maxpool(x):
    x = _pad(x, 3, 2, -np.inf)
    out = np.zeros(((x.shape[0] - 3) // 2 + 1, (x.shape[1] - 3) // 2 + 1, x.shape[2]))
    for i, j, window in _windows(x, 3, 2):
        out[i, j] = window.max(axis=(0, 1))
    return out


def reference_forward(x: np.ndarray, w: dict[str, dict[str, np.ndarray]]) -> np.ndarray:
    """The tiny graph in NHWC float64, written from the TF/Keras definitions, for one (10, 10, 2) image."""
    bn = w["bn_a"]
    a = ref_conv(x, w["conv_a"]["kernel"])
    a = np.maximum(bn["gamma"] * (a - bn["moving_mean"]) / np.sqrt(bn["moving_variance"] + 1e-3) + bn["beta"], 0)
    b = ref_conv(ref_depthwise(a, w["sep_b"]["depthwise_kernel"]), w["sep_b"]["pointwise_kernel"])
    b = ref_maxpool(b) + ref_conv(a, w["short_b"]["kernel"], stride=2, same=True)
    c = (ref_conv(b, w["conv_c"]["kernel"], same=True) + w["conv_c"]["bias"]).mean(axis=(0, 1))
    return np.exp(c) / np.exp(c).sum()


@pytest.mark.parametrize("size,kernel,stride,expected", [
    (64, 3, 1, (1, 1)), (60, 3, 2, (0, 1)), (15, 3, 2, (1, 1)), (8, 3, 2, (0, 1)), (15, 1, 2, (0, 0)),
])
def test_tf_same_padding_puts_the_odd_pixel_after(size, kernel, stride, expected):
    assert tf_same_padding(size, kernel, stride) == expected


def test_keras_port_matches_numpy_reference(tmp_path):
    rng = np.random.default_rng(0)
    weights = _tiny_weights(rng)
    write_keras_h5(tmp_path / "tiny.h5", _tiny_graph(), weights)
    model = load_keras_model(tmp_path / "tiny.h5")
    images = rng.normal(size=(2, 10, 10, 2)).astype(np.float32)
    with torch.no_grad():
        got = model(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    expected = np.stack([reference_forward(image.astype(np.float64), weights) for image in images])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_unsupported_keras_layer_is_a_one_line_error(tmp_path):
    layers = [_layer("InputLayer", "input_1", []), _layer("LSTM", "lstm", ["input_1"])]
    write_keras_h5(tmp_path / "bad.h5", layers, {})
    with pytest.raises(JudgeError, match=r"bad.h5: Keras layer LSTM is not supported by the port$"):
        load_keras_model(tmp_path / "bad.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(JudgeError, match="junk.h5: cannot read the Keras model"):
        load_keras_model(tmp_path / "junk.h5")


# --- the real expression judge ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def expression_judge() -> ExpressionJudge:
    return ExpressionJudge()


@pytest.fixture(scope="module")
def identity_judge() -> IdentityJudge:
    return IdentityJudge()


def test_label_order_maps_fer_to_canonical_names():
    assert [FER_TO_CANONICAL[FER_LABELS[i]] for i in FER_ORDER] == list(EXPRESSIONS)


def test_fer_model_is_found_without_importing_fer():
    import sys

    assert fer_model_path().is_file() and "fer" not in sys.modules


def test_real_judge_outputs_probabilities(expression_judge):
    grey = np.random.default_rng(1).integers(0, 256, size=(3, 64, 64), dtype=np.uint8)
    probs = expression_judge.predict_inputs(grey)
    assert probs.shape == (3, 7) and np.allclose(probs.sum(1), 1.0, atol=1e-5) and (probs >= 0).all()
    np.testing.assert_array_equal(probs, expression_judge.predict_inputs(grey))  # eval mode: deterministic
    with pytest.raises(ValueError, match="64, 64"):
        expression_judge.predict_inputs(grey[:, :32])


def test_fer_box_lands_on_the_judge_input():
    affine = fer_affine(crop_template(128).astype(np.float32))
    half = FER_BOX_SIDE / 2
    corners = np.array([[FER_BOX_CENTER[0] - half, FER_BOX_CENTER[1] - half, 1.0],
                        [FER_BOX_CENTER[0] + half, FER_BOX_CENTER[1] + half, 1.0]])
    np.testing.assert_allclose(corners @ affine.T, [[0, 0], [64, 64]], atol=1e-4)


def test_fer_input_follows_the_face_not_the_frame():
    """Moving and scaling the face in the frame (and its landmarks with it) gives the same judge input."""
    rng = np.random.default_rng(2)
    frame = cv2.resize(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), (128, 128), interpolation=cv2.INTER_CUBIC)
    landmarks = crop_template(128).astype(np.float32)
    moved = cv2.warpAffine(frame, np.array([[2.0, 0, 40], [0, 2.0, 30]]), (340, 320), flags=cv2.INTER_CUBIC)
    crop_a, crop_b = fer_input(frame, landmarks), fer_input(moved, landmarks * 2 + np.array([40, 30], np.float32))
    assert np.abs(crop_a.astype(int) - crop_b).mean() < 4


def test_arcface_crop_equals_insightface_norm_crop():
    from insightface.utils.face_align import norm_crop

    frame = np.random.default_rng(3).integers(0, 256, (200, 180, 3), dtype=np.uint8)
    landmarks = (crop_template(128) * 1.2 + np.array([10.0, 20.0])).astype(np.float32)
    assert np.abs(arcface_crop(frame, landmarks).astype(int) - norm_crop(frame, landmarks, 112)).max() <= 1


# --- on real TFEID photos ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(DetectorConfig(pad=0.5))


def _face(detector: FaceDetector, path: Path) -> tuple[np.ndarray, np.ndarray]:
    frame = cv2.imread(str(path))
    return frame, select_faces(detector.detect_faces(frame), "largest")[0].landmarks


@pytest.mark.parametrize("name,expected", [("0111b01.jpg", "happy"), ("0211b02.jpg", "happy"),
                                           ("0101a02.jpg", "neutral")])
def test_judge_reads_clear_tfeid_expressions(shared_dir, detector, expression_judge, name, expected):
    frame, landmarks = _face(detector, shared_dir / TFEID / name)
    assert top_expression(expression_judge.predict(frame, landmarks)) == expected


def test_identity_same_image_is_one_and_other_performers_are_lower(shared_dir, detector, identity_judge):
    faces = [_face(detector, shared_dir / TFEID / name) for name in ("0111b01.jpg", "0111b02.jpg", "0211b02.jpg")]
    embeddings = identity_judge.embed_batch([f for f, _ in faces], [lm for _, lm in faces])
    assert embeddings.shape == (3, 512) and np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(cosine_similarity(embeddings[0], identity_judge.embed(*faces[0])), 1.0, atol=1e-5)
    same_performer, other_performer = embeddings[0] @ embeddings[1], embeddings[0] @ embeddings[2]
    assert same_performer > 0.6 and other_performer < same_performer - 0.2


@pytest.mark.slow
def test_judge_accuracy_on_tfeid_subset_matches_the_reference(shared_dir, detector, expression_judge):
    """Every 4th labelled photo. Reference on all of them: ~51% overall, happy .90, neutral .83, disgust .02."""
    paths = [p for p in sorted((shared_dir / TFEID).glob("*.jpg")) if p.name[4] in TFEID_CODES][::4]
    faces = [_face(detector, p) for p in paths]
    probs = expression_judge.predict_batch([f for f, _ in faces], [lm for _, lm in faces])
    labels = [TFEID_CODES[p.name[4]] for p in paths]
    hits, totals = Counter(), Counter(labels)
    for label, p in zip(labels, probs):
        hits[label] += top_expression(p) == label
    overall = sum(hits.values()) / len(paths)
    assert 0.42 <= overall <= 0.60, overall
    assert hits["happy"] / totals["happy"] >= 0.75 and hits["disgusted"] / totals["disgusted"] <= 0.25
