"""The expression schedule: which expression, at what intensity, at each moment of a video.

Text forms (seconds; a segment covers [start, end), an empty end runs to the end of the video):
  "sad"                              the whole video (aliases and paper codes work: "smile", "SAS")
  "happy:0.5"                        the whole video at half intensity
  "happy@0-3,sad:0.8@3-6,fear@8-"    segments; times not covered leave the frame unchanged
  "plan.json"                        [{"expression": "happy", "start": 0, "end": 3, "intensity": 0.8}, ...]

Cross-fade (fade_s > 0): each segment's intensity is box-filtered over fade_s, so a change of expression becomes a
linear cross-fade of width fade_s centred on the boundary, and a segment next to a gap fades in/out. Segments that
start at 0 or never end are not faded at those ends. `mix_at` gives every expression's weight; `at` gives the
strongest one, for a synthesizer that runs one expression per frame.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from usgan.errors import UserError
from usgan.expressions import Expression, parse_expression

Mix = tuple[tuple[Expression, float], ...]
"""(expression, weight) pairs, strongest first; weights in (0, 1]."""

_MIN_WEIGHT = 1e-6  # weights below this are fade tails, not content


class ScheduleError(UserError):
    """A schedule (text or JSON file) that cannot be parsed or is inconsistent; the message names it."""


@dataclass(frozen=True)
class Segment:
    """One expression over [start_s, end_s) seconds at an intensity in [0, 1]; end_s = inf runs to the end."""

    start_s: float
    end_s: float
    expression: Expression
    intensity: float = 1.0

    def covers(self, time_s: float) -> bool:
        return self.start_s <= time_s < self.end_s


@dataclass(frozen=True)
class Schedule:
    """Non-overlapping segments sorted by start, and the cross-fade width in seconds (0 = hard cuts)."""

    segments: tuple[Segment, ...]
    fade_s: float = 0.0

    def __post_init__(self) -> None:
        check_segments(self.segments, self.fade_s, "schedule")

    def mix_at(self, time_s: float) -> Mix:
        """Every expression's weight at time_s (an empty tuple where nothing is scheduled)."""
        weights: dict[Expression, float] = {}
        for segment in self.segments:
            weight = _faded_weight(segment, time_s, self.fade_s)
            if weight > _MIN_WEIGHT:
                # Adjacent segments of one expression add up to a ramp between their intensities.
                weights[segment.expression] = min(1.0, weights.get(segment.expression, 0.0) + weight)
        return tuple(sorted(weights.items(), key=lambda item: -item[1]))

    @property
    def is_timed(self) -> bool:
        """The expression changes over time (several segments, or one that starts late or ends)."""
        return len(self.segments) > 1 or any(s.start_s > 0 or math.isfinite(s.end_s) for s in self.segments)

    def at(self, time_s: float) -> tuple[Expression, float] | None:
        """(expression, intensity) at time_s, the strongest of mix_at; None leaves the frame unchanged."""
        mix = self.mix_at(time_s)
        return mix[0] if mix else None


def _faded_weight(segment: Segment, time_s: float, fade_s: float) -> float:
    """The segment's intensity at time_s, box-filtered over fade_s (plain coverage when fade_s is 0)."""
    if fade_s <= 0.0:
        return segment.intensity if segment.covers(time_s) else 0.0
    start = -math.inf if segment.start_s == 0.0 else segment.start_s  # the video starts in this segment: no fade-in
    low, high = time_s - fade_s / 2, time_s + fade_s / 2
    if start <= low and high <= segment.end_s:
        return segment.intensity  # fully covered: exact, free of rounding in the division below
    overlap = max(0.0, min(high, segment.end_s) - max(low, start))
    return segment.intensity * min(1.0, overlap / fade_s)


def check_segments(segments: tuple[Segment, ...], fade_s: float, source: str) -> None:
    """Raise ScheduleError naming source for a bad fade, time or intensity, or overlapping (or unsorted) segments."""
    if not math.isfinite(fade_s) or fade_s < 0:
        raise ScheduleError(f"{source}: fade must be >= 0 seconds, got {fade_s}")
    for segment in segments:
        _check_segment(segment, source)
    for before, after in zip(segments, segments[1:]):
        if after.start_s < before.end_s:
            raise ScheduleError(f"{source}: segments {_describe(before)} and {_describe(after)} overlap")


def _check_segment(segment: Segment, source: str) -> None:
    what = f"{source}: segment {_describe(segment)}"
    if not math.isfinite(segment.start_s) or segment.start_s < 0:
        raise ScheduleError(f"{what}: start must be a time >= 0 seconds")
    if math.isnan(segment.end_s) or segment.end_s <= segment.start_s:
        raise ScheduleError(f"{what}: end must be after start")
    if not 0.0 <= segment.intensity <= 1.0:
        raise ScheduleError(f"{what}: intensity must be in [0, 1]")


