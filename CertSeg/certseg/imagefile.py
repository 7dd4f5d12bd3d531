"""Reading a single 2D image file of stored pixel values (not DICOM; see io_dicom for that)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import CertSegError


def read_image(path: Path) -> np.ndarray:
    """(H, W) float64 stored values from .npy or any 2D image SimpleITK reads."""
    if not path.is_file():
        raise CertSegError(f"{path}: no such file")
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            import SimpleITK as sitk

            array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except Exception as error:  # every reader failure is a bad input, reported in one line
        raise CertSegError(f"{path}: not a readable image ({_first_line(error)})") from None
    array = np.squeeze(np.asarray(array))
    if array.ndim != 2:
        raise CertSegError(f"{path}: expected one 2D grayscale image, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or not np.all(np.isfinite(array)):
        raise CertSegError(f"{path}: pixel values must be finite numbers")
    return array.astype(np.float64)


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
