"""Readers of the public chest X-ray datasets in the layouts they are distributed in.

Lateral masks are assigned by image side: the patient's right lung is the one on the
viewer's left in a frontal view, whatever a folder calls it.

    jsrt          official JSRT + SCR: JSRT/<name>.IMG (2048 x 2048, 12-bit big-endian, raw values
                  inverted) and SCR/masks/{right lung,left lung,heart,right clavicle,left clavicle}/<name>.gif
                  (1024 x 1024; upsampled to the image)
    jsrt-png      the public copy in github:AnishHota/JSRT-Segmentation: JSRT/jsrt_images/images/<name>.IMG.png
                  (2048 x 2048, 8-bit, inverted palette) and JSRT/masks/masks/<structure>/<name>.gif
                  (structure as right_lung, ..., 1024 x 1024; <structure>_png/<name>.png also accepted)
    covid-qu-ex   COVID-QU-Ex's "Infection Segmentation Data" folder: {Train,Val,Test}/{COVID-19,Non-COVID,
                  Normal}/images/<name>.png with "lung masks"/<name>.png (256 x 256 8-bit; one mask for both
                  lungs, split here into right and left; Test has no masks)
    montgomery    CXR_png/<name>.png, ManualMask/{leftMask,rightMask}/<name>.png
    shenzhen      CXR_png/<name>.png, mask/<name>_mask.png (both lungs in one mask; only part of the
                  images have one)

Every reader checks its layout at once, then yields `Sample`s one at a time (a JSRT image is
32 MB in float64).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from certseg.errors import CertSegError
from certseg.research.data import covid_qu_ex
from certseg.research.data.sample import (LUNGS, Sample, by_image_side, lung_labels, overlapping_labels, read_gray,
                                          read_mask)

Skipped = dict[str, list[str]]  # reason -> names of the images a reader could not label honestly

JSRT_SIZE = 2048
SCR_STRUCTURES = {"right lung": 1, "left lung": 2, "heart": 3, "right clavicle": 4, "left clavicle": 5}
JSRT_TERMS = ("JSRT database: research use only; copying and redistribution of its images are forbidden "
              "(DB_UsersGuide2008). SCR masks: research use, cite van Ginneken et al., Med Image Anal 2006.")
NLM_TERMS = ("NLM (Jaeger et al., Quant Imaging Med Surg 2014): freely available for research; cite the paper.")


@dataclass(frozen=True)
class Layout:
    name: str
    dataset: str  # the dataset it holds, which decides the split rule
    description: str
    terms: str
    read: Callable[..., Iterator[Sample]]
    split_rule: str = ""  # the layout's own fixed folds; empty: the image number's rule (folder.SPLIT_RULE)


def read_jsrt_scr(jsrt: Path, masks: Path | None = None, skipped: Skipped | None = None) -> Iterator[Sample]:
    """Official JSRT images with SCR's five structures (`masks`: SCR's masks folder)."""
    if masks is None:
        raise CertSegError("the official JSRT layout needs --masks (SCR's masks folder)")
    return (_jsrt_image(path, masks) for path in _nonempty(sorted(jsrt.glob("*.IMG")), jsrt))


def _jsrt_image(image_path: Path, masks: Path) -> Sample:
    raw = np.fromfile(image_path, dtype=">u2")
    if raw.size != JSRT_SIZE * JSRT_SIZE:
        raise CertSegError(f"{image_path}: {raw.size} pixels, expected {JSRT_SIZE} x {JSRT_SIZE}")
    stored = 4095.0 - raw.reshape(JSRT_SIZE, JSRT_SIZE).astype(np.float64)  # JSRT stores bright = dark
    return _scr_sample(image_path.stem, stored, lambda structure: masks / structure / f"{image_path.stem}.gif")


def read_jsrt_png_copy(root: Path, masks: Path | None = None, skipped: Skipped | None = None) -> Iterator[Sample]:
    """The public 8-bit PNG copy of JSRT with SCR masks (`root`: the repository or its JSRT folder)."""
    base = root / "JSRT" if (root / "JSRT").is_dir() else root
    images, mask_root = base / "jsrt_images" / "images", masks or base / "masks" / "masks"
    return (_jsrt_png_image(path, mask_root) for path in _nonempty(sorted(images.glob("JPC*.IMG.png")), images))


def _jsrt_png_image(image_path: Path, mask_root: Path) -> Sample:
    name = image_path.name.split(".")[0]

    def mask_path(structure: str) -> Path:
        folder = structure.replace(" ", "_")
        gif = mask_root / folder / f"{name}.gif"
        return gif if gif.is_file() else mask_root / f"{folder}_png" / f"{name}.png"

    return _scr_sample(name, read_gray(image_path), mask_path)


def _scr_sample(name: str, stored: np.ndarray, mask_path: Callable[[str], Path]) -> Sample:
    masks = {structure: read_mask(mask_path(structure), stored.shape) for structure in SCR_STRUCTURES}
    right_lung, left_lung = by_image_side(masks["right lung"], masks["left lung"])
    right_clavicle, left_clavicle = by_image_side(masks["right clavicle"], masks["left clavicle"])
    return Sample(name, stored, overlapping_labels([(1, right_lung), (2, left_lung), (3, masks["heart"]),
                                                    (4, right_clavicle), (5, left_clavicle)]))


def read_montgomery(root: Path, masks: Path | None = None, skipped: Skipped | None = None) -> Iterator[Sample]:
    mask_root = masks or root / "ManualMask"
    return (_montgomery_image(path, mask_root)
            for path in _nonempty(sorted((root / "CXR_png").glob("*.png")), root / "CXR_png"))


def _montgomery_image(image_path: Path, mask_root: Path) -> Sample:
    stored = read_gray(image_path)
    first = read_mask(mask_root / "leftMask" / image_path.name, stored.shape)
    second = read_mask(mask_root / "rightMask" / image_path.name, stored.shape)
    return Sample(image_path.stem, stored, lung_labels(*by_image_side(first, second)), LUNGS)


def read_shenzhen(root: Path, masks: Path | None = None, skipped: Skipped | None = None) -> Iterator[Sample]:
    mask_folder = masks or root / "mask"
    with_masks = [p for p in sorted((root / "CXR_png").glob("*.png")) if (mask_folder / f"{p.stem}_mask.png").is_file()]
    return (_shenzhen_image(path, mask_folder / f"{path.stem}_mask.png")
            for path in _nonempty(with_masks, root / "CXR_png"))


def _shenzhen_image(image_path: Path, mask_path: Path) -> Sample:
    from scipy import ndimage

    stored = read_gray(image_path)
    lungs = read_mask(mask_path, stored.shape)
    components, count = ndimage.label(lungs)
    if count < 2:
        raise CertSegError(f"{mask_path}: expected two lungs, found {count} region(s)")
    sizes = ndimage.sum(lungs, components, range(1, count + 1))
    largest = np.argsort(sizes)[::-1][:2] + 1
    pair = by_image_side(components == largest[0], components == largest[1])
    return Sample(image_path.stem, stored, lung_labels(*pair), LUNGS)


def _nonempty(paths: list[Path], folder: Path) -> list[Path]:
    if not paths:
        raise CertSegError(f"{folder}: no images found in the dataset's layout")
    return paths


LAYOUTS = {layout.name: layout for layout in (
    Layout("covid-qu-ex", "covid-qu-ex", "COVID-QU-Ex 'Infection Segmentation Data' (256 x 256 PNG, one lung mask "
           "split into right and left)", covid_qu_ex.TERMS, covid_qu_ex.read_covid_qu_ex, covid_qu_ex.SPLIT_RULE),
    Layout("jsrt", "jsrt", "JSRT (official .IMG) with SCR masks", JSRT_TERMS, read_jsrt_scr),
    Layout("jsrt-png", "jsrt", "JSRT as 8-bit PNG with SCR masks (github:AnishHota/JSRT-Segmentation layout)",
           JSRT_TERMS, read_jsrt_png_copy),
    Layout("montgomery", "montgomery", "Montgomery County chest X-ray set (NLM), lung masks", NLM_TERMS,
           read_montgomery),
    Layout("shenzhen", "shenzhen", "Shenzhen chest X-ray set (NLM), lung masks where published", NLM_TERMS,
           read_shenzhen),
)}
