"""The render's progress line and the background run behind it."""

from __future__ import annotations

import time

import pytest

from pipeline.hooks import RunCancelled
from pipeline.studio.progress import BackgroundRun, Progress, clock, progress_html, progress_text


def test_progress_text_says_done_total_rate_and_time_left():
    assert progress_text(Progress(50, 200, 10.0), "frames") == "50 / 200 frames, 5.0 fps, ETA 0:30"
    assert progress_text(Progress(3, 4, 2.0), "files") == "3 / 4 files, 1.5 files/s, ETA 0:01"
    assert progress_text(Progress(0, None, 1.0), "frames") == "0 / ? frames, 0.0 fps, ETA ?"


@pytest.mark.parametrize("seconds, shown", [(None, "?"), (0, "0:00"), (59.6, "1:00"), (125, "2:05")])
def test_clock(seconds, shown):
    assert clock(seconds) == shown


def test_progress_html_escapes_and_has_a_bar():
    shown = progress_html(Progress(1, 2, 1.0), "frames")
    assert '<progress value="1" max="2">' in shown and "1 / 2 frames" in shown


def test_background_run_reports_and_returns():
    def work(hooks):
        for done in range(1, 4):
            hooks.advance(done, 3)
        return "finished"

    run = BackgroundRun(work)
    while run.wait(0.05):
        pass
    assert run.result() == "finished" and run.progress().done == 3


def test_background_run_cancels():
    def work(hooks):
        for done in range(1, 1000):
            time.sleep(0.01)
            hooks.advance(done, None)

    run = BackgroundRun(work)
    run.cancel()
    with pytest.raises(RunCancelled):
        run.result()
