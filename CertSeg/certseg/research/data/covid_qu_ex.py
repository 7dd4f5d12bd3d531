"""COVID-QU-Ex (Tahir et al. 2021) in its "Infection Segmentation Data" layout.

    <root>/{Train,Val,Test}/{COVID-19,Non-COVID,Normal}/images/<file>.png
    <root>/{Train,Val}/<class>/lung masks/<file>.png      one mask holding both lungs

Images and masks are 256 x 256 8-bit, resized from the originals without keeping the aspect
ratio.  The folds are the dataset's own, with a fixed validation share cut from Train by
number (never by looking at results):

    Val/                            -> test        (the COVID-QU-Ex test part)
    Train/, number ending in 1      -> validation  (checkpoint choice, OOD threshold)
    Train/, other numbers           -> train
    Test/ (no masks in the copy)    -> acceptance  (only the OOD check's acceptance is measured)

The one lung mask is split into the patient's right and left lung (`split_lungs`); a mask
that cannot be split honestly is skipped and counted under its reason, never guessed.
Heart and clavicles are not annotated (unknown, not background).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from certseg.errors import CertSegError
from certseg.research.data.sample import LUNGS, Sample, by_image_side, lung_labels, read_gray, read_mask

TERMS = ("COVID-QU-Ex, compiled by Qatar University and collaborators from public collections (PadChest, RSNA, a "
         "paediatric pneumonia set, COVID collections). The authors ask every user to cite Tahir AM, Chowdhury MEH, "
         "Khandakar A, et al., COVID-19 infection localization and severity grading from chest X-ray images, Comput "
         "Biol Med 2021;139:105002. The copy used carries no licence file and its distribution page could not be "
         "reached from the training machine: used for research and evaluation only, no image or mask redistributed.")
SPLIT_RULE = ("COVID-QU-Ex folds: Val/ -> test; Train/ with a number ending in 1 -> validation; other Train/ -> "
              "train; Test/ (no masks) -> acceptance, for the OOD check only")
FOLDS = {"Train": None, "Val": "test", "Test": "acceptance"}
CLASSES = ("COVID-19", "Non-COVID", "Normal")
MIN_LUNG_SHARE = 0.01  # a region under 1% of the image is a speck, not a lung
MIN_SIZE_RATIO = 0.3  # the smaller lung holds at least 30% of the larger's pixels
MAX_COLUMN_OVERLAP = 0.25  # the lungs' column ranges overlap by at most 25% of the narrower one


@dataclass(frozen=True)
class LungSplit:
    right: np.ndarray | None
    left: np.ndarray | None
    problem: str = ""  # why the mask was not split; empty when it was


def split_lungs(mask: np.ndarray) -> LungSplit:
    """The patient's right and left lung of a mask holding both, or the reason it cannot be split.

    Exactly two regions of at least 1% of the image each (specks are dropped), of comparable
    size, side by side: the one further to the viewer's left is the patient's right lung.
    """
    from scipy import ndimage

    components, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    sizes = ndimage.sum(mask, components, range(1, count + 1)) if count else np.zeros(0)
    large = [index + 1 for index in np.flatnonzero(sizes >= MIN_LUNG_SHARE * mask.size)]
    if len(large) != 2:
        return LungSplit(None, None, "one lung region" if len(large) == 1 else
                         "no lung region" if not large else "more than two lung regions")
    first, second = (components == index for index in large)
    smaller, larger = sorted((first.sum(), second.sum()))
    if smaller < MIN_SIZE_RATIO * larger:
        return LungSplit(None, None, "lung sizes too unequal")
    if _column_overlap(first, second) > MAX_COLUMN_OVERLAP:
        return LungSplit(None, None, "lungs not side by side")
    right, left = by_image_side(first, second)
    return LungSplit(right, left)


def _column_overlap(a: np.ndarray, b: np.ndarray) -> float:
    columns_a, columns_b = np.flatnonzero(a.any(axis=0)), np.flatnonzero(b.any(axis=0))
    shared = min(columns_a[-1], columns_b[-1]) - max(columns_a[0], columns_b[0]) + 1
    narrower = min(columns_a[-1] - columns_a[0], columns_b[-1] - columns_b[0]) + 1
    return max(0, shared) / narrower


def image_name(class_folder: str, file_name: str) -> str:
    """A name unique across the classes: 'Normal (11766).png' -> normal_11766, 'covid_1902.png' -> covid_1902."""
    match = re.search(r"\d+", file_name)
    if match is None:
        raise CertSegError(f"{class_folder}/{file_name}: no image number in the name")
    prefix = {"COVID-19": "covid", "Non-COVID": "non_covid", "Normal": "normal"}[class_folder]
    return f"{prefix}_{int(match.group())}"


def fold_split(fold: str, name: str) -> str:
    if FOLDS[fold] is not None:
        return FOLDS[fold]
    return "validation" if int(name.rsplit("_", 1)[1]) % 10 == 1 else "train"


def read_covid_qu_ex(root: Path, masks: Path | None = None,
                     skipped: dict[str, list[str]] | None = None) -> Iterator[Sample]:
    """Every radiograph of the three folds; lung-masked ones with their split lungs."""
    if masks is not None:
        raise CertSegError("covid-qu-ex: the masks lie beside the images (no --masks)")
    base = root / "Infection Segmentation Data" if (root / "Infection Segmentation Data").is_dir() else root
    folders = [(fold, klass) for fold in FOLDS for klass in CLASSES if (base / fold / klass / "images").is_dir()]
    if not folders:
        raise CertSegError(f"{base}: no {{Train,Val,Test}}/<class>/images folders (COVID-QU-Ex layout)")
    return (sample for fold, klass in folders for path in sorted((base / fold / klass / "images").glob("*.png"))
            if (sample := _sample(base, fold, klass, path, skipped)) is not None)


def _sample(base: Path, fold: str, klass: str, path: Path, skipped: dict[str, list[str]] | None) -> Sample | None:
    name = image_name(klass, path.name)
    stored = read_gray(path)
    split = fold_split(fold, name)
    if split == "acceptance":
        return Sample(name, stored, np.zeros(stored.shape, dtype=np.uint8), (), split)
    lungs = split_lungs(read_mask(base / fold / klass / "lung masks" / path.name, stored.shape))
    if lungs.problem:
        if skipped is not None:
            skipped.setdefault(lungs.problem, []).append(name)
        return None
    return Sample(name, stored, lung_labels(lungs.right, lungs.left), LUNGS, split)
