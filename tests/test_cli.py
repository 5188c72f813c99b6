"""The CLI as a whole: one error boundary for every command, help texts, and options derived from the typed configs."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import get_args

import click
import onnx
import pytest
import torch
from click.testing import CliRunner

import cli as cli_module
import pipeline.batch
import pipeline.config
import pipeline.process
from cli_options import ConfigOption, config_value
from pipeline.choices import X264_PRESETS, Backend, BlendMode, FaceSelection, TorchPrecision, VideoCodec
from usgan.checkpoint import WeightsInfo, save_generator
from usgan.errors import UserError
from usgan.model import Generator, GeneratorConfig

REPO = Path(cli_module.__file__).resolve().parent
COMMANDS = sorted(cli_module.cli.commands)
MEASUREMENT = re.compile(r"~\s*\d|\d\s*x\b|\d\s*%|\bdB\b|\bfaster than\b", re.IGNORECASE)


def invoke(*args: object):
    return CliRunner().invoke(cli_module.cli, [str(a) for a in args])


def one_line(result) -> str:
    """The single line a failing command prints; fails the test on a traceback or more lines."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert "Traceback" not in result.output and len(lines) == 1, result.output
    return lines[0]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "g.safetensors"
    save_generator(path, Generator(GeneratorConfig(conv_dim=8)), WeightsInfo(image_size=32))
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------- help


@pytest.mark.parametrize("name", COMMANDS)
def test_every_help_has_examples_and_no_measurements(name):
    result = invoke(name, "--help")
    assert result.exit_code == 0, result.output
    examples = result.output.split("Examples:", 1)
    assert len(examples) == 2 and f"cli.py {name} " in examples[1], result.output
    assert not MEASUREMENT.search(result.output), MEASUREMENT.search(result.output)


def shown_defaults(command: str) -> dict[str, str]:
    """{option name: the text of its [default: ...]} in `command --help`."""
    context = click.Context(cli_module.cli.commands[command])
    records = [param.get_help_record(context) for param in cli_module.cli.commands[command].params]
    found = {}
    for param, record in zip(cli_module.cli.commands[command].params, records):
        match = re.search(r"default: ([^;\]]+)", record[1]) if record else None
        if match:
            found[param.name] = match.group(1)
    return found


@pytest.mark.parametrize("command", ["process", "convert"])
def test_help_defaults_are_the_config_file_values(command):
    config = pipeline.config.load_process_config(pipeline.config.DEFAULT_CONFIG)
    shown = shown_defaults(command)
    options = [p for p in cli_module.cli.commands[command].params if isinstance(p, ConfigOption)]
    assert len(options) >= 13
    for option in options:
        value = config_value(config, option.config_key)
        if value is not None and not option.required:
            assert shown[option.name] == str(value), option.name
    assert shown["weights"] == "weights/usgan_tfeid.safetensors"
    assert shown["config_path"] == "configs/pipeline/default.yaml"


def test_help_defaults_follow_the_config_file(tmp_path, monkeypatch):
    """No copies: another default.yaml shows other defaults."""
    text = pipeline.config.DEFAULT_CONFIG.read_text()
    text = text.replace("crf: 18", "crf: 23").replace("blend: seamless", "blend: feather")
    (tmp_path / "default.yaml").write_text(text.replace("detect_every: 2", "detect_every: 5"))
    monkeypatch.setattr(pipeline.config, "DEFAULT_CONFIG", tmp_path / "default.yaml")
    shown = shown_defaults("process")
    assert (shown["crf"], shown["blend"], shown["detect_every"]) == ("23", "feather", "5")


def test_choices_are_the_literal_types():
    params = {param.name: param for param in cli_module.cli.commands["process"].params}
    expected = {"backend": get_args(Backend), "blend": get_args(BlendMode), "faces": get_args(FaceSelection),
                "precision": get_args(TorchPrecision), "preset": X264_PRESETS,
                "encoder": ("auto", *get_args(VideoCodec))}
    for name, values in expected.items():
        assert tuple(params[name].type.choices) == tuple(values), name


def test_prepare_and_evaluate_defaults_are_their_dataclass_values():
    from pipeline.evaluation.evaluate import EvaluateConfig
    from pipeline.evaluation.prepare import PrepareConfig

    prepare, evaluate = shown_defaults("prepare-data"), shown_defaults("evaluate")
    assert prepare["pad"] == str(PrepareConfig().detector.pad) and prepare["sizes"] == "128"
    assert prepare["det_threshold"] == str(PrepareConfig().detector.threshold)
    assert evaluate["batch_size"] == str(EvaluateConfig(out=Path()).batch_size) and evaluate["device"] == "cpu"


def test_nan_intensity_is_blamed_on_the_option(tmp_path):
    result = invoke("process", tmp_path / "in.png", "-e", "sad", "--intensity", "nan")
    assert result.exit_code == 2 and "--intensity" in result.output and "default.yaml" not in result.output


@pytest.mark.parametrize("args, line", [
    (["process", "in.png", "-e", "sad", "--intensity", "2"],
     "error: Invalid value for '--intensity': 2.0 is not in the range 0.0<=x<=1.0 (see cli process -h)"),
    (["process", "in.png"], "error: Missing option '-e' / '--expression' (see cli process -h)"),
    (["convert", "in", "out", "-e", "sad", "--ray-address", "auto"],
     "error: --ray-address needs --engine ray (see cli convert -h)"),
])
def test_option_errors_are_one_line_as_the_readme_promises(tmp_path, args, line):
    (tmp_path / "in").mkdir()
    result = CliRunner().invoke(cli_module.cli, [str(tmp_path / a) if a in ("in", "out") else a for a in args])
    assert result.exit_code == 2
    assert result.output.replace(str(tmp_path) + "/", "") == line + "\n"


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_the_cli_starts_without_the_heavy_modules():
    """Ctrl-C during start-up must meet the boundary soon, so cli.py imports neither torch nor av."""
    code = "import sys, cli; print(sorted(m for m in ('torch', 'av', 'cv2', 'onnx') if m in sys.modules))"
    assert run_python(code).stdout.strip() == "[]"


