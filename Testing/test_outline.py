"""core.outline: the polygon the SR gives each certified region, checked with matplotlib's point-in-polygon."""

import numpy as np
import pytest
from matplotlib.path import Path as PolygonPath
from scipy import ndimage

from certseg.core.outline import largest_region, main_region_outline, polygon_area

pytestmark = pytest.mark.fast  # the fast tier: pytest -m fast


def centres_inside(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    row, column = np.mgrid[0:shape[0], 0:shape[1]]
    centres = np.column_stack([column.ravel() + 0.5, row.ravel() + 0.5])  # DICOM image coordinates
    return PolygonPath(polygon).contains_points(centres).reshape(shape)


def smooth_blobs(seed: int, shape=(120, 150)) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(shape)
    return ndimage.gaussian_filter(noise, 6) > 0.02


@pytest.mark.parametrize("seed", range(8))
def test_the_outline_encloses_exactly_the_largest_regions_pixels(seed):
    mask = smooth_blobs(seed)
    polygon = main_region_outline(mask)
    assert np.array_equal(polygon[0], polygon[-1])  # closed, as a DICOM closed POLYLINE is
    expected = ndimage.binary_fill_holes(largest_region(mask))  # the outer boundary only: holes are inside it
    assert np.array_equal(centres_inside(polygon, mask.shape), expected)
    # marching squares cuts each corner pixel by an eighth: the area is the pixel count less at most that
    assert expected.sum() - polygon_area(polygon) == pytest.approx(0, abs=expected.sum() * 0.05 + 10)


def test_a_region_on_the_border_and_a_rectangle_are_outlined_whole():
    mask = np.zeros((40, 50), dtype=bool)
    mask[0:10, 0:20] = True  # touches the top-left corner
    mask[20:30, 30:35] = True  # smaller: not outlined
    polygon = main_region_outline(mask)
    assert np.array_equal(centres_inside(polygon, mask.shape), mask & (np.arange(40)[:, None] < 10))
    assert polygon[:, 0].min() >= 0 and polygon[:, 1].min() >= 0  # inside the image
    assert len(polygon) <= 9  # straight runs dropped: corners only (each cut by marching squares), closed


def test_an_empty_mask_has_no_outline():
    assert main_region_outline(np.zeros((5, 5), dtype=bool)) is None
