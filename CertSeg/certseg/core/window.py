"""The intensity window: which stored pixel values map to black and white of the model input."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from certseg.errors import InputError

DEFAULT_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class IntensityWindow:
    """Stored value `low` maps to 0 and `high` to 1 (values outside are clipped)."""

    low: float
    high: float

    def __post_init__(self):
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.high > self.low):
            raise InputError(f"intensity window needs low < high, got [{self.low}, {self.high}]")

    @classmethod
    def from_percentiles(cls, image: np.ndarray, percentiles=DEFAULT_PERCENTILES) -> IntensityWindow:
        low, high = np.percentile(image, percentiles)
        if high <= low:  # flat image: any window containing the value gives the same input
            high = low + 1.0
        return cls(float(low), float(high))
