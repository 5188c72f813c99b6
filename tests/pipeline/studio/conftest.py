"""Fixtures of the studio's tests: a real server (`cli.py studio` in a subprocess on a free loopback port) and a
real headless Chromium (Debian's /usr/bin/chromium driven by Playwright; nothing downloads a browser).

Screenshots of each browser step go to test-output/studio/<test>/ at the repository root (USGAN_TEST_OUTPUT
overrides), so that a person can look at them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    """A running studio: its address, where its renders go, and its log."""

    url: str
    renders: Path
    log: Path
    process: subprocess.Popen = field(repr=False)


def wait_until_serving(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the studio exited with {server.process.returncode}:\n{server.log.read_text()}")
        try:
            with urllib.request.urlopen(server.url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the studio did not answer within {START_TIMEOUT_S} s:\n{server.log.read_text()}")


@pytest.fixture(scope="session")
def studio_server(tmp_path_factory) -> Iterator[Server]:
    """`cli.py studio` on a free loopback port, with its own render and upload folders."""
    pytest.importorskip("gradio", reason="the studio extra is not installed (pip install -e '.[studio]')")
    folder = tmp_path_factory.mktemp("studio")
    port = free_port()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(folder / "gradio"), "PYTHONPATH": str(REPO)}
    log = folder / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "studio", "--port", str(port),
                                    "--out", str(folder / "renders")], cwd=REPO, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}/", folder / "renders", log, process)
    try:
        wait_until_serving(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="session")
def browser_context(tmp_path_factory) -> Iterator[object]:
    """Headless Chromium with a fresh profile, offline flags, and downloads allowed."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium package (apt-get install chromium) to run "
                    "the browser tests")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra)")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 960}, accept_downloads=True)
        try:
            yield context
        finally:
            context.close()


class Shots:
    """Numbered screenshots of one test's steps."""

    def __init__(self, folder: Path):
        self.folder, self.count = folder, 0
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()

    def take(self, page, step: str) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}_{step}.png"
        page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def shots(request) -> Shots:
    root = Path(os.environ.get("USGAN_TEST_OUTPUT", REPO / "test-output"))
    return Shots(root / "studio" / request.node.name)


@pytest.fixture
def page(browser_context, studio_server) -> Iterator[object]:
    """A new tab on the studio; at the end, the page must have asked nothing of any other host."""
    tab = browser_context.new_page()
    outside: list[str] = []
    local = ("data:", "blob:", studio_server.url.rstrip("/"))
    tab.on("request", lambda request: None if request.url.startswith(local) else outside.append(request.url))
    tab.goto(studio_server.url, wait_until="load")
    tab.wait_for_selector("#expression", timeout=60_000)
    yield tab
    tab.close()
    assert not outside, f"the page fetched from outside this machine: {outside}"
