"""ONNX export (interface, parity with torch and the official code, fp16) and ONNX Runtime sessions/providers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from cli import cli
from official_reference import canonical_to_official, make_official, official_test_output, sample_inputs
from usgan.checkpoint import CheckpointError, WeightsInfo, load_generator, save_generator
from usgan.official import import_official
from usgan.model import Generator, GeneratorConfig
from usgan.export import PARITY_TOLERANCE, PRECISION_KEY, ExportError, export_onnx
from usgan.sessions import create_session, run_generator, session_weights_info
from usgan.providers import CPU, CUDA, TENSORRT, SessionError, build_providers, usable_providers

IMAGE_SIZE = 32  # small crops keep the CPU parity runs fast; H and W are dynamic in the graph anyway


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """Official-format weights (width 64) imported, then exported once in fp32 and once in fp16."""
    root = tmp_path_factory.mktemp("export")
    torch.save(make_official(64).state_dict(), root / "usgan_87_G.ckpt")
    import_official(root / "usgan_87_G.ckpt", root / "g.safetensors", image_size=IMAGE_SIZE)
    paths = {"weights": root / "g.safetensors", "fp32": root / "g.onnx", "fp16": root / "g_fp16.onnx"}
    paths["fp32_result"] = export_onnx(paths["weights"], paths["fp32"])  # type: ignore[assignment]
    paths["fp16_result"] = export_onnx(paths["weights"], paths["fp16"], fp16=True)  # type: ignore[assignment]
    return paths


def _cpu_session(path: Path):
    return create_session(path, "cpu", fp16=False, cache_dir=path.parent / "trt", threads=1)


def _io_signature(values) -> list[tuple[str, int, list]]:
    return [(v.name, v.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
            for v in values]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnx_has_float32_image_expression_interface_and_metadata(exported, precision):
    model = onnx.load(exported[precision])
    assert _io_signature(model.graph.input) == [
        ("image", onnx.TensorProto.FLOAT, ["batch", 3, "height", "width"]),
        ("expression", onnx.TensorProto.FLOAT, ["batch", 7]),
    ]
    assert _io_signature(model.graph.output) == [("output", onnx.TensorProto.FLOAT, ["batch", 3, "height", "width"])]
    weight_types = {init.data_type for init in model.graph.initializer if len(init.dims) == 4}
    assert weight_types == {onnx.TensorProto.FLOAT16 if precision == "fp16" else onnx.TensorProto.FLOAT}
    props = {p.key: p.value for p in model.metadata_props}
    assert props[PRECISION_KEY] == precision
    assert json.loads(props["usgan"])["image_size"] == IMAGE_SIZE
    assert session_weights_info(_cpu_session(exported[precision]), exported[precision]).image_size == IMAGE_SIZE


@pytest.mark.parametrize("batch,height,width", [(1, 32, 32), (3, 32, 32), (2, 48, 64)])
def test_fp32_onnx_matches_torch_and_official_code(exported, batch, height, width):
    generator, _ = load_generator(exported["weights"])
    x, c = sample_inputs(batch=batch, size=height)
    x = torch.nn.functional.interpolate(x, size=(height, width))
    onnx_out = run_generator(_cpu_session(exported["fp32"]), x.numpy(), c.numpy())
    with torch.no_grad():
        torch_out = generator(x, c).numpy()
    official_out = official_test_output(make_official(64), x, canonical_to_official(c)).numpy()
    assert onnx_out.shape == (batch, 3, height, width) and onnx_out.dtype == np.float32
    assert np.abs(onnx_out - torch_out).max() <= 1e-4
    assert np.abs(onnx_out - official_out).max() <= 1e-4
    assert exported["fp32_result"].max_abs_diff <= 1e-4


def test_fp16_onnx_is_close_to_fp32_torch(exported):
    generator, _ = load_generator(exported["weights"])
    x, c = sample_inputs(batch=3, size=IMAGE_SIZE)
    onnx_out = run_generator(_cpu_session(exported["fp16"]), x.numpy(), c.numpy())
    with torch.no_grad():
        torch_out = generator(x, c).numpy()
    # Measured ~2e-3 with these weights (fp16 rounding through 20 layers); 1e-2 leaves margin across CPUs.
    assert np.abs(onnx_out - torch_out).max() <= 1e-2
    assert np.abs(onnx_out - torch_out).max() > 0  # really computed in fp16
    assert exported["fp16_result"].precision == "fp16"


def test_export_refuses_bad_requests_without_writing(exported, tmp_path, monkeypatch):
    with pytest.raises(ExportError, match="opset 9 unsupported"):
        export_onnx(exported["weights"], tmp_path / "a.onnx", opset=9)
    with pytest.raises(CheckpointError, match="output path is the input"):
        export_onnx(exported["weights"], exported["weights"])
    (tmp_path / "bad.safetensors").write_text("not weights")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        export_onnx(tmp_path / "bad.safetensors", tmp_path / "b.onnx")
    monkeypatch.setitem(PARITY_TOLERANCE, "fp32", -1.0)  # any real difference now fails the parity check
    with pytest.raises(ExportError, match="differs from torch"):
        export_onnx(exported["weights"], tmp_path / "c.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]


def test_cli_export(exported, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["export", str(exported["weights"]), str(tmp_path / "g.onnx"), "--opset", "18"])
    assert result.exit_code == 0, result.output
    assert "max |onnx - torch|" in result.stdout and onnx.load(tmp_path / "g.onnx").opset_import[0].version == 18
    refused = runner.invoke(cli, ["export", str(exported["weights"]), str(exported["weights"])])
    assert refused.exit_code == 1 and refused.stderr.startswith("error: ")


# --- sessions and providers ---


def test_session_rejects_foreign_and_broken_onnx(tmp_path):
    identity = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]),
        opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(identity, tmp_path / "identity.onnx")
    with pytest.raises(SessionError, match="identity.onnx: not a US-GAN generator export"):
        _cpu_session(tmp_path / "identity.onnx")
    (tmp_path / "broken.onnx").write_text("garbage")
    with pytest.raises(SessionError, match="broken.onnx: ONNX Runtime cannot load it"):
        _cpu_session(tmp_path / "broken.onnx")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU fallback")
def test_auto_session_without_gpu_uses_cpu_quietly(exported, caplog):
    with caplog.at_level(logging.INFO, logger="usgan.sessions"):
        session = create_session(exported["fp32"], "auto", fp16=False, cache_dir=exported["fp32"].parent / "trt")
    assert session.get_providers() == [CPU]
    assert [r.levelno for r in caplog.records] == [logging.INFO] and CPU in caplog.records[0].getMessage()


ALL = [TENSORRT, CUDA, CPU]


@pytest.mark.parametrize(
    "preference,available,expected",
    [("auto", ALL, ALL), ("auto", [CUDA, CPU], [CUDA, CPU]), ("auto", [CPU], [CPU]), ("tensorrt", ALL, ALL),
     ("tensorrt", [TENSORRT, CPU], [TENSORRT, CPU]), ("cuda", ALL, [CUDA, CPU]), ("cpu", ALL, [CPU])],
)
def test_build_providers_order(preference, available, expected):
    assert [name for name, _ in build_providers(preference, available, False, Path("cache"))] == expected


@pytest.mark.parametrize("fp16", [False, True])
def test_build_providers_tensorrt_options(fp16):
    providers = dict(build_providers("auto", ALL, fp16, Path("/tmp/trt")))
    options = providers[TENSORRT]
    assert options["trt_fp16_enable"] is fp16
    assert options["trt_engine_cache_enable"] is True and options["trt_timing_cache_enable"] is True
    expected_cache = f"/tmp/trt/{'fp16' if fp16 else 'fp32'}"
    assert options["trt_engine_cache_path"] == options["trt_timing_cache_path"] == expected_cache
    assert providers[CUDA]["device_id"] == 0 and providers[CPU] == {}


@pytest.mark.parametrize("preference,available", [("tensorrt", [CUDA, CPU]), ("cuda", [CPU]), ("gpu", ALL)])
def test_build_providers_rejects_unusable_or_unknown_preference(preference, available):
    with pytest.raises(SessionError):
        build_providers(preference, available, False, Path("cache"))  # type: ignore[arg-type]


def test_usable_providers_drops_gpu_providers_without_a_cuda_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert usable_providers(ALL) == [CPU]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="TensorRT needs a CUDA GPU")
def test_tensorrt_session_builds_cached_engine(exported, tmp_path):
    import onnxruntime as ort

    if TENSORRT not in usable_providers(ort.get_available_providers()):
        pytest.skip("TensorRT libraries (libnvinfer) are not installed")
    session = create_session(exported["fp32"], "tensorrt", fp16=False, cache_dir=tmp_path, threads=1)
    assert session.get_providers()[0] == TENSORRT
    x, c = sample_inputs(batch=2, size=IMAGE_SIZE)
    trt_out = run_generator(session, x.numpy(), c.numpy())  # the engine is built on the first run
    assert any((tmp_path / "fp32").glob("*.engine")) and any((tmp_path / "fp32").glob("*timing*"))
    with torch.no_grad():
        torch_out = load_generator(exported["weights"])[0](x, c).numpy()
    assert np.abs(trt_out - torch_out).max() <= 1e-2  # TensorRT may use TF32 convolutions


def test_residual_blur_is_in_the_exported_graph(tmp_path):
    generator = Generator(GeneratorConfig(conv_dim=8, residual_blur=3)).eval()
    info = WeightsInfo(generator=generator.config, image_size=IMAGE_SIZE)
    save_generator(tmp_path / "g.safetensors", generator, info)
    result = export_onnx(tmp_path / "g.safetensors", tmp_path / "g.onnx")
    x, c = sample_inputs(batch=2, size=IMAGE_SIZE)
    onnx_out = run_generator(_cpu_session(tmp_path / "g.onnx"), x.numpy(), c.numpy())
    plain = Generator(GeneratorConfig(conv_dim=8)).eval()
    plain.load_state_dict(generator.state_dict())
    with torch.no_grad():
        blurred, unblurred = generator(x, c).numpy(), plain(x, c).numpy()
    assert np.abs(onnx_out - blurred).max() <= 1e-4 and result.max_abs_diff <= 1e-4
    assert np.abs(onnx_out - unblurred).max() > 1e-3


def test_the_warp_graph_takes_crops_and_fields_and_matches_torch_at_any_crop_size(exported, tmp_path):
    from usgan.sessions import INTERFACES, run_warped_generator
    from usgan.inference import warped_residual

    result = export_onnx(exported["weights"], tmp_path / "warp.onnx", warp=True)
    model = onnx.load(tmp_path / "warp.onnx")
    assert ([i.name for i in model.graph.input], [o.name for o in model.graph.output]) == INTERFACES[True]
    assert result.max_abs_diff <= 1e-4
    generator, _ = load_generator(exported["weights"])
    session = _cpu_session(tmp_path / "warp.onnx")
    for crop_size in (IMAGE_SIZE, 3 * IMAGE_SIZE):
        image, expression = sample_inputs(batch=2, size=IMAGE_SIZE)
        crop = torch.nn.functional.interpolate(image, size=(crop_size, crop_size), mode="bilinear")
        field = torch.randn(2, 32, 32, 2, generator=torch.Generator().manual_seed(crop_size)) * 0.02
        warped, residual = run_warped_generator(session, crop.numpy(), image.numpy(), expression.numpy(),
                                                field.numpy())
        with torch.no_grad():
            expected = warped_residual(generator, crop, image, expression, field)
        assert warped.shape == (2, 3, crop_size, crop_size) and residual.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
        assert np.abs(warped - expected[0].numpy()).max() <= 1e-4
        assert np.abs(residual - expected[1].numpy()).max() <= 1e-4


def test_the_warp_graph_needs_opset_16(exported, tmp_path):
    with pytest.raises(ExportError, match="opset 15 unsupported; use 16..20"):
        export_onnx(exported["weights"], tmp_path / "w.onnx", opset=15, warp=True)


def test_the_texture_graph_stores_the_texture_and_matches_torch(exported, tmp_path):
    from usgan.export import parity_inputs
    from usgan.sessions import TEXTURE_INTERFACE, run_warped_generator
    from usgan.inference import warped_residual
    from usgan.texture import TextureInputs, TextureLayer, load_texture

    texture = load_texture(Path(__file__).resolve().parents[2] / "weights" / "texture.safetensors")
    result = export_onnx(exported["weights"], tmp_path / "texture.onnx", texture=texture)
    model = onnx.load(tmp_path / "texture.onnx")
    assert ([i.name for i in model.graph.input], [o.name for o in model.graph.output]) == TEXTURE_INTERFACE
    assert result.max_abs_diff <= 1e-4
    generator, _ = load_generator(exported["weights"])
    inputs = parity_inputs(3, IMAGE_SIZE, warp=True, texture=True)
    warped, residual = run_warped_generator(_cpu_session(tmp_path / "texture.onnx"), *inputs[:4], inputs[4:])
    tensors = [torch.from_numpy(a) for a in inputs]
    with torch.no_grad():
        plain = warped_residual(generator, *tensors[:4])
        expected = warped_residual(generator, *tensors[:4], (TextureLayer(texture), TextureInputs(*tensors[4:])))
    assert np.abs(warped - expected[0].numpy()).max() <= 1e-4
    assert np.abs(residual - expected[1].numpy()).max() <= 1e-4
    assert np.abs(warped - plain[0].numpy()).max() > 0.05  # the texture step is in the graph
