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
from pathlib import Path
from typing import Any

import gradio as gr

from pipeline.batch import summary_lines
from pipeline.config import ProcessConfig
from pipeline.hooks import RunCancelled
from pipeline.manifest import MANIFEST_NAME, read_manifest
from pipeline.process import process_result_line
from pipeline.studio.progress import BackgroundRun, message_html, progress_html
from pipeline.studio.settings import STUDIO_GEOMETRIES, StudioSettings, shown_path, weights_choices
from pipeline.studio.work import Studio, Upload, check_upload, error_line
from pipeline.types import BLEND_MODES, FACE_SELECTIONS
from usgan.errors import UserError
from usgan.expressions import EXPRESSIONS

log = logging.getLogger(__name__)
POLL_S = 0.5  # how often a running render's progress reaches the page
TABLE_HEADERS = ["file", "status", "reason", "faces", "seconds"]
CSS = ".status-line {font-family: monospace; white-space: pre-wrap} .run-progress progress {width: 100%}"


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


def rgb(image) -> Any:
    return image[..., ::-1]


def build_app(studio: Studio, weights_folders: tuple[Path, ...], defaults: ProcessConfig) -> gr.Blocks:
    """The page, wired to studio."""
    cancels = Cancels()
    preview_dir = Path(tempfile.mkdtemp(prefix="usgan-studio-preview-"))
    choices = weights_choices(weights_folders)
    with gr.Blocks(title="US-GAN expression studio", analytics_enabled=False) as app:
        upload_state = gr.State(None)
        gr.Markdown("## US-GAN expression studio\nUpload a photo or a video, choose an expression, preview, render.")
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                expression = gr.Dropdown(list(EXPRESSIONS), value=defaults.expression if defaults.expression in
                                         EXPRESSIONS else "happy", label="Expression", elem_id="expression")
                intensity = gr.Slider(0.0, 1.0, value=defaults.intensity, step=0.05, label="Intensity",
                                      elem_id="intensity")
                schedule = gr.Textbox(label="Schedule (video)", elem_id="schedule",
                                      placeholder="happy@0-3,sad:0.8@3-6 (seconds); empty: the expression throughout")
                geometry = gr.Radio(list(STUDIO_GEOMETRIES), value="auto", label="Geometry",
                                    info="auto: the weights' own; on: weights/geometry.safetensors; "
                                         "off: the generator alone")
                faces = gr.Radio(list(FACE_SELECTIONS), value=defaults.faces, label="Faces", elem_id="faces")
                blend = gr.Radio(list(BLEND_MODES), value=defaults.blend, label="Blend", elem_id="blend")
                weights = gr.Dropdown([(shown_path(path), path) for path in choices],
                                      value=choices[0] if choices else None, label="Weights", elem_id="weights")
            controls = [expression, intensity, schedule, geometry, faces, blend, weights]
            with gr.Column(scale=2):
                with gr.Tabs():
                    with gr.Tab("Photo or video", id="edit"):
                        # every type accepted: process's own check names a wrong one in the page
                        file = gr.File(label="Photo or video", elem_id="upload", file_count="single")
                        status = gr.HTML(status_html(""), elem_id="status")
                        frame = gr.Slider(0, 1, value=0, step=1, label="Frame", visible=False, elem_id="frame")
                        with gr.Row():
                            preview_button = gr.Button("Preview", variant="secondary", elem_id="preview")
                            render_button = gr.Button("Render", variant="primary", elem_id="render")
                            cancel_button = gr.Button("Cancel", variant="stop", elem_id="cancel")
                        progress = gr.HTML(elem_id="progress")
                        compare = gr.ImageSlider(label="Before / after", format="png", elem_id="compare",
                                                 interactive=False)
                        result_video = gr.Video(label="Result", elem_id="result-video", interactive=False,
                                                visible=False, height=400)
                        download = gr.File(label="Download", elem_id="download", interactive=False)
                    with gr.Tab("Folder (bulk)", id="bulk"):
                        gr.Markdown("`convert` on folders of this server's disk: resumable, with a manifest.")
                        in_dir = gr.Textbox(label="Input folder", elem_id="in-dir")
                        out_dir = gr.Textbox(label="Output folder", elem_id="out-dir")
                        with gr.Row():
                            recursive = gr.Checkbox(label="Subfolders too", elem_id="recursive")
                            jobs = gr.Slider(1, 8, value=1, step=1, label="Worker processes", elem_id="jobs")
                        with gr.Row():
                            bulk_button = gr.Button("Convert", variant="primary", elem_id="bulk-run")
                            bulk_cancel = gr.Button("Cancel", variant="stop", elem_id="bulk-cancel")
                        bulk_progress = gr.HTML(elem_id="bulk-progress")
                        bulk_status = gr.HTML(status_html(""), elem_id="bulk-status")
                        table = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, elem_id="bulk-table")

        def settings_of(expression, intensity, schedule, geometry, faces, blend, weights) -> StudioSettings:
            return StudioSettings(expression, float(intensity), schedule or "", geometry, faces, blend,
                                  weights or "")

        def on_upload(path: str | None):
            if not path:
                return None, status_html(""), gr.Slider(visible=False), None, gr.Video(visible=False), None
            try:
                upload = check_upload(Path(path))
            except Exception as error:  # noqa: BLE001 - one line in the page; the server goes on
                return (None, status_html(user_error(error, Path(path))), gr.Slider(visible=False), None,
                        gr.Video(visible=False), None)
            slider = (gr.Slider(0, max(1, (upload.info.frames or 1) - 1), value=0, step=1, visible=True)
                      if upload.kind == "video" else gr.Slider(visible=False))
            return upload, status_html(upload.describe()), slider, None, gr.Video(visible=False), None

        def on_preview(upload: Upload | None, index: float, *values):
            if upload is None:
                return gr.ImageSlider(), status_html("error: upload a photo or a video first")
            try:
                if upload.kind == "image":
                    result = studio.preview_photo(upload, settings_of(*values), preview_dir)
                    line = f"preview: {result.faces_edited} of {result.faces_found} face(s) edited"
                    return (rgb(upload.image), str(result.output)), status_html(line)
                before, after = studio.preview_frame(upload, settings_of(*values), int(index))
                return (rgb(before), rgb(after)), status_html(f"preview of frame {int(index)}")
            except Exception as error:  # noqa: BLE001 - one line in the page; the server goes on
                return gr.ImageSlider(), status_html(user_error(error, upload.path))

        def on_render(upload: Upload | None, expression, intensity, schedule, geometry, faces, blend, weights,
                      request: gr.Request) -> Iterator[tuple]:
            if upload is None:
                yield message_html(""), status_html("error: upload a photo or a video first"), gr.Video(), None
                return
            settings = settings_of(expression, intensity, schedule, geometry, faces, blend, weights)
            run = BackgroundRun(lambda hooks: studio.render(upload, settings, hooks))
            cancels.start(request.session_hash, run)
            try:
                while run.wait(POLL_S):
                    yield progress_html(run.progress(), "frames"), gr.HTML(), gr.Video(), None
                result = run.result()
            except RunCancelled:
                yield message_html("cancelled: no output was written"), gr.HTML(), gr.Video(visible=False), None
                return
            except Exception as error:  # noqa: BLE001 - one line in the page; the server goes on
                yield message_html(""), status_html(user_error(error, upload.path)), gr.Video(visible=False), None
                return
            finally:
                run.cancel()  # the page went away (or the run ended): stop it, leaving no half-written file
                cancels.finish(request.session_hash)
            line = process_result_line(result).replace(str(result.output), result.output.name)
            if result.kind == "image":
                yield message_html("done"), status_html(line), gr.Video(visible=False), str(result.output)
                return
            video = gr.Video(str(result.output), visible=True)
            yield progress_html(run.progress(), "frames"), status_html(line), video, str(result.output)

        def on_cancel(request: gr.Request):
            if not cancels.cancel(request.session_hash):
                return message_html("nothing to cancel")
            return message_html("cancelling...")

        def on_bulk(source: str, target: str, subfolders: bool, workers: float, expression, intensity, schedule,
                    geometry, faces, blend, weights, request: gr.Request) -> Iterator[tuple]:
            if not source or not target:
                yield message_html(""), status_html("error: give an input folder and an output folder"), None
                return
            settings = settings_of(expression, intensity, schedule, geometry, faces, blend, weights)
            manifest = Path(target).expanduser() / MANIFEST_NAME
            run = BackgroundRun(lambda hooks: studio.convert(Path(source), Path(target), settings, subfolders,
                                                             int(workers), hooks))
            cancels.start(request.session_hash, run)
            try:
                while run.wait(POLL_S):
                    yield progress_html(run.progress(), "files"), gr.HTML(), manifest_rows(manifest)
                lines = summary_lines(run.result())
            except RunCancelled:
                lines = ["cancelled: finished files are kept in the output folder and listed in its manifest.json; "
                         "Convert again skips them"]
            except Exception as error:  # noqa: BLE001 - one line in the page; the server goes on
                lines = [user_error(error)]
            finally:
                run.cancel()
                cancels.finish(request.session_hash)
            yield progress_html(run.progress(), "files"), status_html("\n".join(lines)), manifest_rows(manifest)

        file.change(on_upload, [file], [upload_state, status, frame, compare, result_video, download],
                    concurrency_id="upload", concurrency_limit=None)
        preview_inputs = [upload_state, frame, *controls]
        preview_button.click(on_preview, preview_inputs, [compare, status], concurrency_id="preview")
        frame.release(on_preview, preview_inputs, [compare, status], concurrency_id="preview")
        render_button.click(on_render, [upload_state, *controls], [progress, status, result_video, download],
                            concurrency_id="render", concurrency_limit=1, show_progress="hidden")
        for button, shown in ((cancel_button, progress), (bulk_cancel, bulk_progress)):
            button.click(on_cancel, None, [shown], concurrency_id="cancel", concurrency_limit=None)
        bulk_button.click(on_bulk, [in_dir, out_dir, recursive, jobs, *controls], [bulk_progress, bulk_status, table],
                          concurrency_id="render", concurrency_limit=1, show_progress="hidden")
    return app


def manifest_rows(manifest: Path) -> list[list[Any]]:
    """The manifest's entries as the Bulk tab's table rows (empty until the first file is recorded)."""
    return [[entry.source, entry.status, entry.reason, entry.faces, round(entry.seconds, 1)]
            for entry in read_manifest(manifest).values()]
