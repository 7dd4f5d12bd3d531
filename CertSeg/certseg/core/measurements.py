"""Certified measurements: structure areas and the cardiothoracic ratio as intervals.

Let g be the smoothed segmenter, C_c the pixels certified as class c and A the abstained pixels.
Claim: whenever the certificate holds (probability >= 1 - alpha), for every image x' within the
certified radius of the certified image, the region S_c = {i : g(x')_i = c} satisfies

    C_c  is a subset of  S_c  is a subset of  C_c | A.

Proof.  A certified pixel i keeps g's label within the radius, so i in C_c gives g(x')_i = c, and
i certified as c' != c gives g(x')_i = c' != c.  Every pixel is certified (as c or as another
class) or abstained, so S_c holds all of C_c and nothing outside C_c | A.  QED.

Any measurement that grows with the region is therefore bounded by its values on C_c and on
C_c | A, with the certificate's own 1 - alpha and against every perturbation below the radius.

The cardiothoracic ratio is measured as radiologists measure it on a frontal film:

    cardiac diameter   the heart's maximal horizontal width (right and left heart borders may lie on
                       different rows: the sum of both maximal distances to a vertical midline);
    thoracic diameter  the maximal width of the thorax on one row, from the outer edge of the right
                       lung to the outer edge of the left lung (the inner margins of the ribs);
    ratio              cardiac / thoracic, capped at 1 (a heart wider than the chest is not anatomy,
                       and the cap is monotone, so the bounds below survive it).

Measured on g, abstained pixels anywhere would count as possible heart, and one abstained pixel at the
lateral chest wall would make the heart as wide as the thorax.  So both diameters are measured from the
certified structure outwards: on each row, only the horizontal runs of the region that contain a
certified pixel of it count (`seeded_runs`).  With the seeds K fixed by the certificate, that measure is
monotone in the region (S in S' puts every run of S that meets K inside a run of S' that meets K).  The
seeds are the main regions of the certified structure (the heart's largest certified region; every certified
lung region at least a tenth of the largest), so a stray certified speck is not the heart either.  With
K_h and K_l those seeds,

    ratio low  = cap(cardiac(C_heart; K_h)     / thoracic(C_lungs | A; K_l))
    ratio high = cap(cardiac(C_heart | A; K_h) / thoracic(C_lungs; K_l))

bound the ratio of g(x') for every x' within the radius, and both ends are reached by segmentations
the certificate allows (tested by simulation).  A run of abstained pixels can only widen the heart
where it touches the certified heart on the same row: the heart's uncertain border, not a stray pixel
across the chest.  Without a certified heart or certified lungs there is no interval.  On the clean
labels (and on reference masks) the seeds are the main regions of the region itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from certseg.core.labels import ABSTAIN, BACKGROUND, ClassTable, Label
from certseg.record import AreaMeasurement, Interval, Measurements, RatioMeasurement, RatioVerdict

MEANING = ("low: the certified pixels; high: certified plus abstained pixels. With the certificate's probability "
           "1 - alpha, the smoothed segmenter's value lies in [low, high] on this image and on every image within "
           "the certified radius. clean: the network's own value on the noise-free image, for comparison")


RATIO_THRESHOLD = 0.5  # a cardiothoracic ratio above 0.5 on a PA film is read as an enlarged heart
RATIO_DEFINITION = ("cardiac diameter (maximal horizontal heart width) / thoracic diameter (maximal width of both "
                    "lungs on one row, outer edge to outer edge), capped at 1, on the source grid; certified bounds "
                    "measure each structure from its certified main regions outwards along the rows")


def horizontal_extent(mask: np.ndarray) -> int:
    """Columns from the leftmost to the rightmost pixel of `mask` (0 when empty)."""
    columns = np.flatnonzero(mask.any(axis=0))
    return int(columns[-1] - columns[0] + 1) if columns.size else 0


def widest_row(mask: np.ndarray) -> int:
    """The largest leftmost-to-rightmost width of `mask` on a single row (0 when empty)."""
    if not mask.any():
        return 0
    columns = np.arange(mask.shape[1])
    right = np.where(mask, columns, -1).max(axis=1)
    left = np.where(mask, columns, mask.shape[1]).min(axis=1)
    return int(np.max(np.where(right >= 0, right - left + 1, 0)))


def seeded_runs(region: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The horizontal runs of `region`, row by row, that contain a pixel of `seeds`."""
    height, width = region.shape
    starts = region & ~np.pad(region, ((0, 0), (1, 0)))[:, :-1]
    run_ids = np.where(region, np.cumsum(starts, axis=1) + np.arange(height)[:, None] * (width + 1), 0)
    seeded = np.unique(run_ids[region & seeds])
    return np.isin(run_ids, seeded[seeded > 0])


HEART_KEEP_SHARE = 1.0  # the heart is one organ: its largest region only
LUNG_KEEP_SHARE = 0.1  # the lungs: every region at least a tenth of the largest (both lungs, not specks)


