"""Reading a single 2D image file of stored pixel values (not DICOM; see certseg.dicom.reading for that)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from certseg.errors import CertSegError, first_line

# Formats that carry physical geometry; the others (PNG, TIFF, JPEG, .npy) are in pixel units.
GEOMETRY_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


@dataclass
class ImageFile:
    pixels: np.ndarray  # (rows, columns) float64 stored values
    ijk_to_lps: np.ndarray  # 4x4, column index i, row index j, k = 0
    spacing_mm: tuple[float, float] | None  # (row, column) spacing; None: pixel units


def read_image(path: Path) -> ImageFile:
    """One 2D grayscale image from .npy or any format SimpleITK reads (one-slice 3D volumes included)."""
    if not path.is_file():
        raise CertSegError(f"{path}: no such file")
    try:
        if path.suffix.lower() == ".npy":
            array, geometry = np.load(path, allow_pickle=False), np.eye(4)
        else:
            import SimpleITK as sitk

            image = sitk.ReadImage(str(path))
            array, geometry = sitk.GetArrayFromImage(image), _ijk_to_lps(image)
    except Exception as error:  # every reader failure is a bad input, reported in one line
        raise CertSegError(f"{path}: not a readable image ({first_line(error)})") from None
    array = np.squeeze(np.asarray(array))
    if array.ndim != 2:
        raise CertSegError(f"{path}: expected one 2D grayscale image, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or not np.all(np.isfinite(array)):
        raise CertSegError(f"{path}: pixel values must be finite numbers")
    pixels = array.astype(np.float64)
    has_geometry = path.name.lower().endswith(GEOMETRY_SUFFIXES)
    spacing = (float(np.linalg.norm(geometry[:3, 1])), float(np.linalg.norm(geometry[:3, 0])))
    return ImageFile(pixels, geometry, spacing if has_geometry else None)


def _ijk_to_lps(image) -> np.ndarray:
    """SimpleITK's geometry (LPS) as a 4x4 matrix; 2D images lie in the z = 0 plane."""
    dimension = image.GetDimension()
    direction = np.eye(3)
    direction[:dimension, :dimension] = np.reshape(image.GetDirection(), (dimension, dimension))
    spacing = np.ones(3)
    spacing[:dimension] = image.GetSpacing()
    matrix = np.eye(4)
    matrix[:3, :3] = direction * spacing
    matrix[:dimension, 3] = image.GetOrigin()
    return matrix
