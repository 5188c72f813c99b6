#!/usr/bin/env python
"""The studio's speed on d18.mp4 (480x480): a frame preview's seconds, and a render in the page against `process`.

Usage: .venv/bin/python scripts/bench_studio.py [--rounds 2] [--no-write]
Preview: Studio.preview_frame (decode to the frame, faces, synthesize, blend) on five frames, after one warm-up, in
the environment cli.py gives the server, and the page's own latency (Preview clicked to the images shown) in headless
Chromium. Render: `cli.py process d18.mp4 -e sad` and the page's Render, in turns (--rounds each); both fps are the
summary line's (frames / the video workflow's seconds, models loaded). Needs Debian's /usr/bin/chromium. The table
goes into docs/BENCHMARKS.md (section "studio").
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import bench_common as bc
import cli  # noqa: F401 - the server's environment (OpenMP, BLAS threads), set before torch loads: previews here

FRAMES = (0, 54, 108, 162, 215)
FPS = re.compile(r"\(([\d.]+) fps\)")
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def preview_seconds(clip: Path) -> list[float]:
    """Seconds of each of FRAMES' previews, in this process (models loaded by a first, untimed preview)."""
    from pipeline.studio.settings import StudioSettings
    from pipeline.studio.work import Studio, check_upload

    studio, upload, settings = Studio(Path(tempfile.mkdtemp())), check_upload(clip), StudioSettings("sad")
    studio.preview_frame(upload, settings, 0)
    times = []
    for index in FRAMES:
        started = time.perf_counter()
        studio.preview_frame(upload, settings, index)
        times.append(time.perf_counter() - started)
    return times


def cli_fps(clip: Path, out: Path) -> float:
    result = subprocess.run([sys.executable, str(bc.REPO / "cli.py"), "process", str(clip), "-e", "sad", "-o",
                             str(out), "--no-progress"], capture_output=True, text=True, check=True)
    return float(FPS.search(result.stdout).group(1))


def start_studio(folder: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, str(bc.REPO / "cli.py"), "studio", "--port", str(port), "--out",
                                str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(240):
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return process, url
        except OSError:
            time.sleep(0.5)
    raise SystemExit("the studio did not start")


def open_clip(page, url: str, clip: Path) -> None:
    page.goto(url, wait_until="load")
    page.wait_for_selector("#expression")
    page.locator("#upload input[type=file]").set_input_files(str(clip))
    page.wait_for_function("(n) => (document.querySelector('#status .status-line')?.innerText ?? '').includes(n)",
                           arg=clip.name)
    page.locator("#expression input").click()
    page.get_by_role("option", name="sad", exact=True).click()


def page_preview_seconds(page, url: str, clip: Path) -> list[float]:
    """Preview clicked to the status saying it is shown, for each of FRAMES (after one untimed preview)."""
    open_clip(page, url, clip)
    times = []
    for index in (1, *FRAMES):
        page.locator("#frame input[type=number]").fill(str(index))
        page.locator("#frame input[type=number]").press("Enter")
        started = time.perf_counter()
        page.locator("#preview").click()
        page.wait_for_function("(n) => (document.querySelector('#status .status-line')?.innerText ?? '') === "
                               "'preview of frame ' + n", arg=str(index), timeout=60_000)
        times.append(time.perf_counter() - started)
    return times[1:]


def page_render(page, url: str, clip: Path) -> tuple[float, float]:
    """(fps of the summary line, wall seconds from Render clicked to the download offered)."""
    open_clip(page, url, clip)
    started = time.perf_counter()
    page.locator("#render").click()
    while not page.locator("#download a[href]").count():  # polled from here once a second: waiting in the page
        time.sleep(1.0)  # (requestAnimationFrame) would keep the browser busy beside the render it measures
    wall = time.perf_counter() - started
    return float(FPS.search(page.locator("#status .status-line").inner_text()).group(1)), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="Print the section instead of writing it.")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    clip, folder, clock = bc.shared_clip("d18.mp4"), Path(tempfile.mkdtemp(prefix="bench-studio-")), bc.RunClock()
    preview = preview_seconds(clip)
    server, url = start_studio(folder / "renders")
    cli, page_fps, walls = [], [], []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=BROWSER_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 960})
            in_page = page_preview_seconds(page, url, clip)
            for _ in range(args.rounds):
                cli.append(cli_fps(clip, folder / "cli.mp4"))
                fps, wall = page_render(page, url, clip)
                page_fps.append(fps)
                walls.append(wall)
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
    rows = [["preview, one frame (Studio.preview_frame)", f"{statistics.median(preview):.2f} s",
             f"max {max(preview):.2f} s over frames {', '.join(map(str, FRAMES))}"],
            ["preview in the page (click to shown)", f"{statistics.median(in_page):.2f} s",
             f"max {max(in_page):.2f} s"],
            ["render: `process` fps", f"{statistics.median(cli):.2f}", ", ".join(f"{v:.2f}" for v in cli)],
            ["render: the page's fps", f"{statistics.median(page_fps):.2f}", ", ".join(f"{v:.2f}" for v in page_fps)],
            ["page / process", f"{statistics.median(page_fps) / statistics.median(cli):.3f}",
             f"page wall, click to download: {', '.join(f'{v:.1f} s' for v in walls)}"]]
    table = bc.table(["d18.mp4, 216 frames, 480x480, -e sad", "median", "runs"], rows)
    body = bc.section("Studio: preview and render on d18.mp4", bc.command_line(), clock, [table], args.note)
    print(body) if args.no_write else bc.write_section("studio", body)


if __name__ == "__main__":
    main()
