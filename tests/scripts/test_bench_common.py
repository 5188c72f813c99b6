"""scripts/bench_common.py: each benchmark rewrites only its own section of docs/BENCHMARKS.md."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import bench_common as bc  # noqa: E402


def test_sections_are_appended_then_replaced_in_place_without_touching_the_others(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    bc.write_section("generator", "## Generator\n| a |\n", path)
    bc.write_section("e2e", "## End to end\nfirst\n", path)
    bc.write_section("generator", "## Generator\n| b |\n", path)
    text = path.read_text()
    assert text.startswith(bc.DOC_HEADER)
    assert "| b |" in text and "| a |" not in text and "first" in text
    assert text.index("bench:generator") < text.index("bench:e2e")  # replaced where it was
    assert text.count("<!-- bench:generator -->") == 1 and text.count("<!-- /bench:e2e -->") == 1
    assert not path.with_name("BENCHMARKS.md.lock").exists()


def test_replacement_text_is_taken_literally():
    document = bc.replace_section("intro\n", "x", "old")
    assert bc.replace_section(document, "x", r"C:\new \1 $0").count(r"C:\new \1 $0") == 1


def test_table_and_run_clock():
    assert bc.table(["a", "b"], [(1, "x")]) == "| a | b |\n|---|---|\n| 1 | x |"
    clock = bc.RunClock()
    line = clock.usage_line()
    assert "this benchmark" in line and "other processes" in line


def test_interleaved_times_keep_every_round_in_order_after_the_warm_up():
    calls = []
    times = bc.interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert [len(times["a"]), len(times["b"])] == [3, 3] and min(times["a"] + times["b"]) >= 0
