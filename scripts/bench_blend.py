#!/usr/bin/env python
"""Time paste_back per face (feather vs seamless at several clone scales) in a 1280x720 frame, next to a bare
cv2.seamlessClone of the same size, and state what the cheaper seamless scales cost against the full Poisson solve.

Usage: .venv/bin/python scripts/bench_blend.py [--repeats 15] [--no-write]
"Face N px" means the square the mask region spans in the frame (its longer side is about N pixels). The crop is the
pipeline's default 256 px. Each time is the best of --repeats runs, the least disturbed by other processes on a shared
machine. The table goes into docs/BENCHMARKS.md (section "blend").
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import bench_common as bc
import cv2
import numpy as np

from pipeline.blend import build_face_mask, face_region, paste_back

CROP = 256  # ProcessConfig.crop_size
FACES = (128, 256, 400)
VARIANTS = (("feather", 1.0), ("seamless", 1.0), ("seamless", 0.5), ("seamless", 0.25))  # (mode, clone_scale)


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    return 1000 * bc.best_seconds(fn, repeats)


def face_affine(face_px: int, mask: np.ndarray) -> np.ndarray:
    """Frame->crop affine putting the mask region (about face_px on its longer side) at a 1280x720 frame's centre."""
    rows, cols = np.nonzero(mask)
    scale = max(np.ptp(rows), np.ptp(cols)) / face_px
    return np.array([[scale, 0.0, CROP / 2 - scale * 640], [0.0, scale, CROP / 2 - scale * 360]])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / mse) if mse > 0 else float("inf")


def measure(frame: np.ndarray, face_px: int, repeats: int) -> list[str]:
    """One table row: region size, ms per variant, bare seamlessClone ms, PSNR of the scaled solves vs the full one."""
    mask = build_face_mask(CROP)
    affine = face_affine(face_px, mask)
    original = cv2.warpAffine(frame, affine, (CROP, CROP), flags=cv2.INTER_LINEAR)
    # A generated face: the original with a visible change (blurred, brighter), like an edited expression.
    generated = cv2.convertScaleAbs(cv2.GaussianBlur(original, (0, 0), 1.5), alpha=1.0, beta=12)
    paste = {v: (lambda m=v[0], c=v[1]: paste_back(frame, generated, affine, mask, m, original, c)) for v in VARIANTS}
    timings = [best_ms(paste[variant], repeats) for variant in VARIANTS]
    box = np.full((face_px, face_px), 255, np.uint8)
    source = frame[100:100 + face_px, 100:100 + face_px].copy()
    bare = best_ms(lambda: cv2.seamlessClone(source, frame, box, (640, 360), cv2.NORMAL_CLONE), repeats)
    region = face_region(mask, affine, frame.shape)
    full = paste[("seamless", 1.0)]()
    quality = [psnr(paste[("seamless", scale)](), full) for scale in (0.5, 0.25)]
    return [str(face_px), f"{region.x1 - region.x0}x{region.y1 - region.y0}", *(f"{t:.1f}" for t in timings),
            f"{bare:.1f}", *(f"{q:.1f}" for q in quality)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--note", default="")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = parser.parse_args()
    clock = bc.RunClock()
    cv2.setRNGSeed(0)
    noise = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    frame = cv2.GaussianBlur(noise, (0, 0), 2.0)
    header = ["face px", "region", "feather ms", "seamless 1.0 ms", "seamless 0.5 ms (default)",
              "seamless 0.25 ms (--fast)", "bare seamlessClone NxN ms", "PSNR 0.5 vs 1.0 dB", "PSNR 0.25 vs 1.0 dB"]
    table = bc.table(header, [measure(frame, face_px, args.repeats) for face_px in FACES])
    notes = (f"- paste_back of one {CROP} px crop's change into a 1280x720 frame; 'seamless S' solves the Poisson "
             "membrane at scale S (ProcessConfig.clone_scale) and adds it to the full-resolution change. PSNR columns "
             "compare the pasted frame with the full-resolution solve's.")
    body = bc.section("Blend: ms per face, seamless vs feather", bc.command_line(), clock, [table, notes], args.note)
    print(body)
    if not args.no_write:
        bc.write_section("blend", body)


if __name__ == "__main__":
    main()
