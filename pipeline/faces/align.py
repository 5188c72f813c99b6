"""The one 5-point aligner, and which detected faces to edit.

align_face is the only aligner in the project: training-data preparation and inference both call it, so the
generator always sees crops made by the same transform.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from numpy.typing import NDArray

from pipeline.types import Affine, AlignedCrop, Face, FaceSelection, Frame, Landmarks5, check_frame

# InsightFace's arcface_dst (insightface.utils.face_align) for a 112 crop; norm_crop at image_size=128 shifts it
# right by 8 px, which is the generator's template. Scaled by S/128 for any crop size S.
ARCFACE_DST = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
TEMPLATE_SIZE = 128
CROP_TEMPLATE = ARCFACE_DST + np.array([8.0, 0.0])


def crop_template(size: int) -> NDArray[np.float64]:
    """(5, 2) landmark positions in a size x size crop (InsightFace's 128 template scaled by size/128)."""
    return CROP_TEMPLATE * (size / TEMPLATE_SIZE)


def estimate_similarity(src: NDArray, dst: NDArray) -> Affine:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src points onto dst, as (2, 3).

    For 2-D points this closed form equals Umeyama's estimate used by skimage's SimilarityTransform.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - src_mean, dst - dst_mean
    norm = float((s**2).sum())
    if norm < 1e-12:
        raise ValueError("landmarks are degenerate (all points coincide)")
    a = float((s[:, 0] * d[:, 0] + s[:, 1] * d[:, 1]).sum()) / norm
    b = float((s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum()) / norm
    linear = np.array([[a, -b], [b, a]])
    return np.hstack([linear, (dst_mean - linear @ src_mean)[:, None]])


def estimate_affine(landmarks: Landmarks5, size: int) -> Affine:
    """(2, 3) frame->crop transform that puts the 5 landmarks on the template of a size x size crop."""
    landmarks = np.asarray(landmarks)
    if landmarks.shape != (5, 2):
        raise ValueError(f"landmarks: expected shape (5, 2), got {landmarks.shape}")
    return estimate_similarity(landmarks, crop_template(size))


def align_face(frame: Frame, face: Face, size: int) -> AlignedCrop:
    """Warp a face to the generator's size x size crop; replicated edges keep crops near a border free of black."""
    check_frame(frame)
    affine = estimate_affine(face.landmarks, size)
    image = cv2.warpAffine(frame, affine, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return AlignedCrop(image=image, affine=affine, face=face)


# ---------------------------------------------------------------- selection


def face_area(face: Face) -> float:
    """Box area in pixels."""
    x1, y1, x2, y2 = face.bbox
    return float(max(x2 - x1, 0.0) * max(y2 - y1, 0.0))


def select_faces(faces: Sequence[Face], mode: FaceSelection) -> list[Face]:
    """All faces, or only the largest (an empty list stays empty)."""
    if mode == "all":
        return list(faces)
    if mode == "largest":
        return [max(faces, key=face_area)] if faces else []
    raise ValueError(f"unknown face selection {mode!r}")
