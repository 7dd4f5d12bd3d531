"""Certified measurement intervals: known answers, and simulation of every segmentation the certificate allows."""

import numpy as np
import pytest

from certseg.core.labels import ABSTAIN, Label
from certseg.core.measurements import (
    capped_ratio,
    cardiac_diameter,
    cardiothoracic_ratio,
    certified_measurements,
    horizontal_extent,
    main_regions,
    ratio_verdict,
    seeded_runs,
    thoracic_diameter,
    widest_row,
)
from certseg.dicom.codes import CLASS_TABLE, label_card
from certseg.record import Interval, RatioVerdict

pytestmark = pytest.mark.fast  # the fast tier: pytest -m fast

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
    result = certified_measurements(labels, labels, CLASSES, CLASS_TABLE, pixel_area_mm2=0.25)
    heart = next(s for s in result.structures if s.name == "heart")
    rim = 44 * 44 - 40 * 40
    assert heart.area_pixels == Interval(low=1600, high=1600 + rim + 10, clean=1600)
    assert heart.area_mm2.low == pytest.approx(400.0)
    ratio = result.cardiothoracic_ratio
    # heart 40 wide, or 44 with its abstained rim on the rows where it is certified; thorax 110 wide on one
    # row, or 111 where the abstained column at 9 touches the right lung
    assert ratio.low == pytest.approx(40 / 111) and ratio.high == pytest.approx(44 / 110)
    assert ratio.verdict is RatioVerdict.BELOW and "below 0.5" in ratio.verdict_text


def test_a_lung_under_its_clavicle_counts_to_the_lung_the_clavicle_and_the_thorax():
    labels = chest_labels()
    labels[10:14, 5:40] = 6  # right lung under the right clavicle, reaching past the lung's edge at 10
    labels[10:14, 5:10] = 4  # the clavicle alone where it leaves the lung
    result = certified_measurements(labels, labels, CLASSES, CLASS_TABLE, None)
    whole = certified_measurements(chest_labels(), chest_labels(), CLASSES, CLASS_TABLE, None)
    areas = {s.name: s.area_pixels for s in result.structures}
    assert areas["right lung"] == {s.name: s.area_pixels for s in whole.structures}["right lung"]
    assert areas["right clavicle"].low == areas["right clavicle"].clean == 4 * 35
    assert result.cardiothoracic_ratio == whole.cardiothoracic_ratio  # the thorax is the lungs', clavicles aside


def test_an_abstained_pixel_across_the_chest_no_longer_widens_the_heart_past_the_thorax():
    """The finding: with abstentions at both chest walls, the old bound (heart's extent over certified and
    abstained pixels anywhere / the lungs' extent) was above 1 while the clean ratio was 0.36."""
    labels = chest_labels()
    labels[50:60, 2:6] = ABSTAIN  # a stray abstained patch outside the right lung (collimation edge)
    labels[50:60, 122:127] = ABSTAIN  # and one beyond the left lung
    old_high = horizontal_extent(np.isin(labels, (HEART, ABSTAIN))) / horizontal_extent(
        np.isin(labels, (RIGHT_LUNG, LEFT_LUNG)))
    assert old_high > 1
    ratio = certified_measurements(labels, labels, CLASSES, CLASS_TABLE, None).cardiothoracic_ratio
    assert 0 <= ratio.low <= ratio.clean <= ratio.high <= 1
    assert ratio.high == pytest.approx(44 / 110)


def test_thoracic_diameter_is_measured_on_one_row():
    """A rotated chest: the lungs' overall extent is wider than any single row of them."""
    lungs = np.zeros((40, 60), dtype=bool)
    lungs[0:20, 0:30] = True
    lungs[20:40, 20:60] = True
    assert horizontal_extent(lungs) == 60 and widest_row(lungs) == 40 == thoracic_diameter(lungs)


def test_seeded_runs_keep_only_the_runs_that_touch_a_seed():
    region = np.array([[1, 1, 0, 1, 1, 1, 0, 1]], dtype=bool)
    seeds = np.zeros_like(region)
    seeds[0, 4] = True
    assert seeded_runs(region, seeds).astype(int).tolist() == [[0, 0, 0, 1, 1, 1, 0, 0]]
    assert cardiac_diameter(region, seeds) == 3 and cardiac_diameter(region) == 3  # unseeded: its largest region


