"""The studio page's layout: the settings column (one control per `process` option), the photo or video tab and the
Bulk tab, as Gradio components the handlers of pipeline.studio.app are wired to."""

from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from pipeline.config import ProcessConfig
from pipeline.studio.settings import STUDIO_GEOMETRIES, StudioSettings, shown_path
from pipeline.types import BLEND_MODES, FACE_SELECTIONS
from usgan.expressions import EXPRESSIONS

TABLE_HEADERS = ["file", "status", "reason", "faces", "seconds"]


def status_html(text: str) -> str:
    return f'<div class="status-line">{html.escape(text)}</div>'


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
    texture: gr.Radio

    def settings(self, values: dict) -> StudioSettings:
        """The controls' values (from a handler's input dict) as StudioSettings."""
        return StudioSettings(values[self.expression], float(values[self.intensity]), values[self.schedule] or "",
                              values[self.geometry], values[self.faces], values[self.blend],
                              values[self.weights] or "", values[self.texture])

    def all(self) -> set[gr.components.Component]:
        return {self.expression, self.intensity, self.schedule, self.geometry, self.faces, self.blend, self.weights,
                self.texture}


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
                    label="Weights", elem_id="weights"),
        gr.Radio(list(STUDIO_GEOMETRIES), value="auto", label="Texture", elem_id="texture",
                 info="auto: the weights' own; on: weights/texture.safetensors; off: the warp and the generator"))


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


