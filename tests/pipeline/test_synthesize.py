"""pipeline.synthesize: both back-ends on real tiny generators, exact identity, the ONNX export cache."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import pipeline.config
import pipeline.synthesize as synthesize
from clips import psnr, save_weights
from usgan.errors import UserError
from pipeline.config import OnnxConfig, SynthesizerConfig, WeightsMissingError, resolve_weights
from pipeline.synthesize import (
    OnnxSynthesizer, TorchSynthesizer, build_synthesizer, from_model_output, onnx_cache_path, to_model_input,
)


def crops(size: int, count: int = 4) -> np.ndarray:
    return np.random.default_rng(size).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


TARGETS = np.eye(7, dtype=np.float32)[[3, 5, 0, 6]]
TARGETS[3] = 0.0
TARGETS[3, [3, 5]] = 0.5  # a cross-fade mix between happy and sad
INTENSITY = np.array([1.0, 0.5, 0.0, 1.0], np.float32)


def make(backend: str, path, tmp_path):
    if backend == "torch":
        return TorchSynthesizer(path)
    return OnnxSynthesizer(path, OnnxConfig(preference="cpu", cache_dir=str(tmp_path / "onnx")))


def test_uint8_conversion_is_exact_and_bgr_to_rgb():
    values = np.arange(256, dtype=np.uint8)
    image = np.stack([values, values[::-1], np.roll(values, 7)], axis=-1).reshape(1, 16, 16, 3)
    x = to_model_input(image)
    assert x.shape == (1, 3, 16, 16) and x.dtype == np.float32 and x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_array_equal(x[0, 0], to_model_input(image[..., ::-1].copy())[0, 2])  # R plane = BGR's last
    np.testing.assert_array_equal(from_model_output(x), image)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("size", [32, 96])
def test_zero_residual_returns_the_crops_bit_exactly(weights, tmp_path, backend, size):
    synthesizer = make(backend, weights["identity"], tmp_path)
    batch = crops(size)
    out = synthesizer.synthesize(batch, TARGETS, INTENSITY)
    assert out.dtype == np.uint8 and out.shape == batch.shape
    np.testing.assert_array_equal(out, batch)


@pytest.mark.parametrize("size", [32, 96])
def test_torch_and_onnx_back_ends_agree(weights, tmp_path, size):
    batch = crops(size)
    a = make("torch", weights["random"], tmp_path).synthesize(batch, TARGETS, INTENSITY)
    b = make("onnx", weights["random"], tmp_path).synthesize(batch, TARGETS, INTENSITY)
    difference = np.abs(a.astype(int) - b.astype(int))
    assert difference.max() <= 1 and difference.mean() < 0.01  # rounding of values within 1e-5 of a .5 boundary
    assert np.abs(a.astype(int) - batch).mean() > 5  # the random generator really changes the crops
    np.testing.assert_array_equal(a[2], batch[2])  # intensity 0: unchanged


def test_intensity_scales_the_change(weights):
    synthesizer = TorchSynthesizer(weights["random"])
    batch = np.repeat(crops(64, 1), 2, axis=0)
    out = synthesizer.synthesize(batch, np.repeat(TARGETS[:1], 2, axis=0), np.array([1.0, 0.5], np.float32))
    full, half = out[0].astype(float) - batch[0], out[1].astype(float) - batch[1]
    unclipped = (batch[0] > 40) & (batch[0] < 215) & (np.abs(full) < 40)  # away from the clamp at 0 and 255
    np.testing.assert_allclose(half[unclipped], full[unclipped] / 2, atol=1.0)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_the_weights_edit_gain_scales_the_change_like_intensity(weights, tmp_path, backend):
    gained = save_weights(tmp_path / "gain.safetensors", identity=False, edit_gain=1.5)
    batch = np.repeat(crops(64, 1), 2, axis=0)
    targets = np.repeat(TARGETS[:1], 2, axis=0)
    plain = make(backend, weights["random"], tmp_path).synthesize(batch, targets, np.array([1.0, 0.0], np.float32))
    out = make(backend, gained, tmp_path).synthesize(batch, targets, np.array([0.5, 0.0], np.float32))
    full, scaled = plain[0].astype(float) - batch[0], out[0].astype(float) - batch[0]
    unclipped = (batch[0] > 40) & (batch[0] < 215) & (np.abs(full) < 40)
    np.testing.assert_allclose(scaled[unclipped], full[unclipped] * 0.75, atol=1.0)  # 0.5 intensity x 1.5 gain
    np.testing.assert_array_equal(out[1], batch[1])  # intensity 0 still leaves the crop alone


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_the_weights_expression_gains_scale_only_their_targets(weights, tmp_path, backend):
    gained = save_weights(tmp_path / "gain.safetensors", identity=False, expression_gains={"happy": 0.5})
    batch = np.repeat(crops(64, 1), 2, axis=0)
    targets = TARGETS[:2]  # happy, sad
    ones = np.ones(2, np.float32)
    plain = make(backend, weights["random"], tmp_path).synthesize(batch, targets, ones).astype(float) - batch
    out = make(backend, gained, tmp_path).synthesize(batch, targets, ones).astype(float) - batch
    unclipped = (batch > 40) & (batch < 215) & (np.abs(plain) < 40)
    np.testing.assert_allclose(out[0][unclipped[0]], plain[0][unclipped[0]] * 0.5, atol=1.0)  # its gain
    np.testing.assert_allclose(out[1][unclipped[1]], plain[1][unclipped[1]], atol=1.0)  # sad: edit_gain 1


def test_onnx_export_is_cached_by_the_weights_content(weights, tmp_path, monkeypatch):
    exports = []
    original = synthesize.export_onnx
    monkeypatch.setattr(synthesize, "export_onnx", lambda *a, **k: exports.append(a) or original(*a, **k))
    config = OnnxConfig(preference="cpu", cache_dir=str(tmp_path / "cache"))
    OnnxSynthesizer(weights["random"], config)
    renamed = shutil.copy(weights["random"], tmp_path / "renamed.safetensors")
    OnnxSynthesizer(renamed, config)  # same content under another name: no new export
    assert len(exports) == 1
    cached = onnx_cache_path(weights["random"], False, tmp_path / "cache")
    assert cached.is_file() and cached == onnx_cache_path(renamed, False, tmp_path / "cache")
    assert onnx_cache_path(weights["identity"], False, tmp_path / "cache") != cached


def test_build_synthesizer_follows_the_config(weights, tmp_path):
    onnx = OnnxConfig(preference="cpu", cache_dir=str(tmp_path))
    assert isinstance(build_synthesizer(SynthesizerConfig("torch", weights["random"])), TorchSynthesizer)
    built = build_synthesizer(SynthesizerConfig("onnx", weights["random"], onnx=onnx))
    assert isinstance(built, OnnxSynthesizer) and built.image_size == 32 and not built.fp16


def test_default_weights_missing_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline.config, "DEFAULT_WEIGHTS", tmp_path / "weights" / "usgan_tfeid.safetensors")
    with pytest.raises(WeightsMissingError,
                       match="default weights missing from this checkout: pass --weights W.safetensors"):
        resolve_weights(None)
    assert resolve_weights(tmp_path / "w.safetensors") == tmp_path / "w.safetensors"


@pytest.mark.parametrize("change, message", [
    (lambda c, t, i: (c.astype(np.float32), t, i), "crops"),
    (lambda c, t, i: (c[:, :, :-1], t, i), "crops"),
    (lambda c, t, i: (c, t[:, :6], i), "targets"),
    (lambda c, t, i: (c, t, i[:2]), "intensity"),
])
def test_bad_batches_name_the_argument(weights, change, message):
    synthesizer = TorchSynthesizer(weights["identity"])
    with pytest.raises(ValueError, match=message):
        synthesizer.synthesize(*change(crops(32), TARGETS, INTENSITY))


def test_unwritable_onnx_cache_is_one_line(weights, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a regular file where the cache folder should be")
    with pytest.raises(UserError, match="cannot write the ONNX export"):
        OnnxSynthesizer(weights["random"], OnnxConfig(preference="cpu", cache_dir=str(blocker / "onnx")))


def test_torch_thread_count_is_restored_after_a_call(weights):
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        TorchSynthesizer(weights["random"], threads=1).synthesize(crops(32), TARGETS, INTENSITY)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not synthesize.bf16_native("cpu"), reason="this CPU has no native bfloat16")
def test_bf16_is_close_to_fp32_and_zero_intensity_stays_exact(weights):
    fp32 = TorchSynthesizer(weights["random"]).synthesize(crops(32), TARGETS, INTENSITY)
    bf16 = TorchSynthesizer(weights["random"], precision="bf16")
    out = bf16.synthesize(crops(32), TARGETS, INTENSITY)
    difference = np.abs(out.astype(int) - fp32.astype(int))
    assert bf16.precision == "bf16" and 0 < difference.max() <= 8 and difference.mean() < 1.0
    np.testing.assert_array_equal(out[2], crops(32)[2])  # intensity 0: the crop itself, bit-exact


def test_auto_precision_is_bf16_exactly_where_it_is_native(weights, monkeypatch):
    for native in (True, False):
        monkeypatch.setattr(synthesize, "bf16_native", lambda device_type, native=native: native)
        assert TorchSynthesizer(weights["random"], precision="auto").precision == ("bf16" if native else "fp32")


# ---------------------------------------------------------------- with warp fields (expression geometry)


def smooth_crops(size: int, count: int = 4) -> np.ndarray:
    """Face-like smooth crops (a blurred random image): warping them shows as shifted shading, not noise."""
    import cv2

    noisy = crops(size, count)
    return np.stack([cv2.GaussianBlur(crop, (0, 0), size / 24) for crop in noisy])


def fields(count: int = 4, strength: float = 0.03) -> np.ndarray:
    """(count, 32, 32, 2) coarse fields of the TPS that moves a few face points by up to `strength` crop units."""
    from usgan.tps import coarse_field

    rng = np.random.default_rng(1)
    source = torch.from_numpy(rng.uniform(0.3, 0.7, (count, 12, 2)))
    return coarse_field(source, source + torch.from_numpy(rng.uniform(-strength, strength, (count, 12, 2)))).numpy()


def make_warp(backend: str, path, tmp_path):
    if backend == "torch":
        return TorchSynthesizer(path)
    return OnnxSynthesizer(path, OnnxConfig(preference="cpu", cache_dir=str(tmp_path / "onnx")), warp=True)


@pytest.mark.parametrize("size", [32, 96])
def test_torch_and_onnx_agree_with_warp_fields(weights, tmp_path, size):
    batch, warps = smooth_crops(size), fields()
    a = make_warp("torch", weights["random"], tmp_path).synthesize(batch, TARGETS, INTENSITY, warps)
    b = make_warp("onnx", weights["random"], tmp_path).synthesize(batch, TARGETS, INTENSITY, warps)
    assert psnr(a, b) > 40
    unwarped = TorchSynthesizer(weights["random"]).synthesize(batch, TARGETS, INTENSITY)
    assert np.abs(a.astype(int) - unwarped).mean() > 0.5  # the fields really moved the crops
    assert psnr(a[2], batch[2]) < psnr(unwarped[2], batch[2])  # intensity 0 there, yet its field still warps it


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_zero_field_leaves_a_crop_exactly_as_the_generator_alone(weights, tmp_path, backend):
    batch, warps = smooth_crops(64), fields()
    warps[1] = 0.0
    synthesizer = make_warp(backend, weights["identity"], tmp_path)
    out = synthesizer.synthesize(batch, TARGETS, INTENSITY, warps)
    np.testing.assert_array_equal(out[1], batch[1])  # identity generator, zero field: the crop, bit-exact
    assert np.abs(out[0].astype(int) - batch[0]).max() > 10
    if backend == "onnx":  # the warp graph without fields is the generator alone
        np.testing.assert_array_equal(synthesizer.synthesize(batch, TARGETS, INTENSITY), batch)


def test_the_warp_graph_is_cached_beside_the_generator_alone_and_fields_need_it(weights, tmp_path):
    config = OnnxConfig(preference="cpu", cache_dir=str(tmp_path / "onnx"))
    plain = OnnxSynthesizer(weights["random"], config)
    OnnxSynthesizer(weights["random"], config, warp=True)
    assert sorted(p.name for p in (tmp_path / "onnx").glob("*.onnx")) == sorted(
        [onnx_cache_path(weights["random"], False, tmp_path / "onnx").name,
         onnx_cache_path(weights["random"], False, tmp_path / "onnx", warp=True).name])
    with pytest.raises(ValueError, match="fields: this ONNX synthesizer runs the generator alone"):
        plain.synthesize(crops(32), TARGETS, INTENSITY, fields())
    with pytest.raises(ValueError, match="fields: expected"):
        TorchSynthesizer(weights["random"]).synthesize(crops(32), TARGETS, INTENSITY, fields()[:, :16])
