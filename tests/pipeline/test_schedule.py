"""Tests for the expression schedule: text and JSON forms, lookups over time, cross-fades and one-line errors."""

from __future__ import annotations

import json
import math

import pytest

from pipeline.schedule import Schedule, ScheduleError, Segment, parse_schedule
from usgan.errors import UserError


@pytest.mark.parametrize(
    "text, expression", [("sad", "sad"), (" Smile ", "happy"), ("SAS", "sad"), ("fear", "fearful")]
)
def test_a_single_name_covers_the_whole_video(text, expression):
    schedule = parse_schedule(text)
    assert schedule.segments == (Segment(0.0, math.inf, expression, 1.0),)
    assert schedule.at(0.0) == (expression, 1.0)
    assert schedule.at(3600.0) == (expression, 1.0)


def test_a_single_name_with_intensity():
    assert parse_schedule("happy:0.5").at(1.0) == ("happy", 0.5)


def test_segments_with_gaps_open_end_and_intensity():
    schedule = parse_schedule("sad@3-6, happy:0.5@0-3, anger@8-")
    assert [segment.expression for segment in schedule.segments] == ["happy", "sad", "angry"]  # sorted by start
    expected = {0.0: ("happy", 0.5), 2.999: ("happy", 0.5), 3.0: ("sad", 1.0), 5.99: ("sad", 1.0),
                6.0: None, 7.5: None, 8.0: ("angry", 1.0), 1e6: ("angry", 1.0)}
    for time_s, value in expected.items():
        assert schedule.at(time_s) == value, time_s


def test_json_file(tmp_path):
    path = tmp_path / "plan.json"
    entries = [{"expression": "happy", "start": 0, "end": 3, "intensity": 0.8}, {"expression": "SUS", "start": 4}]
    path.write_text(json.dumps(entries))
    schedule = parse_schedule(str(path))
    assert schedule.segments == (Segment(0.0, 3.0, "happy", 0.8), Segment(4.0, math.inf, "surprised", 1.0))
    assert schedule.at(3.5) is None


def test_cross_fade_between_expressions_and_into_gaps():
    schedule = parse_schedule("happy@0-3,sad:0.5@3-6", fade_s=0.2)
    assert schedule.mix_at(0.0) == (("happy", 1.0),)  # a segment starting at 0 does not fade in
    assert schedule.mix_at(2.0) == (("happy", 1.0),)
    mix = dict(schedule.mix_at(3.0))  # the boundary: half of each
    assert mix["happy"] == pytest.approx(0.5) and mix["sad"] == pytest.approx(0.25)
    assert dict(schedule.mix_at(3.05))["happy"] == pytest.approx(0.25)
    assert schedule.at(3.05)[0] == "sad"  # the strongest expression wins
    assert schedule.at(6.0) == ("sad", pytest.approx(0.25))  # fading out into the gap
    assert schedule.at(6.11) is None


def test_adjacent_segments_of_one_expression_ramp_their_intensity():
    schedule = parse_schedule("happy:0.2@0-2,happy:1@2-", fade_s=1.0)
    assert schedule.at(2.0) == ("happy", pytest.approx(0.6))
    assert schedule.at(1.75) == ("happy", pytest.approx(0.4))
    assert schedule.at(9.0) == ("happy", 1.0)


def test_zero_intensity_leaves_the_frame_unchanged():
    assert parse_schedule("sad:0@0-2").at(1.0) is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("happy@0-3,sad@2-5", "overlap"),
        ("happy@-1-3", ">= 0"),
        ("happy@3-1", "end must be after start"),
        ("happy:1.5", r"intensity must be in \[0, 1\]"),
        ("happy:x@0-1", "expected a number"),
        ("grumpy@0-3", "unknown expression 'grumpy'"),
        ("happy,sad", "needs a time range"),
        ("happy@0", "START-END"),
        ("happy@@0-1", "needs a time range"),
        ("happy@nan-1", ">= 0"),
        ("", "empty"),
        ("missing.json", "not found"),
    ],
)
def test_bad_text_is_a_one_line_schedule_error(text, message):
    with pytest.raises(ScheduleError, match=message) as error:
        parse_schedule(text)
    assert isinstance(error.value, UserError) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not a readable JSON file"),
        ("[]", "non-empty JSON list"),
        ('[{"expression": "happy"}]', "needs 'expression' and 'start'"),
        ('[{"expression": "happy", "start": 0, "speed": 2}]', "unknown key"),
        ('[{"expression": 3, "start": 0}]', "expression must be a name"),
        ('[{"expression": "happy", "start": true}]', "expected a number"),
        ('[{"expression": "happy", "start": 0, "end": 4}, {"expression": "sad", "start": 3}]', "overlap"),
        ('[{"expression": "happy", "start": -2}]', ">= 0"),
    ],
)
def test_bad_json_names_the_file(tmp_path, content, message):
    path = tmp_path / "plan.json"
    path.write_text(content)
    with pytest.raises(ScheduleError, match=message) as error:
        parse_schedule(str(path))
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_schedule_validates_when_built_directly():
    with pytest.raises(ScheduleError, match="overlap"):
        Schedule((Segment(0.0, 5.0, "happy"), Segment(4.0, 6.0, "sad")))
    with pytest.raises(ScheduleError, match="fade"):
        Schedule((Segment(0.0, 5.0, "happy"),), fade_s=-1.0)
