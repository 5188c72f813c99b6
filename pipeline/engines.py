"""convert's engines: what turns the files still to do into results, file by file, as each output is written.

An engine is a ConvertFiles: (todo, out_dir, config, settings, jobs) -> an iterator of FileResult, one per file of
todo, each as soon as that file's output is written (or it failed). convert_dir owns folders, the manifest and the
progress bar; it does not know which engine runs. `local`: this process (--jobs 1) or worker processes on this
machine (pipeline.batch_workers); `ray`: a Ray cluster (pipeline.engine_ray). Importing this module is cheap
(convert imports it before any model loads): the engines import their modules when they run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.choices import Engine

if TYPE_CHECKING:  # not imported at run time: they pull in torch
    from pipeline.config import ProcessConfig
    from pipeline.manifest import FileResult, Source

ConvertFiles = Callable[[Sequence["Source"], Path, "ProcessConfig", str, int], Iterator["FileResult"]]


def convert_locally(todo: Sequence[Source], out_dir: Path, config: ProcessConfig, settings: str,
                    jobs: int) -> Iterator[FileResult]:
    """This machine: in this process (jobs 1) or in jobs worker processes."""
    from pipeline.batch_workers import convert_here, convert_in_workers

    if not todo:
        return
    if jobs <= 1:
        yield from convert_here(todo, out_dir, config, settings)
    else:
        yield from convert_in_workers(todo, out_dir, config, jobs, settings)


def engine_for(engine: Engine, ray_address: str | None = None) -> ConvertFiles:
    """The engine named engine; ray_address (ray only): a running cluster to join, None: a local Ray for the run."""
    if engine == "ray":
        from pipeline.engine_ray import convert_on_ray

        return partial(convert_on_ray, address=ray_address)
    return convert_locally
