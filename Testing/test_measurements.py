"""Certified measurement intervals: known answers, and simulation of every segmentation the certificate allows."""

import numpy as np
import pytest

from certseg.core.labels import ABSTAIN, Label
from certseg.core.measurements import cardiothoracic_ratio, certified_measurements, horizontal_extent
from certseg.dicom.codes import label_card

RIGHT_LUNG, LEFT_LUNG, HEART = 1, 2, 3
CLASSES = tuple(Label(entry["value"], entry["name"]) for entry in label_card())


def chest_labels():
    """Right lung columns 10-39, heart 40-79, left lung 80-119; a 2-pixel abstained rim around the heart
    and an abstained column just outside the right lung."""
    labels = np.zeros((100, 130), dtype=np.int64)
    labels[10:90, 10:40], labels[10:90, 80:120] = RIGHT_LUNG, LEFT_LUNG
    labels[38:82, 38:82] = ABSTAIN
    labels[40:80, 40:80] = HEART
    labels[20:30, 9] = ABSTAIN
    return labels


def test_known_image_gives_the_exact_intervals():
    labels = chest_labels()
    result = certified_measurements(labels, labels, CLASSES, pixel_area_mm2=0.25)
    heart = next(s for s in result["structures"] if s["name"] == "heart")
    rim = 44 * 44 - 40 * 40
    assert heart["area_pixels"] == {"low": 1600, "high": 1600 + rim + 10, "clean": 1600}
    assert heart["area_mm2"]["low"] == pytest.approx(400.0)
    ratio = result["cardiothoracic_ratio"]
    assert ratio["low"] == pytest.approx(40 / 111) and ratio["high"] == pytest.approx(73 / 110)
    # the widest heart may reach the abstained column at 9: 9..81 is 73 columns
    assert horizontal_extent(np.isin(labels, (HEART, ABSTAIN))) == 73


def test_every_segmentation_the_certificate_allows_lies_in_the_intervals_and_the_ends_are_reached():
    rng = np.random.default_rng(0)
    labels = chest_labels()
    abstained = labels == ABSTAIN
    abstained |= rng.random(labels.shape) < 0.02  # scattered abstentions anywhere
    labels = np.where(abstained, ABSTAIN, labels)
    result = certified_measurements(labels, labels, CLASSES, None)
    bounds = {s["name"]: s["area_pixels"] for s in result["structures"]}
    ratio = result["cardiothoracic_ratio"]
    seen_low, seen_high = np.inf, -np.inf
    for trial in range(300):
        # g on an image within the radius: certified pixels keep their label, abstained ones may be anything
        chosen = rng.integers(0, 6, size=labels.shape) if trial % 3 else np.full(labels.shape, trial % 6)
        smoothed = np.where(abstained, chosen, labels)
        for label in label_card()[1:]:
            area = int((smoothed == label["value"]).sum())
            assert bounds[label["name"]]["low"] <= area <= bounds[label["name"]]["high"]
        value = cardiothoracic_ratio(smoothed == HEART, np.isin(smoothed, (RIGHT_LUNG, LEFT_LUNG)))
        assert ratio["low"] - 1e-12 <= value <= ratio["high"] + 1e-12
        seen_low, seen_high = min(seen_low, value), max(seen_high, value)
    heart_everywhere = np.where(abstained, HEART, labels)
    assert int((heart_everywhere == HEART).sum()) == bounds["heart"]["high"]  # the upper end is attained
    assert seen_low < seen_high


def test_no_lungs_certified_gives_no_upper_ratio_bound():
    labels = np.full((20, 20), ABSTAIN)
    labels[5:15, 5:15] = HEART
    ratio = certified_measurements(labels, labels, CLASSES, None)["cardiothoracic_ratio"]
    assert ratio["high"] is None and ratio["low"] == pytest.approx(10 / 20)