def test_capped_ratio_is_monotone_and_never_leaves_zero_to_one():
    values = [capped_ratio(c, t) for c in range(0, 8) for t in range(0, 8)]
    assert min(values) == 0 and max(values) == 1
    for c in range(7):
        for t in range(7):
            assert capped_ratio(c, t) <= capped_ratio(c + 1, t) and capped_ratio(c, t + 1) <= capped_ratio(c, t)


def measured_ratio(smoothed: np.ndarray, certified: np.ndarray) -> float:
    """The certified quantity on one segmentation g(x'): both diameters from the certified main regions outwards."""
    heart_seeds = main_regions(certified == HEART, 1.0)
    lung_seeds = main_regions(np.isin(certified, (RIGHT_LUNG, LEFT_LUNG)), 0.1)
    return capped_ratio(cardiac_diameter(smoothed == HEART, heart_seeds),
                        thoracic_diameter(np.isin(smoothed, (RIGHT_LUNG, LEFT_LUNG)), lung_seeds))


def test_every_segmentation_the_certificate_allows_lies_in_the_intervals_and_the_ends_are_reached():
    rng = np.random.default_rng(0)
    labels = chest_labels()
    abstained = labels == ABSTAIN
    abstained |= rng.random(labels.shape) < 0.02  # scattered abstentions anywhere
    labels = np.where(abstained, ABSTAIN, labels)
    result = certified_measurements(labels, labels, CLASSES, CLASS_TABLE, None)
    bounds = {s.name: s.area_pixels for s in result.structures}
    ratio = result.cardiothoracic_ratio
    seen = []
    for trial in range(300):
        # g on an image within the radius: certified pixels keep their label, abstained ones may be anything
        chosen = rng.integers(0, 6, size=labels.shape) if trial % 3 else np.full(labels.shape, trial % 6)
        smoothed = np.where(abstained, chosen, labels)
        for label in label_card()[1:]:
            area = int((smoothed == label["value"]).sum())
            assert bounds[label["name"]].low <= area <= bounds[label["name"]].high
        value = measured_ratio(smoothed, labels)
        assert ratio.low - 1e-12 <= value <= ratio.high + 1e-12
        seen.append(value)
    heart_everywhere = np.where(abstained, HEART, labels)
    assert int((heart_everywhere == HEART).sum()) == bounds["heart"].high  # the upper end is attained
    assert measured_ratio(heart_everywhere, labels) == pytest.approx(ratio.high)
    lungs_everywhere = np.where(abstained, RIGHT_LUNG, labels)
    assert measured_ratio(lungs_everywhere, labels) == pytest.approx(ratio.low)  # and the lower end
    assert min(seen) < max(seen)


def test_without_a_certified_lung_there_is_no_interval():
    labels = np.full((20, 20), ABSTAIN)
    labels[5:15, 5:15] = HEART
    ratio = certified_measurements(labels, labels, CLASSES, CLASS_TABLE, None).cardiothoracic_ratio
    assert ratio.low is None and ratio.high is None and ratio.verdict is RatioVerdict.NOT_CERTIFIED


@pytest.mark.parametrize("low, high, verdict", [(0.40, 0.49, "below"), (0.51, 0.60, "above"),
                                                 (0.45, 0.55, "undecided"), (0.5, 0.5, "undecided"),
                                                 (None, None, "not certified")])
def test_the_verdict_on_half(low, high, verdict):
    assert ratio_verdict(low, high) == verdict


def test_a_stray_heart_speck_is_not_the_heart_in_the_clean_value_nor_in_the_bounds():
    """The finding on the shipped sample: a few heart pixels far from the heart made the clean ratio 0.82."""
    labels = chest_labels()
    labels[60:62, 12:14] = HEART  # a speck inside the right lung, certified
    plain = cardiothoracic_ratio(labels == HEART, np.isin(labels, (RIGHT_LUNG, LEFT_LUNG)))
    assert plain == pytest.approx(40 / 110)
    ratio = certified_measurements(labels, labels, CLASSES, CLASS_TABLE, None).cardiothoracic_ratio
    assert ratio.high == pytest.approx(44 / 110) and ratio.low <= ratio.clean <= ratio.high


def test_the_plain_ratio_of_reference_masks():
    labels = chest_labels()
    assert cardiothoracic_ratio(labels == HEART, np.isin(labels, (RIGHT_LUNG, LEFT_LUNG))) == pytest.approx(40 / 110)
