"""Shared fixtures: real DICOM files made with pydicom and converted by DCMTK, and model folders."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from certseg.sample import cr_dataset

SAMPLE_CR = Path(__file__).parents[1] / "CertSeg" / "Resources" / "SampleData" / "sample_cr.dcm"


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: Testing/setup-and-test.sh installs dcmtk and dicom3tools")
    return path


def run_tool(*args) -> None:
    require_tool(str(args[0]))
    subprocess.run([str(a) for a in args], check=True, capture_output=True)


def chest_pixels(rows: int = 240, columns: int = 200, seed: int = 0) -> np.ndarray:
    """A 12-bit image with chest-like structure: dark lungs either side of a bright mediastinum."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns] / np.array([rows, columns])[:, None, None]
    lungs = np.exp(-(((x - 0.3) / 0.13) ** 2 + ((y - 0.45) / 0.3) ** 2)) + np.exp(-(((x - 0.7) / 0.13) ** 2 + ((y - 0.45) / 0.3) ** 2))
    image = 3200 - 2200 * lungs + 120 * rng.standard_normal((rows, columns))
    return np.clip(image, 0, 4095).astype(np.uint16)


@pytest.fixture
def small_cr(tmp_path) -> Path:
    """An uncompressed 12-bit chest CR file (240 x 200, so geometry errors show)."""
    path = tmp_path / "small_cr.dcm"
    cr_dataset(chest_pixels(), imager_spacing_mm=1.5, source_to_detector_mm=1800.0, magnification=1.1,
               seed=7).save_as(path, enforce_file_format=True)
    return path


# Pixel spacings real chest exports carry: (PixelSpacing, ImagerPixelSpacing, PixelSpacingCalibrationType)
ODD_SPACINGS = {
    "zero": ([0, 0], [0.15, 0.15], None),
    "missing": (None, None, None),
    "imager-only": (None, [0.15, 0.15], None),
    "calibrated": ([0.139, 0.139], [0.15, 0.15], "GEOMETRY"),
}


def write_cr_with_spacing(path: Path, variant: str, seed: int = 7) -> Path:
    """A small chest CR whose spacing tags are those of ODD_SPACINGS[variant]."""
    pixel, imager, calibration = ODD_SPACINGS[variant]
    dataset = cr_dataset(chest_pixels(seed=seed), imager_spacing_mm=1.5, source_to_detector_mm=1800.0,
                         magnification=1.1, seed=seed)
    for keyword, value in (("PixelSpacing", pixel), ("ImagerPixelSpacing", imager),
                           ("PixelSpacingCalibrationType", calibration)):
        if value is None:
            dataset.pop(keyword, None)
        else:
            setattr(dataset, keyword, value)
    dataset.save_as(path, enforce_file_format=True)
    return path
