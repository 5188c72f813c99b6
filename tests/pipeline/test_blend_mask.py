"""pipeline.blend.build_face_mask: the soft face mask of an aligned crop."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.blend import build_face_mask
from pipeline.faces.align import crop_template


@pytest.mark.parametrize("size", [64, 128, 256])
def test_face_mask_range_border_and_landmarks(size):
    mask = build_face_mask(size)
    assert mask.shape == (size, size) and mask.dtype == np.float32
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    assert np.all(border == 0.0)
    for x, y in np.rint(crop_template(size)).astype(int):
        assert mask[y, x] == pytest.approx(1.0), (x, y)


def test_face_mask_is_smooth_symmetric_and_feather_stays_inside():
    narrow, wide = build_face_mask(128, feather=0.04), build_face_mask(128, feather=0.15)
    # The feather eats inward: a wider feather has fewer full pixels but never a larger support.
    assert (wide == 1).sum() < (narrow == 1).sum()
    assert (wide > 0).sum() <= (narrow > 0).sum()
    # Smooth edge: no jump between neighbours larger than a feather step allows.
    assert np.abs(np.diff(wide, axis=1)).max() < 0.1
    # The template is left-right symmetric about x = 64 to within a fraction of a pixel.
    assert np.abs(narrow[:, 1:] - narrow[:, 1:][:, ::-1]).max() < 0.25


@pytest.mark.parametrize("kwargs", [{"size": 4}, {"size": 128, "feather": 0.0}, {"size": 128, "scale": 3.0}])
def test_face_mask_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        build_face_mask(**kwargs)
