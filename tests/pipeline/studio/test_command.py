"""`cli.py studio`: options, the one-line warning for a non-loopback host, and the installed command."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
import cli_studio
from pipeline.studio.command import exposure_warning, is_loopback

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True),
                                            ("::1", True), ("0.0.0.0", False), ("192.168.1.5", False),
                                            ("example.org", False)])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback
    assert (exposure_warning(host) is None) is loopback


def test_studio_is_a_command_of_the_cli_with_its_defaults(monkeypatch, tmp_path):
    served = []
    monkeypatch.setattr(cli_studio, "serve", lambda *args, **announce: served.append(args))
    result = CliRunner().invoke(cli.cli, ["studio", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert served == [("127.0.0.1", 7860, (), tmp_path, None)] and "warning" not in result.output


def test_a_non_loopback_host_warns_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(cli_studio, "serve", lambda *args, **announce: None)
    result = CliRunner().invoke(cli.cli, ["studio", "--host", "0.0.0.0", "--port", "8000", "--out", str(tmp_path)])
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert result.exit_code == 0 and len(warnings) == 1 and "0.0.0.0" in warnings[0]


def test_bad_port_is_refused():
    result = CliRunner().invoke(cli.cli, ["studio", "--port", "70000"])
    assert result.exit_code == 2 and "--port" in result.output


def test_the_installed_command_is_the_whole_cli():
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    scripts = parser["options.entry_points"]["console_scripts"].strip()
    assert scripts == "usgan-studio = cli:cli"
    assert "gradio" in parser["options.extras_require"]["studio"]
    assert ".[dev,ray,studio]" in (REPO / "scripts" / "setup_env.sh").read_text()


def test_importing_the_cli_imports_no_gradio():
    import subprocess
    import sys

    code = "import sys, cli; sys.exit('gradio' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_renders_and_conversions_share_one_queue_of_one(tmp_path):
    pytest.importorskip("gradio", reason="the studio extra is not installed")
    from pipeline.config import load_process_config
    from pipeline.studio.app import IDLE_POLL_S, build_app, calm_queue
    from pipeline.studio.work import Studio

    app = calm_queue(build_app(Studio(tmp_path), (), load_process_config()).queue())
    heavy = [fn for fn in app.fns.values() if fn.name in ("on_render", "on_bulk")]
    assert len(heavy) == 2 and {(fn.concurrency_id, fn.concurrency_limit) for fn in heavy} == {("render", 1)}
    assert app.analytics_enabled is False
    assert app._queue.sleep_when_free == app._queue.progress_update_sleep_when_free == IDLE_POLL_S  # no 1 ms spin
