"""scripts/ship_weights.py: a checkpoint's generator as the user-facing file (fp16, header, edit gain)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import ship_weights  # noqa: E402
from usgan.checkpoint import WeightsInfo, load_generator, save_generator  # noqa: E402
from usgan.model import Generator, GeneratorConfig  # noqa: E402


def checkpoint(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    save_generator(path, Generator(GeneratorConfig(conv_dim=8, residual_blur=3)), WeightsInfo(image_size=32, step=7))
    return path


def test_ships_fp16_weights_with_the_header_users_see(tmp_path):
    source = checkpoint(tmp_path / "step_7.safetensors")
    out = tmp_path / "shipped.safetensors"
    result = CliRunner().invoke(ship_weights.main, [str(source), str(out), "--edit-gain", "1.5", "--recipe", "r.yaml",
                                                    "--validation", "16, 17", "--trained-on", "2-core CPU"])
    assert result.exit_code == 0, result.output
    assert "edit gain 1.5" in result.output and out.stat().st_size < 0.6 * source.stat().st_size
    shipped, info = load_generator(out)
    original, _ = load_generator(source)
    assert (info.edit_gain, info.step, info.image_size, info.dataset) == (1.5, 7, 32, "tfeid")
    assert info.generator == original.config and "research use only" in info.license
    assert info.notes == {"source": "step_7.safetensors", "recipe": "r.yaml", "trained_on": "2-core CPU",
                          "validation_identities": ["16", "17"]}
    for name, tensor in original.state_dict().items():
        torch.testing.assert_close(shipped.state_dict()[name], tensor, atol=2e-3, rtol=1e-3)  # fp16 rounding


def test_ships_per_expression_gains(tmp_path):
    source = checkpoint(tmp_path / "step_7.safetensors")
    out = tmp_path / "shipped.safetensors"
    result = CliRunner().invoke(ship_weights.main, [str(source), str(out), "--edit-gain", "1.1",
                                                    "--expression-gain", "happy=1.5"])
    assert result.exit_code == 0, result.output
    assert "edit gain 1.1, happy 1.5" in result.output
    info = load_generator(out)[1]
    assert (info.edit_gain, info.expression_gains) == (1.1, {"happy": 1.5})
    bad = CliRunner().invoke(ship_weights.main, [str(source), str(tmp_path / "b.safetensors"),
                                                 "--expression-gain", "happy=9"])
    assert bad.exit_code == 1 and "expression_gains.happy must be in" in bad.output
    assert not (tmp_path / "b.safetensors").exists()


def test_refuses_to_overwrite_its_input_and_bad_files_are_one_line_errors(tmp_path):
    source = checkpoint(tmp_path / "g.safetensors")
    before = source.read_bytes()
    result = CliRunner().invoke(ship_weights.main, [str(source), str(source)])
    assert result.exit_code == 1 and "output path is the input file" in result.output
    assert source.read_bytes() == before
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(ship_weights.main, [str(junk), str(tmp_path / "out.safetensors")])
    assert result.exit_code == 1 and "junk.safetensors" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out.safetensors").exists()


def test_several_checkpoints_ship_their_mean_generator_and_name_them(tmp_path):
    sources = [checkpoint(tmp_path / f"step_{seed}.safetensors", seed) for seed in (1, 2)]
    out = tmp_path / "mean.safetensors"
    result = CliRunner().invoke(ship_weights.main, [*map(str, sources), str(out), "--fp32"])
    assert result.exit_code == 0, result.output
    assert "mean of 2 checkpoints" in result.output
    shipped, info = load_generator(out)
    assert info.notes["averaged"] == ["step_1.safetensors", "step_2.safetensors"]
    assert info.notes["source"] == "step_2.safetensors"
    first, second = (load_generator(path)[0].state_dict() for path in sources)
    mean = (first["main.0.weight"] + second["main.0.weight"]) / 2
    torch.testing.assert_close(shipped.state_dict()["main.0.weight"], mean)
    result = CliRunner().invoke(ship_weights.main, [str(sources[0]), str(out), str(out)])
    assert result.exit_code == 1 and "output path is the input file" in result.output
