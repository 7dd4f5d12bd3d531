"""Shared fixtures; shared helpers live in Testing/support/."""

from pathlib import Path

import pytest

from certseg.research.sample_cr import cr_dataset
from support.cli import run_certseg
from support.dicom_files import SAMPLE_CR, chest_pixels


@pytest.fixture
def small_cr(tmp_path) -> Path:
    """An uncompressed 12-bit chest CR file (240 x 200, so geometry errors show)."""
    path = tmp_path / "small_cr.dcm"
    cr_dataset(chest_pixels(), imager_spacing_mm=1.5, source_to_detector_mm=1800.0, magnification=1.1,
               seed=7).save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="session")
def certified_sample(tmp_path_factory):
    """The shipped sample certified once for every test that reads its outputs: (run, source dataset, result folder).

    n = 80: below about 63 unanimous votes no pixel of 256^2 can pass Holm at alpha = 0.001."""
    import pydicom

    out = tmp_path_factory.mktemp("certified-sample") / "out"
    run = run_certseg("certify", SAMPLE_CR, "--out", out, "--n0", "2", "--n", "80", "--quiet")
    assert run.returncode == 0, run.stderr
    source = pydicom.dcmread(SAMPLE_CR)
    return run, source, out / source.StudyInstanceUID / source.SeriesInstanceUID / source.SOPInstanceUID
