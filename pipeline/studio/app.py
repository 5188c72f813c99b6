"""The studio's page (Gradio): controls one to one with `process`, an upload, a preview with a before/after slider,
a render with progress, Cancel and a download, and a Bulk tab running `convert` on a folder of the server.

Every handler turns the page's values into StudioSettings and calls one method of Studio; errors are the CLI's
one-line messages, shown in the page. Renders and folder conversions share one queue: one at a time per server.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from pipeline.batch import summary_lines
from pipeline.config import ProcessConfig
from pipeline.hooks import RunCancelled
from pipeline.manifest import MANIFEST_NAME, read_manifest
from pipeline.results import process_result_line
from pipeline.studio.layout import (
    BulkTab, Controls, EditTab, bulk_tab, controls_column, edit_tab, status_html,
)
from pipeline.studio.progress import BackgroundRun, message_html, progress_html
from pipeline.studio.settings import weights_choices
from pipeline.studio.work import Studio, Upload, check_upload, error_line
from usgan.errors import UserError

log = logging.getLogger(__name__)
IDLE_POLL_S = 0.05  # the server's queue: how often it looks for work when idle (adds at most this to a click)
POLL_S = 1.0  # how often a running render's progress reaches the page (each update costs the browser some CPU)
CSS = ".status-line {font-family: monospace; white-space: pre-wrap} .run-progress progress {width: 100%}"
QUEUED = "waiting for the server's queue (one render or conversion at a time)..."
NO_UPLOAD = "error: upload a photo or a video first"
CANCELLED_RENDER = "cancelled: no output was written"
CANCELLED_BULK = ("cancelled: finished files are kept in the output folder and listed in its manifest.json; Convert "
                  "again skips them")


def user_error(error: BaseException, upload_path: Path | None = None) -> str:
    """The CLI's one-line message (the upload folder left out of the file's name); an unexpected error is one line
    too, and its traceback goes to the server's log."""
    if not isinstance(error, (UserError, OSError)):
        log.error("unexpected error in the studio", exc_info=error)
        return f"error: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'see the server log'}"
    line = error_line(error)
    return line.replace(str(upload_path), upload_path.name) if upload_path is not None else line


def rgb(image: Any) -> Any:
    """A BGR image as the page shows it (RGB)."""
    return image[..., ::-1]


def manifest_rows(manifest: Path) -> list[list[Any]]:
    """The manifest's entries as the Bulk tab's table rows (empty until the first file is recorded)."""
    return [[entry.source, entry.status, entry.reason, entry.faces, round(entry.seconds, 1)]
            for entry in read_manifest(manifest).values()]


# ---------------------------------------------------------------- handlers


class Cancels:
    """Each browser session's running render or conversion, so that its Cancel button stops that one only."""

    def __init__(self) -> None:
        self.runs: dict[str, BackgroundRun] = {}
        self.lock = threading.Lock()

    def start(self, session: str, run: BackgroundRun) -> None:
        with self.lock:
            self.runs[session] = run

    def finish(self, session: str) -> None:
        with self.lock:
            self.runs.pop(session, None)

    def cancel(self, session: str) -> bool:
        with self.lock:
            run = self.runs.get(session)
        if run is not None:
            run.cancel()
        return run is not None


def follow(run: BackgroundRun, cancels: Cancels, session: str, update: Any) -> Iterator[Any]:
    """update(run) every POLL_S while run works; run is cancelled if the page goes away (no half-written file)."""
    cancels.start(session, run)
    try:
        while run.wait(POLL_S):
            yield update(run)
    finally:
        run.cancel()
        cancels.finish(session)


