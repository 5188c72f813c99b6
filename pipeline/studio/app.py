"""The studio's page (Gradio): controls one to one with `process`, an upload, a preview with a before/after slider,
a render with progress, Cancel and a download, and a Bulk tab running `convert` on a folder of the server.

Every handler turns the page's values into StudioSettings and calls one method of Studio; errors are the CLI's
one-line messages, shown in the page. Renders and folder conversions share one queue: one at a time per server.
"""

from __future__ import annotations

import html
import logging
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from pipeline.batch import summary_lines
from pipeline.config import ProcessConfig
from pipeline.hooks import RunCancelled
from pipeline.manifest import MANIFEST_NAME, read_manifest
from pipeline.results import process_result_line
from pipeline.studio.progress import BackgroundRun, message_html, progress_html
from pipeline.studio.settings import STUDIO_GEOMETRIES, StudioSettings, shown_path, weights_choices
from pipeline.studio.work import Studio, Upload, check_upload, error_line
from pipeline.types import BLEND_MODES, FACE_SELECTIONS
from usgan.errors import UserError
from usgan.expressions import EXPRESSIONS

log = logging.getLogger(__name__)
IDLE_POLL_S = 0.05  # the server's queue: how often it looks for work when idle (adds at most this to a click)
POLL_S = 1.0  # how often a running render's progress reaches the page (each update costs the browser some CPU)
TABLE_HEADERS = ["file", "status", "reason", "faces", "seconds"]
CSS = ".status-line {font-family: monospace; white-space: pre-wrap} .run-progress progress {width: 100%}"
QUEUED = "waiting for the server's queue (one render or conversion at a time)..."
NO_UPLOAD = "error: upload a photo or a video first"
CANCELLED_RENDER = "cancelled: no output was written"
CANCELLED_BULK = ("cancelled: finished files are kept in the output folder and listed in its manifest.json; Convert "
                  "again skips them")


@dataclass(frozen=True)
class Controls:
    """The settings column, one control per `process` option."""

    expression: gr.Dropdown
    intensity: gr.Slider
    schedule: gr.Textbox
    geometry: gr.Radio
    faces: gr.Radio
    blend: gr.Radio
    weights: gr.Dropdown

    def settings(self, values: dict) -> StudioSettings:
        """The controls' values (from a handler's input dict) as StudioSettings."""
        return StudioSettings(values[self.expression], float(values[self.intensity]), values[self.schedule] or "",
                              values[self.geometry], values[self.faces], values[self.blend],
                              values[self.weights] or "")

    def all(self) -> set[gr.components.Component]:
        return {self.expression, self.intensity, self.schedule, self.geometry, self.faces, self.blend, self.weights}


@dataclass(frozen=True)
class EditTab:
    """The photo or video tab; state holds the checked Upload."""

    state: gr.State
    upload: gr.File
    status: gr.HTML
    frame: gr.Slider
    preview: gr.Button
    render: gr.Button
    cancel: gr.Button
    progress: gr.HTML
    compare: gr.ImageSlider
    video: gr.Video
    download: gr.File


@dataclass(frozen=True)
class BulkTab:
    """The folder tab."""

    in_dir: gr.Textbox
    out_dir: gr.Textbox
    recursive: gr.Checkbox
    jobs: gr.Slider
    run: gr.Button
    cancel: gr.Button
    progress: gr.HTML
    status: gr.HTML
    table: gr.Dataframe


def status_html(text: str) -> str:
    return f'<div class="status-line">{html.escape(text)}</div>'


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


# ---------------------------------------------------------------- layout


def controls_column(defaults: ProcessConfig, weights: list[str]) -> Controls:
    expression = defaults.expression if defaults.expression in EXPRESSIONS else "happy"
    return Controls(
        gr.Dropdown(list(EXPRESSIONS), value=expression, label="Expression", elem_id="expression"),
        gr.Slider(0.0, 1.0, value=defaults.intensity, step=0.05, label="Intensity", elem_id="intensity"),
        gr.Textbox(label="Schedule (video)", elem_id="schedule",
                   placeholder="happy@0-3,sad:0.8@3-6 (seconds); empty: the expression throughout"),
        gr.Radio(list(STUDIO_GEOMETRIES), value="auto", label="Geometry", elem_id="geometry",
                 info="auto: the weights' own; on: weights/geometry.safetensors; off: the generator alone"),
        gr.Radio(list(FACE_SELECTIONS), value=defaults.faces, label="Faces", elem_id="faces"),
        gr.Radio(list(BLEND_MODES), value=defaults.blend, label="Blend", elem_id="blend"),
        gr.Dropdown([(shown_path(path), path) for path in weights], value=weights[0] if weights else None,
                    label="Weights", elem_id="weights"))


def edit_tab() -> EditTab:
    state = gr.State(None)
    upload = gr.File(label="Photo or video", elem_id="upload")  # any type: process's own check names a wrong one
    status = gr.HTML(status_html(""), elem_id="status")
    frame = gr.Slider(0, 1, value=0, step=1, label="Frame", visible=False, elem_id="frame")
    with gr.Row():
        buttons = (gr.Button("Preview", elem_id="preview"), gr.Button("Render", variant="primary", elem_id="render"),
                   gr.Button("Cancel", variant="stop", elem_id="cancel"))
    return EditTab(state, upload, status, frame, *buttons, gr.HTML(elem_id="progress"),
                   gr.ImageSlider(label="Before / after", format="png", elem_id="compare", interactive=False),
                   gr.Video(label="Result", elem_id="result-video", interactive=False, visible=False, height=400),
                   gr.File(label="Download", elem_id="download", interactive=False))


def bulk_tab() -> BulkTab:
    gr.Markdown("`convert` on folders of this server's disk: resumable, with a manifest.")
    folders = gr.Textbox(label="Input folder", elem_id="in-dir"), gr.Textbox(label="Output folder", elem_id="out-dir")
    with gr.Row():
        options = (gr.Checkbox(label="Subfolders too", elem_id="recursive"),
                   gr.Slider(1, 8, value=1, step=1, label="Worker processes", elem_id="jobs"))
    with gr.Row():
        buttons = (gr.Button("Convert", variant="primary", elem_id="bulk-run"),
                   gr.Button("Cancel", variant="stop", elem_id="bulk-cancel"))
    return BulkTab(*folders, *options, *buttons, gr.HTML(elem_id="bulk-progress"),
                   gr.HTML(status_html(""), elem_id="bulk-status"),
                   gr.Dataframe(headers=TABLE_HEADERS, interactive=False, elem_id="bulk-table"))


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
