"""Serving the studio's page (`cli.py studio`, whose options are in cli_studio.py) on this machine, offline (no analytics, no share link, no CDN: the
page's assets come from the installed gradio package)."""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable
from pathlib import Path


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


def serve(host: str, port: int, weights_dirs: tuple[Path, ...], out_dir: Path, config_path: Path | None,
          announce: Callable[[str], object] = log.info) -> None:
    """Build the page and serve it until Ctrl-C; announce gets the line that says where, once it is built."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # gradio reads it at import too; set before the import
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pipeline.config import DEFAULT_CONFIG, load_process_config
    from pipeline.studio.app import CSS, build_app, calm_queue
    from pipeline.studio.work import Studio

    config_path = config_path or DEFAULT_CONFIG
    app = build_app(Studio(out_dir, config_path), weights_dirs, load_process_config(config_path))
    announce(f"studio on http://{host}:{port} (renders in {out_dir}; Ctrl-C stops it)")
    calm_queue(app.queue(default_concurrency_limit=1)).launch(
        server_name=host, server_port=port, share=False, inbrowser=False, show_error=False, quiet=True,
        ssr_mode=False, pwa=False, mcp_server=False, enable_monitoring=False, css=CSS, footer_links=[])
