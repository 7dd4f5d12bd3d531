"""Certified measurements: structure areas and the cardiothoracic ratio as intervals.

Let g be the smoothed segmenter, C_c the pixels certified as class c and A the abstained pixels.
Claim: whenever the certificate holds (probability >= 1 - alpha), for every image x' within the
certified radius of the certified image, the region S_c = {i : g(x')_i = c} satisfies

    C_c  is a subset of  S_c  is a subset of  C_c | A.

Proof.  A certified pixel i keeps g's label within the radius, so i in C_c gives g(x')_i = c, and
i certified as c' != c gives g(x')_i = c' != c.  Every pixel is certified (as c or as another
class) or abstained, so S_c holds all of C_c and nothing outside C_c | A.  QED.

Any measurement that grows with the region (area; the horizontal extent max column - min column
+ 1) is therefore bounded by its values on C_c and on C_c | A, with the certificate's own
1 - alpha and against every perturbation below the radius.  The cardiothoracic ratio, heart width
over thoracic width (the outer edges of both lungs), is bounded by the smallest heart over the
widest thorax and the widest heart over the smallest thorax.  Abstained pixels anywhere widen the
upper bounds: an interval is only as tight as the certificate is complete.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from certseg.core.labels import ABSTAIN, BACKGROUND, Label

MEANING = ("low: the certified pixels; high: certified plus abstained pixels. With the certificate's probability "
           "1 - alpha, the smoothed segmenter's value lies in [low, high] on this image and on every image within "
           "the certified radius. clean: the network's own value on the noise-free image, for comparison")


def horizontal_extent(mask: np.ndarray) -> int:
    """Columns from the leftmost to the rightmost pixel of `mask` (0 when empty)."""
    columns = np.flatnonzero(mask.any(axis=0))
    return int(columns[-1] - columns[0] + 1) if columns.size else 0


def region_bounds(labels: np.ndarray, classes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(smallest, largest) region the smoothed segmenter can give the union of `classes`."""
    certified = np.isin(labels, classes)
    return certified, certified | (labels == ABSTAIN)


def cardiothoracic_ratio(heart: np.ndarray, lungs: np.ndarray) -> float | None:
    thorax = horizontal_extent(lungs)
    return horizontal_extent(heart) / thorax if thorax else None


def certified_measurements(labels: np.ndarray, clean_labels: np.ndarray, classes: Sequence[Label],
                           pixel_area_mm2: float | None) -> dict[str, Any]:
    """report.json's `measurements`: area intervals per structure (every class but background) and the
    cardiothoracic ratio's."""
    structures = []
    for label in classes:
        if label.value == BACKGROUND:
            continue
        low, high = region_bounds(labels, (label.value,))
        pixels = {"low": int(low.sum()), "high": int(high.sum()), "clean": int((clean_labels == label.value).sum())}
        area = None if pixel_area_mm2 is None else {k: v * pixel_area_mm2 for k, v in pixels.items()}
        structures.append({"name": label.name, "area_pixels": pixels, "area_mm2": area})
    return {"meaning": MEANING, "structures": structures,
            "cardiothoracic_ratio": _ratio_bounds(labels, clean_labels, classes)}


def _ratio_bounds(labels: np.ndarray, clean_labels: np.ndarray, classes: Sequence[Label]) -> dict[str, Any] | None:
    values = {label.name: label.value for label in classes}
    lungs = tuple(values[name] for name in ("right lung", "left lung") if name in values)
    if "heart" not in values or len(lungs) != 2:
        return None  # the model does not segment what the ratio needs
    heart_low, heart_high = region_bounds(labels, (values["heart"],))
    lungs_low, lungs_high = region_bounds(labels, lungs)
    thorax_low, thorax_high = horizontal_extent(lungs_low), horizontal_extent(lungs_high)
    clean = cardiothoracic_ratio(clean_labels == values["heart"], np.isin(clean_labels, lungs))
    return {
        "low": horizontal_extent(heart_low) / thorax_high if thorax_high else None,
        "high": horizontal_extent(heart_high) / thorax_low if thorax_low else None,  # None: unbounded
        "clean": clean,
        "definition": "maximal horizontal heart width / horizontal extent of both lungs (outer edges), "
                      "on the source grid",
    }
