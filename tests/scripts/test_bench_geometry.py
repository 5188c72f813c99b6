"""scripts/bench_geometry.py: the warp's share is taken round by round, then the median."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import bench_geometry  # noqa: E402


def test_share_is_the_median_of_each_rounds_extra_time_over_the_generator_alone():
    # A slow spell (round 2) hits both sides alike; its ratio stays that of the others.
    times = {"torch": [1.0, 4.0, 1.0], "torch+warp": [1.1, 4.4, 1.2], "coarse_field": [0.01, 0.04, 0.01]}
    assert abs(bench_geometry.share(times, "torch", ["torch+warp"], ["torch"]) - 0.1) < 1e-9
    assert abs(bench_geometry.share(times, "torch", ["torch+warp", "coarse_field"], ["torch"]) - 0.11) < 1e-9
    assert abs(bench_geometry.share(times, "torch", ["coarse_field"]) - 0.01) < 1e-9
