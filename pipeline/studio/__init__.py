"""The studio: a local Gradio page over the same workflows as the CLI (`cli.py studio`).

settings: the page's controls as a typed value and the ProcessConfig they make; work: models loaded once, uploads
checked, previews, renders and folder conversions, each through pipeline.process / pipeline.batch; progress: what
the page shows while a render runs; layout and app: the page itself; command: serving it (its CLI options are in
cli_studio.py, beside cli.py). Only layout and app import gradio; nothing here imports click.
"""
