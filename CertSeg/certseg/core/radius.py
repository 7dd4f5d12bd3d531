"""The certified radius in the units a reader of the image knows: stored pixel values over the source grid.

A model-space radius R holds for every stored-value perturbation below R / ||A|| (core.input_map)
when the window is fixed; a window computed from the image moves with the perturbation, and
movable_window_radius bounds both together (docs/method.md §4).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from certseg.core.input_map import ModelInputMap
from certseg.record import ARRAY_VALUES, Radius, StoredValues


def radius_in_source_units(model_radius: float, input_map: ModelInputMap,
                           window_from: tuple[np.ndarray, tuple[float, float]] | None = None,
                           values: StoredValues = ARRAY_VALUES) -> Radius:
    """The certified radius three ways (docs/method.md §4).

    model_space            L2 in the model input ([0, 1] intensities, model grid)
    stored_values_l2       L2 over the source grid in stored pixel values: R / ||A|| for a fixed
                           window; with `window_from` = (stored image, percentiles), the window
                           was computed from the image, and the radius also covers how far the
                           perturbation moves it (movable_window_radius)
    rms_per_source_pixel   stored_values_l2 / sqrt(#source pixels): the uniform per-pixel change

    "Stored values" are the values the map receives: for DICOM the Modality LUT's output (after
    RescaleSlope/Intercept or a Modality LUT Sequence, MONOCHROME1 mirrored), not the raw pixel
    data; `values` (known when the image was read) name them and convert to raw values where the
    Modality LUT is linear.
    """
    if window_from is None:
        stored = model_radius / input_map.operator_norm()
    else:
        stored = movable_window_radius(model_radius, input_map, *window_from)
    height, width = input_map.source_shape
    return Radius(model_space=model_radius, stored_values_l2=stored,
                  rms_per_source_pixel=stored / math.sqrt(height * width), stored_values_units=values.units,
                  raw_pixel_values_l2=values.raw_radius(stored), raw_pixel_values_note=values.raw_note)


def movable_window_radius(model_radius: float, input_map: ModelInputMap, stored: np.ndarray,
                          percentiles: tuple[float, float], iterations: int = 40) -> float:
    """A stored-value L2 radius that stays sound when the window is percentiles of the image itself.

    A perturbation delta with ||delta|| <= r moves the window ends by at most a(r) and c(r)
    (PercentileSensitivity) and the model input by at most

        B(r) = ||P|| r / (w - a - c)  +  || max over the window box of |f(window) - f(window0)| ||

    where P is the padding + resize (||P|| = ||A|| w), w = high - low, and f the clipped windowed
    image of the UNPERTURBED pixels (x' - x splits into a content term at the moved window, at most
    1 / w' Lipschitz after clipping, plus a window term at the original content).  Per pixel,
    f = clip((u - e1 b) / (w + e2 - e1)) is monotone in e1 and in e2 separately, so its extremes
    over the box |e1| <= a, |e2| <= c lie at the box's corners.  B grows with r; the largest r
    with B(r) < model_radius is found by bisection (returning its lower end).
    """
    sensitivity = PercentileSensitivity(stored)
    low, high = input_map.window.low, input_map.window.high
    if np.percentile(sensitivity.values, percentiles[1]) <= low:
        return 0.0  # a flat image got an arbitrary window (from_percentiles): nothing to promise
    width = high - low
    resample_norm = input_map.operator_norm() * width
    shifted = input_map.linear(torch.as_tensor(np.asarray(stored, np.float64) - low)).numpy() * width
    coverage = input_map.linear(torch.ones(input_map.source_shape, dtype=torch.float64)).numpy() * width
    original = np.clip(shifted / width, 0.0, 1.0)

    def displacement(r: float) -> float:
        a = sensitivity.shift_bound(percentiles[0], r)
        c = sensitivity.shift_bound(percentiles[1], r)
        if a + c >= width:
            return math.inf
        worst = np.zeros_like(original)
        for e1 in (-a, a):
            for e2 in (-c, c):
                moved = np.clip((shifted - e1 * coverage) / (width + e2 - e1), 0.0, 1.0)
                np.maximum(worst, np.abs(moved - original), out=worst)
        return resample_norm * r / (width - a - c) + float(np.linalg.norm(worst))

    inside, outside = 0.0, model_radius / input_map.operator_norm()  # a fixed window is the best case
    for _ in range(iterations):
        middle = (inside + outside) / 2
        inside, outside = (middle, outside) if displacement(middle) < model_radius else (inside, middle)
    return inside


class PercentileSensitivity:
    """How far np.percentile(x, p) can move when x changes by at most `budget` in L2.

    np.percentile interpolates between order statistics x_(j) and x_(j+1), j = floor(p (N-1) / 100).
    Raising it to q + d needs x'_(j+1) >= q + d, so every value below q + d except the j + 1
    smallest must reach q + d; lowering it to q - d needs j + 1 values at or below q - d.  The
    cheapest way to do either moves the values nearest the target and costs the root of their
    squared moves: a lower bound on the true cost, so the shift found is an upper bound.
    """

    def __init__(self, image: np.ndarray):
        self.values = np.sort(np.asarray(image, dtype=np.float64), axis=None)
        self._sums = np.concatenate([[0.0], np.cumsum(self.values)])
        self._squares = np.concatenate([[0.0], np.cumsum(self.values**2)])

    def shift_bound(self, percentile: float, budget: float) -> float:
        position = percentile / 100.0 * (self.values.size - 1)
        rank = int(math.floor(position))
        upper = self.values[min(rank + 1, self.values.size - 1)]
        quantile = float(self.values[rank] + (position - rank) * (upper - self.values[rank]))

        def raise_cost(d: float) -> float:
            target = quantile + d
            return self._cost(target, rank + 1, int(np.searchsorted(self.values, target, side="left")))

        def lower_cost(d: float) -> float:
            target = quantile - d
            return self._cost(target, int(np.searchsorted(self.values, target, side="right")), rank + 1)

        return max(self._largest_shift(raise_cost, budget), self._largest_shift(lower_cost, budget))

    def _cost(self, target: float, first: int, stop: int) -> float:
        """L2 cost of moving values[first:stop] onto target."""
        if stop <= first:
            return 0.0
        total = ((stop - first) * target**2 - 2 * target * (self._sums[stop] - self._sums[first])
                 + self._squares[stop] - self._squares[first])
        return math.sqrt(max(total, 0.0))

    def _largest_shift(self, move_cost, budget: float) -> float:
        inside, outside = 0.0, float(self.values[-1] - self.values[0]) + budget + 1.0
        for _ in range(80):
            middle = (inside + outside) / 2
            inside, outside = (middle, outside) if move_cost(middle) <= budget else (inside, middle)
        return outside  # the upper end: never understate the shift