@pytest.mark.parametrize("given, policy, spin", [(None, "PASSIVE", "0"), ("ACTIVE", "ACTIVE", "30000000000")])
def test_openmp_threads_sleep_while_they_wait(given, policy, spin):
    """The generator's OpenMP threads must not spin on the cores the other stages need, whichever thread runs the
    work: cli.py sets the wait policy before torch starts OpenMP (as libgomp reports it), unless one is given."""
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update({"OMP_DISPLAY_ENV": "VERBOSE", **({"OMP_WAIT_POLICY": given} if given else {})})
    shown = subprocess.run([sys.executable, "-c", "import cli, torch; torch.ones(2).sum()"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300).stderr
    if "GOMP_SPINCOUNT" not in shown:
        pytest.skip("torch's OpenMP runtime is not libgomp")
    assert (f"OMP_WAIT_POLICY = '{policy}'" in shown, f"GOMP_SPINCOUNT = '{spin}'" in shown) == (True, True)


def test_ctrl_c_while_cli_py_imports_exits_130():
    """Ctrl-C before the boundary is entered (here: as cli.py imports click) is one line and exit 130."""
    code = """if True:
        import os, runpy, signal, sys

        class CtrlC:
            def find_spec(self, name, path=None, target=None):
                if name == "click":
                    os.kill(os.getpid(), signal.SIGINT)

        sys.meta_path.insert(0, CtrlC())
        sys.argv = ["cli.py", "--help"]
        runpy.run_path("cli.py", run_name="__main__")
    """
    child = run_python(code)
    assert (child.returncode, child.stderr, child.stdout) == (130, "interrupted: nothing was done\n", "")


# ---------------------------------------------------------------- the error boundary


def test_user_error_os_error_and_ctrl_c_in_a_command(tmp_path, monkeypatch):
    photo = tmp_path / "in.png"
    photo.write_bytes(b"")

    def full_disk(source, output, *args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(output))

    monkeypatch.setattr(pipeline.process, "process_file", full_disk)
    result = invoke("process", photo, "-e", "sad", "-o", tmp_path / "out.png")
    assert result.exit_code == 1
    assert one_line(result) == f"error: {tmp_path / 'out.png'}: no space left on the device"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.process, "process_file", interrupted)
    result = invoke("process", photo, "-e", "sad")
    assert result.exit_code == 130 and one_line(result) == "interrupted: no output was written"
    monkeypatch.setattr(pipeline.batch, "convert_dir", interrupted)
    result = invoke("convert", tmp_path, tmp_path / "out", "-e", "sad")
    assert result.exit_code == 130 and "finished files are kept in OUT_DIR" in one_line(result)


def test_export_under_a_file_is_one_line(weights, tmp_path):
    (tmp_path / "notes.txt").write_text("a file")
    result = invoke("export", weights, tmp_path / "notes.txt" / "g.onnx")
    assert result.exit_code == 1
    line = one_line(result)
    assert line.startswith("error: ") and "notes.txt" in line and "not a folder" in line


def test_export_into_an_unwritable_folder_is_one_line(weights, tmp_path, monkeypatch):
    """Root ignores chmod, so the permission check itself is made to say no."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: Path(p) != locked and real_access(p, mode, **k))
    result = invoke("export", weights, locked / "g.onnx")
    assert result.exit_code == 1 and f"{locked}" in one_line(result) and "permission denied" in one_line(result)
    assert list(locked.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_export_into_a_read_only_folder_is_one_line(weights, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = invoke("export", weights, locked / "g.onnx")
    finally:
        locked.chmod(0o755)
    assert result.exit_code == 1 and "permission denied" in one_line(result)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_export_failing_to_write_is_one_line_and_leaves_nothing(weights, tmp_path, monkeypatch, code):
    """A full disk (or a folder that turns read-only) while the ONNX file is written."""
    def failing_write(model, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(onnx, "save_model", failing_write)
    out = tmp_path / "g.onnx"
    result = invoke("export", weights, out)
    assert result.exit_code == 1
    assert one_line(result) == f"error: {out}: cannot write it ({os.strerror(code)})"
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("command", ["process", "convert"])
def test_no_progress_reaches_the_config(tmp_path, monkeypatch, command):
    seen = []

    def capture(*args, **kwargs):
        seen.extend(arg for arg in args if isinstance(arg, pipeline.config.ProcessConfig))
        raise UserError("captured")

    if command == "convert":
        monkeypatch.setattr(pipeline.batch, "convert_dir", capture)
        paths = [tmp_path, tmp_path / "out"]
    else:
        monkeypatch.setattr(pipeline.process, "process_file", capture)
        paths = [tmp_path / "in.png"]
    result = invoke(command, *paths, "-e", "sad", "--no-progress")
    assert one_line(result) == "error: captured" and result.exit_code == 1
    assert [config.progress for config in seen] == [False]



@pytest.mark.parametrize("command", COMMANDS)
def test_help_examples_use_paths_a_user_has(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0 and "../shared" not in result.output and "Examples:" in result.output


def test_readme_and_setup_cfg_name_the_same_python():
    import configparser

    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    lowest = setup["options"]["python_requires"].removeprefix(">=")
    assert f"Python {lowest} or newer" in (REPO / "README.md").read_text()
