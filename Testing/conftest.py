"""Shared fixtures; shared helpers live in Testing/support/."""

from pathlib import Path

import pytest

from certseg.research.sample_cr import cr_dataset
from support.dicom_files import chest_pixels


@pytest.fixture
def small_cr(tmp_path) -> Path:
    """An uncompressed 12-bit chest CR file (240 x 200, so geometry errors show)."""
    path = tmp_path / "small_cr.dcm"
    cr_dataset(chest_pixels(), imager_spacing_mm=1.5, source_to_detector_mm=1800.0, magnification=1.1,
               seed=7).save_as(path, enforce_file_format=True)
    return path
