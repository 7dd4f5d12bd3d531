"""Writing results: all files of one result appear at once, or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from certseg.errors import CertSegError


def output_folder_problem(path: Path) -> str | None:
    """Why results cannot be written under the folder `path` (None: they can): it, or the nearest part of it
    that exists, is a file or cannot be written.  Checked when the command line is parsed, so a mistyped --out
    is one line at once instead of a failure per image after the models ran."""
    for existing in (path, *path.parents):
        if not existing.exists():
            continue
        if not existing.is_dir():
            return f"{existing} is a file, not a folder"
        if not os.access(existing, os.W_OK | os.X_OK):
            return f"{existing} is not writable"
        return None
    return None


@contextlib.contextmanager
def atomic_directory(target: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces `target` only when the block succeeds.

    An existing `target` is kept (CertSegError) unless `overwrite`; on any error the
    temporary folder is removed and `target` is left as it was.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise CertSegError(f"{target}: already exists (use --overwrite to replace it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; results get the usual permissions
    try:
        yield staging
        if target.exists():
            retired = target.with_name(f".{target.name}.old")
            shutil.rmtree(retired, ignore_errors=True)
            target.rename(retired)
            staging.rename(target)
            shutil.rmtree(retired)
        else:
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Indented JSON, written to a temporary name and renamed: readers never see half a file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    temporary.replace(path)


# The result folder's files, named once (certseg.results.folder writes them; pacs sends the DICOM ones).
SEG_FILE = "seg.dcm"  # DICOM SEG
MEASUREMENT_SR_FILE = "measurements.dcm"  # TID 1500 SR of the certified measurements
CAPTURE_FILE = "capture.dcm"  # Secondary Capture: the overlay with the certificate burned in
REPORT_PDF_FILE = "report.pdf"  # the one-page report
REPORT_PDF_DICOM_FILE = "report-pdf.dcm"  # the same page as Encapsulated PDF
REPORT_FILE = "report.json"  # certseg.record.Report
SEG_NRRD_FILE = "certseg.seg.nrrd"  # the segments for Slicer
PIXEL_RADIUS_FILE = "pixel_radius.nrrd"  # the per-pixel radius for Slicer
OVERLAY_FILE = "overlay.png"  # a quick look
CERTIFICATE_ARRAYS_FILE = "certificate.npz"  # model-grid arrays for research
DATASET_CARD = "dataset.json"  # what makes a folder a CertSeg dataset (certseg.research.data)


def objects_to_send(folder: Path, *, capture: bool = True, pdf: bool = True) -> list[Path]:
    """The DICOM objects of a result folder that go back into the study, in order: SEG, SR, capture, PDF.

    Only those that exist (a SEG always does for a certified DICOM source); `capture` and `pdf` turn those off."""
    names = [SEG_FILE, MEASUREMENT_SR_FILE] + [CAPTURE_FILE] * capture + [REPORT_PDF_DICOM_FILE] * pdf
    return [folder / name for name in names if (folder / name).is_file()]
