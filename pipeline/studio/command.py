"""`cli.py studio`: serve the studio's page on this machine, offline (no analytics, no share link, no CDN: the
page's assets come from the installed gradio package)."""

from __future__ import annotations

import ipaddress
import logging
import os
import tempfile
from pathlib import Path

import click

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str) -> str | None:
    """The one-line warning for a host other machines can reach, None for a loopback one."""
    if is_loopback(host):
        return None
    return (f"warning: serving on {host}: anyone who can reach this machine can use the studio and read folders of "
            "its disk through the Bulk tab")


@click.command("studio")
@click.option("--host", default=DEFAULT_HOST, show_default=True,
              help="Address to serve on; anything but loopback exposes the studio to the network.")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True, help="Port.")
@click.option("--weights", "weights_dirs", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A folder of generator weights to offer besides weights/ (repeatable).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where renders are written (one folder per render); default: a new temporary folder.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Pipeline config YAML (default: configs/pipeline/default.yaml).")
def studio_command(host: str, port: int, weights_dirs: tuple[Path, ...], out_dir: Path | None,
                   config_path: Path | None) -> None:
    """Serve the studio: a local page to preview and render expressions on photos and videos, and convert folders.

    \b
    Examples:
      python cli.py studio                       # then open http://127.0.0.1:7860
      python cli.py studio --port 8000 --weights runs/tfeid/
      usgan-studio studio --out ~/renders
    """
    warning = exposure_warning(host)
    if warning:
        click.echo(warning, err=True)
    serve(host, port, weights_dirs, out_dir or Path(tempfile.mkdtemp(prefix="usgan-studio-")), config_path)


def serve(host: str, port: int, weights_dirs: tuple[Path, ...], out_dir: Path, config_path: Path | None) -> None:
    """Build the page and serve it until Ctrl-C."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # gradio reads it at import too; set before the import
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pipeline.config import DEFAULT_CONFIG, load_process_config
    from pipeline.studio.app import CSS, build_app, calm_queue
    from pipeline.studio.work import Studio

    config_path = config_path or DEFAULT_CONFIG
    app = build_app(Studio(out_dir, config_path), weights_dirs, load_process_config(config_path))
    click.echo(f"studio on http://{host}:{port} (renders in {out_dir}; Ctrl-C stops it)", err=True)
    calm_queue(app.queue(default_concurrency_limit=1)).launch(
        server_name=host, server_port=port, share=False, inbrowser=False, show_error=False, quiet=True,
        ssr_mode=False, pwa=False, mcp_server=False, enable_monitoring=False, css=CSS, footer_links=[])