def main_regions(mask: np.ndarray, keep_share: float) -> np.ndarray:
    """The 8-connected regions of `mask` with at least `keep_share` of the largest one's pixels."""
    from scipy import ndimage

    components, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(components.ravel())[1:]
    kept = np.flatnonzero(sizes >= keep_share * sizes.max()) + 1
    return np.isin(components, kept)


def cardiac_diameter(heart: np.ndarray, seeds: np.ndarray | None = None) -> int:
    """Seeds None: the heart's own main region (a stray heart pixel across the chest is not the heart)."""
    seeds = main_regions(heart, HEART_KEEP_SHARE) if seeds is None else seeds
    return horizontal_extent(seeded_runs(heart, seeds))


def thoracic_diameter(lungs: np.ndarray, seeds: np.ndarray | None = None) -> int:
    """Seeds None: the lungs' own main regions."""
    seeds = main_regions(lungs, LUNG_KEEP_SHARE) if seeds is None else seeds
    return widest_row(seeded_runs(lungs, seeds))


def capped_ratio(cardiac: int, thoracic: int) -> float:
    """cardiac / thoracic capped at 1; increasing in `cardiac`, decreasing in `thoracic` (0 / 0 is 0)."""
    if thoracic == 0:
        return 1.0 if cardiac else 0.0
    return min(1.0, cardiac / thoracic)


def cardiothoracic_ratio(heart: np.ndarray, lungs: np.ndarray) -> float | None:
    """The plain ratio of a segmentation or of reference masks; None without lungs."""
    thorax = thoracic_diameter(lungs)
    return capped_ratio(cardiac_diameter(heart), thorax) if thorax else None


def ratio_verdict(low: float | None, high: float | None) -> RatioVerdict:
    """Which side of 0.5 the certified interval lies on."""
    if low is None or high is None:
        return RatioVerdict.NOT_CERTIFIED
    if high < RATIO_THRESHOLD:
        return RatioVerdict.BELOW
    return RatioVerdict.ABOVE if low > RATIO_THRESHOLD else RatioVerdict.UNDECIDED


def region_bounds(labels: np.ndarray, classes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(smallest, largest) region the smoothed segmenter can give the union of `classes`."""
    certified = np.isin(labels, classes)
    return certified, certified | (labels == ABSTAIN)


def certified_measurements(labels: np.ndarray, clean_labels: np.ndarray, structures_named: Sequence[Label],
                           table: ClassTable, pixel_area_mm2: float | None) -> Measurements:
    """report.json's `measurements`: area intervals per structure (every label but background) and the
    cardiothoracic ratio's.  `labels` and `clean_labels` hold class values of `table`: a structure's region
    is every class standing for it, so a lung's area includes the strip under its clavicle."""
    structures = []
    for label in structures_named:
        if label.value == BACKGROUND:
            continue
        low, high = region_bounds(labels, table.classes_with(label.value))
        pixels = Interval(int(low.sum()), int(high.sum()), int(table.mask(clean_labels, label.value).sum()))
        area = None if pixel_area_mm2 is None else Interval(*(value * pixel_area_mm2 for value in
                                                              (pixels.low, pixels.high, pixels.clean)))
        structures.append(AreaMeasurement(label.name, pixels, area))
    return Measurements(MEANING, tuple(structures), _ratio_bounds(labels, clean_labels, structures_named, table))


def ratio_bounds(labels: np.ndarray, heart_classes: tuple[int, ...],
                 lung_classes: tuple[int, ...]) -> tuple[float | None, float | None]:
    """The certified (low, high) of the capped ratio; (None, None) without a certified heart and lung.

    `heart_classes`, `lung_classes`: every class value standing for the heart, for either lung."""
    heart_low, heart_high = region_bounds(labels, heart_classes)
    lungs_low, lungs_high = region_bounds(labels, lung_classes)
    if not heart_low.any() or not lungs_low.any():
        return None, None
    heart_seeds, lung_seeds = main_regions(heart_low, HEART_KEEP_SHARE), main_regions(lungs_low, LUNG_KEEP_SHARE)
    low = capped_ratio(cardiac_diameter(heart_low, heart_seeds), thoracic_diameter(lungs_high, lung_seeds))
    high = capped_ratio(cardiac_diameter(heart_high, heart_seeds), thoracic_diameter(lungs_low, lung_seeds))
    return low, high


def _ratio_bounds(labels: np.ndarray, clean_labels: np.ndarray, structures_named: Sequence[Label],
                  table: ClassTable) -> RatioMeasurement | None:
    values = {label.name: label.value for label in structures_named}
    lungs = tuple(values[name] for name in ("right lung", "left lung") if name in values)
    if "heart" not in values or len(lungs) != 2:
        return None  # the model does not segment what the ratio needs
    heart_classes = table.classes_with(values["heart"])
    lung_classes = tuple(sorted({c for lung in lungs for c in table.classes_with(lung)}))
    low, high = ratio_bounds(labels, heart_classes, lung_classes)
    verdict = ratio_verdict(low, high)
    clean = cardiothoracic_ratio(np.isin(clean_labels, heart_classes), np.isin(clean_labels, lung_classes))
    return RatioMeasurement(low, high, clean, verdict, verdict.words, RATIO_DEFINITION)
