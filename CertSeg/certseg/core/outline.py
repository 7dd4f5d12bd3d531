"""The outline of a mask's main region, as a closed polygon in DICOM image coordinates.

Viewers that draw an SR's measurements (OHIF among them) draw image regions, not segments; the SR
gives each certified structure the outline of its largest region beside the reference to its
segment.  The outline is marching squares at level 0.5 (contourpy, the contouring library behind
matplotlib): it separates the region's pixel centres from every other pixel centre, so the pixels
whose centres lie inside the polygon are exactly the region's.  Coordinates are (column, row) with
the top-left corner of the top-left pixel at (0, 0), as DICOM's SCOORD states them (PS3.3 C.18.6.1.1).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def largest_region(mask: np.ndarray) -> np.ndarray:
    """The mask's largest 4-connected region (empty when the mask is)."""
    regions, count = ndimage.label(mask)
    if count == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(regions.ravel())[1:]
    return regions == 1 + int(np.argmax(sizes))


def main_region_outline(mask: np.ndarray) -> np.ndarray | None:
    """(N, 2) closed polygon (first point == last) around the mask's largest region; None for an empty mask.

    Only the outer boundary is returned (a hole inside the region is not outlined), and points on
    straight runs of the boundary are dropped: they add nothing to the polygon."""
    import contourpy

    region = largest_region(mask)
    if not region.any():
        return None
    padded = np.pad(region.astype(np.float64), 1)  # a region touching the border still gets a closed line
    lines = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate).lines(0.5)
    outer = max(lines, key=_enclosed_area)
    outer = outer - 1.0 + 0.5  # undo the padding; pixel centres sit at half-integers in DICOM image coordinates
    return _without_straight_runs(outer)


def polygon_area(points: np.ndarray) -> float:
    """Area enclosed by a closed polygon (shoelace formula)."""
    return _enclosed_area(points)


def _enclosed_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _without_straight_runs(points: np.ndarray) -> np.ndarray:
    loop = points[:-1] if np.array_equal(points[0], points[-1]) else points
    before, after = np.roll(loop, 1, axis=0), np.roll(loop, -1, axis=0)
    turn = (loop[:, 0] - before[:, 0]) * (after[:, 1] - loop[:, 1]) - (loop[:, 1] - before[:, 1]) * (after[:, 0] - loop[:, 0])
    kept = loop[np.abs(turn) > 1e-9]
    return np.vstack([kept, kept[:1]])