def _describe(segment: Segment) -> str:
    end = "" if math.isinf(segment.end_s) else f"{segment.end_s:g}"
    return f"{segment.expression}:{segment.intensity:g}@{segment.start_s:g}-{end}"


# ---------------------------------------------------------------- parsing


def parse_schedule(text: str, fade_s: float = 0.0) -> Schedule:
    """A Schedule from an expression name, a "name[:intensity]@start-[end],..." list or a .json file path."""
    text = text.strip()
    if text.lower().endswith(".json"):
        return _build(text, fade_s, _read_json_segments(Path(text)))
    if not text:
        raise ScheduleError("schedule: empty; give an expression such as 'happy' or 'happy@0-3,sad@3-6'")
    parts = [part.strip() for part in text.split(",")]
    if len(parts) == 1 and "@" not in parts[0]:
        name, intensity = _parse_name(parts[0], text)
        return _build(repr(text), fade_s, [Segment(0.0, math.inf, name, intensity)])
    return _build(repr(text), fade_s, [_parse_timed(part, text) for part in parts])


def _build(source: str, fade_s: float, segments: list[Segment]) -> Schedule:
    """Sort segments and validate them, naming source in any error."""
    ordered = tuple(sorted(segments, key=lambda segment: segment.start_s))
    check_segments(ordered, fade_s, source)  # first, so the error names the text or file, not "schedule"
    return Schedule(ordered, fade_s)


def _parse_timed(part: str, source: str) -> Segment:
    """One "name[:intensity]@start-[end]" segment."""
    if part.count("@") != 1:
        raise ScheduleError(f"{source!r}: segment {part!r} needs a time range, e.g. 'happy@0-3' or 'sad@6-'")
    label, times = part.split("@")
    name, intensity = _parse_name(label, source)
    if times.strip().startswith("-"):
        raise ScheduleError(f"{source!r}: segment {part!r}: times must be >= 0 seconds")
    start_text, dash, end_text = times.strip().partition("-")
    if not dash or not start_text.strip():
        raise ScheduleError(f"{source!r}: segment {part!r}: time range must be START-END or START- in seconds")
    start = _parse_number(start_text, f"{source!r}: segment {part!r}: start")
    end = math.inf if not end_text.strip() else _parse_number(end_text, f"{source!r}: segment {part!r}: end")
    return Segment(start, end, name, intensity)


def _parse_name(label: str, source: str) -> tuple[Expression, float]:
    """ "name" or "name:intensity" -> (canonical expression, intensity)."""
    name, colon, level = label.strip().partition(":")
    intensity = _parse_number(level, f"{source!r}: intensity of {name.strip()!r}") if colon else 1.0
    return _parse_expression(name, repr(source)), intensity


def _parse_expression(name: object, source: str) -> Expression:
    if not isinstance(name, str):
        raise ScheduleError(f"{source}: expression must be a name, got {name!r}")
    try:
        return parse_expression(name)
    except UserError as error:
        raise ScheduleError(f"{source}: {error}") from error


def _parse_number(text: object, what: str) -> float:
    """A float from text or a JSON number; booleans and junk are ScheduleErrors."""
    if isinstance(text, bool):
        raise ScheduleError(f"{what}: expected a number, got {text!r}")
    try:
        return float(text.strip() if isinstance(text, str) else text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ScheduleError(f"{what}: expected a number, got {text!r}") from None


# ---------------------------------------------------------------- JSON files

_JSON_KEYS = ("expression", "start", "end", "intensity")


def _read_json_segments(path: Path) -> list[Segment]:
    """Segments from a JSON list of {"expression", "start", "end" (null/absent = open), "intensity"} objects."""
    if not path.is_file():
        raise ScheduleError(f"{path}: schedule file not found")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ScheduleError(f"{path}: not a readable JSON file ({str(error).splitlines()[0]})") from None
    if not isinstance(entries, list) or not entries:
        raise ScheduleError(f"{path}: expected a non-empty JSON list of segments")
    return [_json_segment(entry, f"{path}: segment {index}") for index, entry in enumerate(entries)]


def _json_segment(entry: object, where: str) -> Segment:
    """One JSON object -> Segment; unknown or missing keys are ScheduleErrors naming the segment."""
    if not isinstance(entry, dict):
        raise ScheduleError(f"{where}: expected an object with keys {', '.join(_JSON_KEYS)}")
    unknown = sorted(set(entry) - set(_JSON_KEYS))
    if unknown or "expression" not in entry or "start" not in entry:
        problem = f"unknown key(s) {', '.join(unknown)}" if unknown else "needs 'expression' and 'start'"
        raise ScheduleError(f"{where}: {problem}; valid keys: {', '.join(_JSON_KEYS)}")
    end = entry.get("end")
    return Segment(
        start_s=_parse_number(entry["start"], f"{where}: start"),
        end_s=math.inf if end is None else _parse_number(end, f"{where}: end"),
        expression=_parse_expression(entry["expression"], where),
        intensity=_parse_number(entry.get("intensity", 1.0), f"{where}: intensity"),
    )
