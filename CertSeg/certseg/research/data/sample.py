"""One training or evaluation image with its labels, and its move onto the model grid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from certseg.dicom.codes import CLASS_TABLE
from certseg.errors import CertSegError

ALL_STRUCTURES = (1, 2, 3, 4, 5)
LUNGS = (1, 2)
HEART = 3


@dataclass
class Sample:
    name: str
    stored: np.ndarray  # (H, W) stored pixel values, bright = attenuating
    labels: np.ndarray  # (H, W) uint8 class values of codes.CLASS_TABLE (a class may stand for overlapping structures)
    annotated: tuple[int, ...] = ALL_STRUCTURES  # structures the dataset labels (others are unknown, not background)
    split: str | None = None  # the split the dataset's own layout fixes; None: the image number's rule
    source: str = ""  # the dataset it comes from (a dataset folder's "dataset"; "drr" for rendered views)


def to_model_space(sample: Sample, size: int, percentiles: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The model input and the label map on the model grid (nearest neighbour)."""
    from certseg.core.input_map import ModelInputMap
    from certseg.core.window import IntensityWindow  # torch: only where images are mapped

    input_map = ModelInputMap(sample.stored.shape, size, IntensityWindow.from_percentiles(sample.stored, percentiles))
    return input_map(sample.stored), input_map.labels_to_model(sample.labels)


def lung_labels(right: np.ndarray, left: np.ndarray) -> np.ndarray:
    labels = np.zeros(right.shape, dtype=np.uint8)
    labels[right] = 1
    labels[left] = 2
    return labels


def overlapping_labels(structures: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """Class values (codes.CLASS_TABLE) of structure masks that may overlap, each kept as drawn.

    A clavicle over a lung is the class standing for both.  SCR's lungs exclude the heart, so
    where a lung and the heart masks meet (a seam of a few pixels: 0.2% of the heart) the heart
    wins; any other overlap the class table has no class for goes to the structure listed last.
    """
    presence = np.zeros(structures[0][1].shape, dtype=np.uint8)
    for value, mask in structures:
        presence[mask] |= np.uint8(1 << (value - 1))
    labels = np.zeros(presence.shape, dtype=np.uint8)
    for bits in np.unique(presence):
        members = {value for value, _ in structures if int(bits) >> (value - 1) & 1}
        labels[presence == bits] = _class_for(members)
    return labels


def _class_for(members: set[int]) -> int:
    try:
        return CLASS_TABLE.class_of(members)
    except ValueError:
        pass
    if HEART in members:  # lungs and heart stay apart: their seam is heart
        try:
            return CLASS_TABLE.class_of(members - set(LUNGS))
        except ValueError:
            return CLASS_TABLE.class_of({HEART})
    return CLASS_TABLE.class_of({max(members)})  # otherwise the structure listed last wins


def by_image_side(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(patient's right, patient's left): the mask lying further to the viewer's left is the patient's right."""
    columns = lambda mask: np.nonzero(mask)[1].mean() if mask.any() else np.inf  # noqa: E731
    return (a, b) if columns(a) <= columns(b) else (b, a)


def read_gray(path: Path) -> np.ndarray:
    """Grayscale values of a PNG or GIF (Pillow: SimpleITK reads no GIF); colour and palettes to luminance.

    16-bit PNGs keep their values; a palette image is read through its palette, so an
    inverted palette (as in the public JSRT PNG copy) gives bright bone.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode in ("1", "P", "LA", "RGB", "RGBA"):
                image = image.convert("L")
            return np.asarray(image, dtype=np.float64)
    except (OSError, UnidentifiedImageError) as error:
        raise CertSegError(f"{path}: unreadable image ({error})") from None


def read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A binary mask, resized (nearest neighbour) to `shape` when stored at another resolution."""
    if not path.is_file():
        raise CertSegError(f"{path}: mask missing")
    from certseg.core.input_map import resize_labels

    return resize_labels(read_gray(path) > 0, shape)