class Handlers:
    """What the page's events do: each calls one method of Studio and shows its outcome."""

    def __init__(self, studio: Studio, controls: Controls, edit: EditTab, bulk: BulkTab):
        self.studio, self.controls, self.edit, self.bulk = studio, controls, edit, bulk
        self.cancels = Cancels()
        self.preview_dir = Path(tempfile.mkdtemp(prefix="usgan-studio-preview-"))

    def on_upload(self, path: str | None) -> tuple:
        """The file checked as process checks it: its description (or the error), and the frame slider."""
        cleared = (gr.Slider(visible=False), None, gr.Video(visible=False), None)
        if not path:
            return None, status_html(""), *cleared
        try:
            upload = check_upload(Path(path))
        except Exception as error:  # noqa: BLE001 - one line in the page; the server goes on
            return None, status_html(user_error(error, Path(path))), *cleared
        if upload.kind == "video":
            cleared = (gr.Slider(0, max(1, (upload.info.frames or 1) - 1), value=0, visible=True), *cleared[1:])
        return upload, status_html(upload.describe()), *cleared

    def on_preview(self, values: dict) -> tuple:
        """(before, after) of the photo, or of the video's chosen frame, and a status line."""
        upload: Upload | None = values[self.edit.state]
        if upload is None:
            return gr.ImageSlider(), status_html(NO_UPLOAD)
        settings = self.controls.settings(values)
        try:
            if upload.kind == "image":
                result = self.studio.preview_photo(upload, settings, self.preview_dir)
                line = f"preview: {result.faces_edited} of {result.faces_found} face(s) edited"
                return (rgb(upload.image), str(result.output)), status_html(line)
            index = int(values[self.edit.frame])
            before, after = self.studio.preview_frame(upload, settings, index)
            return (rgb(before), rgb(after)), status_html(f"preview of frame {index}")
        except Exception as error:  # noqa: BLE001 - one line in the page; the server goes on
            return gr.ImageSlider(), status_html(user_error(error, upload.path))

    def on_render(self, values: dict, request: gr.Request) -> Iterator[tuple]:
        """Progress while the file renders; then the result to play and download, or why there is none."""
        upload: Upload | None = values[self.edit.state]
        if upload is None:
            yield message_html(""), status_html(NO_UPLOAD), gr.Video(), None
            return
        settings = self.controls.settings(values)
        run = BackgroundRun(lambda hooks: self.studio.render(upload, settings, hooks))
        yield from follow(run, self.cancels, request.session_hash,
                          lambda run: (progress_html(run.progress(), "frames"), gr.skip(), gr.skip(), gr.skip()))
        try:
            result = run.result()
        except RunCancelled:
            yield message_html(CANCELLED_RENDER), gr.skip(), gr.Video(visible=False), None
            return
        except Exception as error:  # noqa: BLE001 - one line in the page; the server goes on
            yield message_html(""), status_html(user_error(error, upload.path)), gr.Video(visible=False), None
            return
        line = status_html(process_result_line(result).replace(str(result.output), result.output.name))
        if result.kind == "image":
            yield message_html("done"), line, gr.Video(visible=False), str(result.output)
            return
        yield progress_html(run.progress(), "frames"), line, gr.Video(str(result.output), visible=True), \
            str(result.output)

    def on_cancel(self, request: gr.Request) -> str:
        if not self.cancels.cancel(request.session_hash):
            return message_html("nothing to cancel")
        return message_html("cancelling...")

    def on_bulk(self, values: dict, request: gr.Request) -> Iterator[tuple]:
        """convert on the given folders: progress and the manifest's table while it runs, then its summary."""
        bulk = self.bulk
        source, target = values[bulk.in_dir].strip(), values[bulk.out_dir].strip()
        if not source or not target:
            yield message_html(""), status_html("error: give an input folder and an output folder"), None
            return
        settings, manifest = self.controls.settings(values), Path(target).expanduser() / MANIFEST_NAME
        run = BackgroundRun(lambda hooks: self.studio.convert(Path(source), Path(target), settings,
                                                              values[bulk.recursive], int(values[bulk.jobs]), hooks))
        yield from follow(run, self.cancels, request.session_hash,
                          lambda run: (progress_html(run.progress(), "files"), gr.skip(), manifest_rows(manifest)))
        try:
            lines = summary_lines(run.result())
        except RunCancelled:
            lines = [CANCELLED_BULK]
        except Exception as error:  # noqa: BLE001 - one line in the page; the server goes on
            lines = [user_error(error)]
        yield progress_html(run.progress(), "files"), status_html("\n".join(lines)), manifest_rows(manifest)


def wire(handlers: Handlers) -> None:
    """The page's events. Renders and conversions share the "render" queue: one at a time per server."""
    controls, edit, bulk = handlers.controls, handlers.edit, handlers.bulk
    edit.upload.change(handlers.on_upload, [edit.upload],
                       [edit.state, edit.status, edit.frame, edit.compare, edit.video, edit.download],
                       concurrency_id="upload", concurrency_limit=None)
    preview_inputs = {edit.state, edit.frame, *controls.all()}
    for trigger in (edit.preview.click, edit.frame.release):
        trigger(handlers.on_preview, preview_inputs, [edit.compare, edit.status], concurrency_id="preview")
    queued = message_html(QUEUED)  # shown at once; replaced by the progress when this run's turn comes
    edit.render.click(lambda: queued, None, [edit.progress], concurrency_id="cancel", concurrency_limit=None).then(
        handlers.on_render, {edit.state, *controls.all()}, [edit.progress, edit.status, edit.video, edit.download],
        concurrency_id="render", concurrency_limit=1, show_progress="hidden")
    for button, shown in ((edit.cancel, edit.progress), (bulk.cancel, bulk.progress)):
        button.click(handlers.on_cancel, None, [shown], concurrency_id="cancel", concurrency_limit=None)
    bulk.run.click(lambda: queued, None, [bulk.progress], concurrency_id="cancel", concurrency_limit=None).then(
        handlers.on_bulk, {bulk.in_dir, bulk.out_dir, bulk.recursive, bulk.jobs, *controls.all()},
        [bulk.progress, bulk.status, bulk.table], concurrency_id="render", concurrency_limit=1, show_progress="hidden")


def calm_queue(app: gr.Blocks, idle_poll_s: float = IDLE_POLL_S) -> gr.Blocks:
    """app with its queue polling every idle_poll_s when idle. Gradio's polls every 1 ms (10 ms for progress) on
    Linux, 50 ms on Windows; on a 2-core machine that spin took a few % of the render's CPU and GIL."""
    queue = app._queue  # noqa: SLF001 - no public setting; the attributes are Queue's own
    queue.sleep_when_free = max(queue.sleep_when_free, idle_poll_s)
    queue.progress_update_sleep_when_free = max(queue.progress_update_sleep_when_free, idle_poll_s)
    return app


def build_app(studio: Studio, weights_folders: tuple[Path, ...], defaults: ProcessConfig) -> gr.Blocks:
    """The page, wired to studio."""
    with gr.Blocks(title="US-GAN expression studio", analytics_enabled=False) as app:
        gr.Markdown("## US-GAN expression studio\nUpload a photo or a video, choose an expression, preview, render.")
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                controls = controls_column(defaults, weights_choices(weights_folders))
            with gr.Column(scale=2), gr.Tabs():
                with gr.Tab("Photo or video", id="edit"):
                    edit = edit_tab()
                with gr.Tab("Folder (bulk)", id="bulk"):
                    bulk = bulk_tab()
        wire(Handlers(studio, controls, edit, bulk))
    return app
