#!/usr/bin/env python
"""Time decode_video (to BGR) and encode_video (from frames in memory) on a clip, per encoder preset.

Usage (from the repo root):
  PYTHONPATH=. .venv/bin/python scripts/bench_video.py ../shared/media/video/d18.mp4 [--presets veryfast] [--repeats 3]
Prints the best of --repeats runs (the least disturbed by other processes on a shared machine) as frames per second,
and the output size per preset.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.video.codecs import EncoderConfig
from pipeline.video.decode import decode_video
from pipeline.video.encode import encode_video
from pipeline.video.probe import probe_video


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", type=Path)
    parser.add_argument("--presets", nargs="+", default=["ultrafast", "veryfast", "medium"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    info = probe_video(args.video)
    frames = list(decode_video(args.video))
    decode_s = best_seconds(lambda: sum(1 for _ in decode_video(args.video)), args.repeats)
    print(f"{args.video.name}: {info.width}x{info.height}, {len(frames)} frames, {float(info.fps):.2f} fps")
    print(f"decode -> BGR: {len(frames) / decode_s:7.1f} fps")
    with tempfile.TemporaryDirectory() as folder:
        for preset in args.presets:
            output = Path(folder) / f"{preset}.mp4"
            config = EncoderConfig(preset=preset)
            encode_s = best_seconds(lambda: encode_video(frames, args.video, output, config, info), args.repeats)
            size_kb = output.stat().st_size / 1024
            print(f"encode libx264 crf {config.crf} {preset:>9}: {len(frames) / encode_s:7.1f} fps, {size_kb:7.0f} KiB")


if __name__ == "__main__":
    main()
