"""Our safetensors checkpoints and the import of the official torch.save'd generator state_dict."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Callable

import pytest
import torch
from click.testing import CliRunner

from cli import cli
from official_reference import canonical_to_official, make_official, official_test_output, sample_inputs
from usgan.checkpoint import (
    CheckpointError,
    WeightsInfo,
    average_generators,
    gain_text,
    load_generator,
    load_tensors,
    parse_expression_gains,
    save_generator,
    save_tensors,
)
from usgan.config import ConfigError
from usgan.official import OFFICIAL_DATASET, import_official
from usgan.errors import UserError
from usgan.expressions import EXPRESSIONS, PAPER_CODES
from usgan.model import Discriminator, Generator, GeneratorConfig


def save_official(path: Path, conv_dim: int = 16, blocks: int = 1, c_dim: int = 7) -> Path:
    """Write what the official training script writes: torch.save(G.state_dict(), path)."""
    torch.save(make_official(conv_dim, c_dim, blocks).state_dict(), path)
    return path


@pytest.mark.parametrize("conv_dim,blocks", [(64, 1), (16, 2)])
def test_import_official_reproduces_the_official_test_output(tmp_path, conv_dim, blocks):
    official_path = save_official(tmp_path / "usgan_87_G.ckpt", conv_dim, blocks)
    info = import_official(official_path, tmp_path / "g.safetensors", image_size=64)
    generator, loaded_info = load_generator(tmp_path / "g.safetensors")
    assert info.generator == loaded_info.generator == GeneratorConfig(conv_dim, 7, blocks)
    assert loaded_info.dataset == OFFICIAL_DATASET and loaded_info.image_size == 64
    assert loaded_info.notes["source_file"] == "usgan_87_G.ckpt"
    x, c = sample_inputs(batch=2, size=32)
    expected = official_test_output(make_official(conv_dim, 7, blocks), x, canonical_to_official(c))
    with torch.no_grad():
        assert (generator(x, c) - expected).abs().max().item() <= 1e-6


def test_import_maps_the_official_label_order_to_ours(tmp_path):
    """Official channel k is sorted(codes)[k] (AFS=fearful first): asking us for 'angry' must use its ANS channel."""
    official = make_official(16)
    torch.save(official.state_dict(), tmp_path / "usgan_87_G.ckpt")
    import_official(tmp_path / "usgan_87_G.ckpt", tmp_path / "g.safetensors")
    generator, info = load_generator(tmp_path / "g.safetensors")
    x, _ = sample_inputs(batch=1, size=32)
    angry = torch.zeros(1, 7)
    angry[0, EXPRESSIONS.index("angry")] = 1
    official_ans = torch.zeros(1, 7)
    official_ans[0, sorted(PAPER_CODES).index("ANS")] = 1
    with torch.no_grad():
        assert (generator(x, angry) - official_test_output(official, x, official_ans)).abs().max() <= 1e-6
        assert (generator(x, angry) - official_test_output(official, x, angry)).abs().max() > 1e-3
    assert info.notes["source_label_order"][0] == "fearful"


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": sd, "epoch": 87},
        lambda sd: {"G": sd},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
    ],
    ids=["state_dict-key", "G-key", "module-prefix"],
)
def test_import_accepts_common_wrappers(tmp_path, wrap):
    torch.save(wrap(make_official(16).state_dict()), tmp_path / "wrapped.ckpt")
    info = import_official(tmp_path / "wrapped.ckpt", tmp_path / "g.safetensors")
    assert info.generator == GeneratorConfig(16, 7, 1)


def _truncated(path: Path) -> None:
    data = save_official(path).read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _zip_not_torch(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")


class Pickled:
    """A class that weights_only loading must refuse to instantiate."""


def _without_key(path: Path) -> None:
    state = make_official(16).state_dict()
    del state["main.4.bias"]
    torch.save(state, path)


def _with_extra_key(path: Path) -> None:
    torch.save({**make_official(16).state_dict(), "main.99.weight": torch.zeros(1)}, path)


def _with_nan(path: Path) -> None:
    state = make_official(16).state_dict()
    state["main.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, path)


BAD_FILES: dict[str, Callable[[Path], object]] = {
    "empty": lambda p: p.write_bytes(b""),
    "truncated": _truncated,
    "corrupt-header": lambda p: p.write_bytes(b"\x00" * 64 + save_official(p).read_bytes()[64:]),
    "text": lambda p: p.write_text("usgan weights, honest\n"),
    "zip-not-torch": _zip_not_torch,
    "pickled-object": lambda p: torch.save({"main.0.weight": Pickled()}, p),
    "list": lambda p: torch.save([torch.zeros(2)], p),
    "foreign-model": lambda p: torch.save(torch.nn.Linear(3, 2).state_dict(), p),
    "discriminator": lambda p: torch.save(Discriminator().state_dict(), p),
    "missing-key": _without_key,
    "extra-key": _with_extra_key,
    "nan-weights": _with_nan,
    "our-own-safetensors": lambda p: save_generator(p, _random_generator(), WeightsInfo()),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_import_rejects_bad_files_with_one_line_naming_the_file(tmp_path, kind):
    bad = tmp_path / f"{kind}.ckpt"
    BAD_FILES[kind](bad)
    out = tmp_path / "out.safetensors"
    with pytest.raises(CheckpointError) as raised:
        import_official(bad, out)
    message = str(raised.value)
    assert message.startswith(str(bad)) and "\n" not in message and len(message) < 300
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == [bad.name]  # no temp files left


def test_import_rejects_other_expression_counts(tmp_path):
    official_path = save_official(tmp_path / "stargan_rafd.ckpt", c_dim=8)
    with pytest.raises(CheckpointError, match=r"8 expression inputs, US-GAN needs 7"):
        import_official(official_path, tmp_path / "g.safetensors")


def test_import_refuses_to_overwrite_its_input(tmp_path):
    official_path = save_official(tmp_path / "g.ckpt")
    before = official_path.read_bytes()
    with pytest.raises(CheckpointError, match="output path is the input"):
        import_official(official_path, tmp_path / "." / "g.ckpt")
    assert official_path.read_bytes() == before


def _random_generator() -> Generator:
    generator = Generator(GeneratorConfig(conv_dim=16))
    generator.load_state_dict(make_official(16).state_dict())
    return generator.eval()


def test_round_trip_fp32_is_exact(tmp_path):
    generator = _random_generator()
    save_generator(tmp_path / "g.safetensors", generator, WeightsInfo(image_size=64, step=5, notes={"run": "a"}))
    loaded, info = load_generator(tmp_path / "g.safetensors")
    assert (info.image_size, info.step, info.notes, info.generator) == (64, 5, {"run": "a"}, generator.config)
    original = generator.state_dict()
    assert all(torch.equal(original[k], v) for k, v in loaded.state_dict().items())


def test_edit_gain_round_trips_defaults_to_one_and_a_bad_one_is_a_one_line_error(tmp_path):
    generator = _random_generator()
    save_generator(tmp_path / "g.safetensors", generator, WeightsInfo(edit_gain=1.6))
    assert load_generator(tmp_path / "g.safetensors")[1].edit_gain == 1.6
    assert WeightsInfo().edit_gain == 1.0  # files written before the field existed load as trained
    with pytest.raises(ConfigError, match="edit_gain"):
        WeightsInfo(edit_gain=0.0)
    tensors, metadata = load_tensors(tmp_path / "g.safetensors")
    save_tensors(tmp_path / "bad.safetensors", tensors, {**metadata, "edit_gain": 9.0})
    with pytest.raises(CheckpointError, match=r"bad\.safetensors: bad metadata: edit_gain must be in") as error:
        load_generator(tmp_path / "bad.safetensors")
    assert "\n" not in str(error.value)


def test_expression_gains_round_trip_override_the_edit_gain_and_bad_ones_are_one_line_errors(tmp_path):
    save_generator(tmp_path / "g.safetensors", _random_generator(),
                   WeightsInfo(edit_gain=1.1, expression_gains={"happy": 1.5}))
    info = load_generator(tmp_path / "g.safetensors")[1]
    assert info.expression_gains == {"happy": 1.5}
    assert (info.gain_of("happy"), info.gain_of("sad")) == (1.5, 1.1)
    assert gain_text(info.edit_gain, info.expression_gains) == "1.1, happy 1.5"
    assert WeightsInfo().expression_gains == {}  # files written before the field existed: one gain for all
    with pytest.raises(ConfigError, match="unknown expression 'joy'"):  # headers hold canonical names only
        WeightsInfo(expression_gains={"joy": 1.5})
    with pytest.raises(ConfigError, match=r"expression_gains\.sad must be in"):
        WeightsInfo(expression_gains={"sad": 5.0})
    tensors, metadata = load_tensors(tmp_path / "g.safetensors")
    save_tensors(tmp_path / "bad.safetensors", tensors, {**metadata, "expression_gains": {"happy": "big"}})
    with pytest.raises(CheckpointError, match=r"bad\.safetensors: bad metadata: expression_gains\.happy") as error:
        load_generator(tmp_path / "bad.safetensors")
    assert "\n" not in str(error.value)


def test_parse_expression_gains_takes_any_spelling_and_names_a_bad_item():
    assert parse_expression_gains(["happy=1.5", "SAS=1.2", "Surprise = 1"]) == {"happy": 1.5, "sad": 1.2,
                                                                             "surprised": 1.0}
    for bad in ("happy", "happy=big"):
        with pytest.raises(ConfigError, match=f"expression gain '{bad}': expected EXPRESSION=GAIN"):
            parse_expression_gains([bad])
    with pytest.raises(UserError, match="unknown expression 'joyful'"):
        parse_expression_gains(["joyful=1.5"])


def test_average_generators_is_the_mean_of_their_weights_and_running_statistics(tmp_path):
    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        generator = Generator(GeneratorConfig(conv_dim=8))
        for module in generator.modules():  # give the norms' running statistics distinct values too
            if isinstance(module, torch.nn.InstanceNorm2d):
                module.running_mean.normal_()
        paths.append(tmp_path / f"step_{seed}.safetensors")
        save_generator(paths[-1], generator, WeightsInfo(image_size=32, step=seed))
    states = [load_generator(p)[0].state_dict() for p in paths]
    mean, info = average_generators(paths)
    for key, value in mean.state_dict().items():
        expected = sum(s[key] for s in states) / 3 if value.is_floating_point() else states[-1][key]
        torch.testing.assert_close(value, expected)
    assert info.step == 2 and info.notes["averaged"] == [p.name for p in paths]
    single, single_info = average_generators(paths[:1])
    assert all(torch.equal(v, states[0][k]) for k, v in single.state_dict().items()) and not single_info.notes


def test_average_generators_refuses_different_architectures_naming_the_file(tmp_path):
    save_generator(tmp_path / "a.safetensors", Generator(GeneratorConfig(conv_dim=8)), WeightsInfo(image_size=32))
    save_generator(tmp_path / "b.safetensors", Generator(GeneratorConfig(conv_dim=16)), WeightsInfo(image_size=32))
    with pytest.raises(CheckpointError, match=r"a\.safetensors: generator .* differs from .*b\.safetensors") as error:
        average_generators([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])
    assert "\n" not in str(error.value)
    with pytest.raises(CheckpointError, match="no generator files"):
        average_generators([])


def test_round_trip_fp16_is_close(tmp_path):
    generator = _random_generator()
    save_generator(tmp_path / "g16.safetensors", generator, WeightsInfo(), fp16=True)
    save_generator(tmp_path / "g32.safetensors", generator, WeightsInfo())
    assert (tmp_path / "g16.safetensors").stat().st_size < 0.6 * (tmp_path / "g32.safetensors").stat().st_size
    loaded, _ = load_generator(tmp_path / "g16.safetensors")
    x, c = sample_inputs(batch=2, size=32)
    with torch.no_grad():
        assert (loaded(x, c) - generator(x, c)).abs().max().item() <= 1e-2


def test_cli_import_official_writes_weights(tmp_path):
    official_path = save_official(tmp_path / "usgan_87_G.ckpt")
    result = CliRunner().invoke(cli, ["import-official", str(official_path), str(tmp_path / "g.safetensors")])
    assert result.exit_code == 0, result.output
    assert load_generator(tmp_path / "g.safetensors")[1].dataset == OFFICIAL_DATASET


@pytest.mark.parametrize("kind", ["text", "truncated"])
def test_cli_import_official_bad_file_is_a_one_line_error(tmp_path, kind):
    bad = tmp_path / "bad.ckpt"
    BAD_FILES[kind](bad)
    result = CliRunner().invoke(cli, ["import-official", str(bad), str(tmp_path / "g.safetensors")])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}")
    assert "Traceback" not in result.output


def test_a_damaged_generator_file_is_one_line_naming_the_problem(tmp_path):
    save_generator(tmp_path / "g.safetensors", _random_generator(), WeightsInfo())
    tensors, metadata = load_tensors(tmp_path / "g.safetensors")
    tensors["main.0.weight"][0, 0, 0, 0] = float("nan")
    save_tensors(tmp_path / "nan.safetensors", tensors, metadata)
    with pytest.raises(CheckpointError, match=r"nan\.safetensors: weights contain NaN or infinite values "
                                              r"\(main\.0\.weight\); the file is damaged$"):
        load_generator(tmp_path / "nan.safetensors")
    wider = {**metadata, "generator": {**metadata["generator"], "conv_dim": metadata["generator"]["conv_dim"] * 2}}
    save_tensors(tmp_path / "shape.safetensors", load_tensors(tmp_path / "g.safetensors")[0], wider)
    with pytest.raises(CheckpointError) as raised:
        load_generator(tmp_path / "shape.safetensors")
    assert "size mismatch for main.0.weight: copying a param with shape" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_cli_import_official_into_a_read_only_folder_names_the_output(tmp_path, read_only_disk):
    official_path = save_official(tmp_path / "usgan_87_G.ckpt")
    out = read_only_disk / "g.safetensors"
    result = CliRunner().invoke(cli, ["import-official", str(official_path), str(out)])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {out}: read-only file system"
