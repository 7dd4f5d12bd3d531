"""The evaluation's measures, pure numpy: Dice of whole structures, wrong-side shares, the cardiothoracic ratio.

    certified Dice  2|C_c & G_c| / (|C_c| + |G_c|), C_c = pixels CERTIFIED as c; an abstained pixel is in no
                    C_c, so it costs every structure it truly belongs to (abstained pixels count as errors);
                    1 when both sets are empty
    wrong side      share of a reference lung labelled (clean) or certified as the other lung
"""

from __future__ import annotations

import numpy as np

from certseg.core.labels import ClassTable
from certseg.core.measurements import cardiothoracic_ratio
from certseg.dicom.codes import CLASS_TABLE, STRUCTURES

# The label values of dicom.codes.STRUCTURES, the one list the data import writes masks in and the models learn.
_VALUE_OF = {s.name: s.value for s in STRUCTURES}
RIGHT_LUNG, LEFT_LUNG, HEART, RIGHT_CLAVICLE, LEFT_CLAVICLE = (
    _VALUE_OF[name] for name in ("right lung", "left lung", "heart", "right clavicle", "left clavicle"))
WRONG_SIDE_SHARE = 0.01  # more than 1% of a lung given to the other lung counts as a wrong-side image


def dice_per_structure(predicted: np.ndarray, truth: np.ndarray, table: ClassTable,
                       truth_table: ClassTable = CLASS_TABLE) -> np.ndarray:
    """Dice of each structure of `truth_table`, whole: a lung under a clavicle counts to both.

    `predicted` holds class values of `table` (the model's: an earlier release has one class per
    structure, and its lungs stop at the clavicles), `truth` those of `truth_table` (the datasets').
    ABSTAIN pixels belong to no structure (so they are errors); a structure absent from both maps
    scores 1."""
    scores = []
    for structure in truth_table.structures:
        mine, theirs = table.mask(predicted, structure), truth_table.mask(truth, structure)
        total = int(mine.sum()) + int(theirs.sum())
        scores.append(1.0 if total == 0 else 2 * int((mine & theirs).sum()) / total)
    return np.asarray(scores)


def wrong_side_shares(labels: np.ndarray, truth: np.ndarray, table: ClassTable,
                      truth_table: ClassTable = CLASS_TABLE) -> tuple[float, float]:
    """(right, left): the share of each reference lung that `labels` (classes of `table`) gives to the other lung."""
    shares = []
    for lung, other in ((RIGHT_LUNG, LEFT_LUNG), (LEFT_LUNG, RIGHT_LUNG)):
        reference = truth_table.mask(truth, lung)
        shares.append(float(table.mask(labels[reference], other).mean()) if reference.any() else 0.0)
    return shares[0], shares[1]


def wrong_side_images(shares: list[tuple[float, float]]) -> dict[str, float]:
    """Per lung, the share of images with more than WRONG_SIDE_SHARE of it on the other lung."""
    values = np.asarray(shares, dtype=float).reshape(-1, 2)
    return {"right lung": float(np.mean(values[:, 0] > WRONG_SIDE_SHARE)),
            "left lung": float(np.mean(values[:, 1] > WRONG_SIDE_SHARE))}


def plain_ratio(labels: np.ndarray, table: ClassTable) -> float | None:
    """The cardiothoracic ratio of a class map of `table`: reference masks, or the clean network's labels."""
    return cardiothoracic_ratio(table.mask(labels, HEART), table.mask(labels, RIGHT_LUNG) | table.mask(labels, LEFT_LUNG))


def mean_over_annotated(per_image: list[np.ndarray], annotated: np.ndarray) -> np.ndarray:
    """Mean Dice per structure over the images that label it (NaN where none does).

    `annotated`: (images, structures), True where the image's dataset labels the structure."""
    values = np.where(annotated, np.asarray(per_image), np.nan)
    with np.errstate(invalid="ignore"):
        return np.nanmean(values, axis=0) if values.size else values
