"""Finding chest radiographs in what a PACS exported, and decoding them.

INPUT may be a DICOM file, a folder (searched recursively; non-DICOM files are
skipped), a DICOMDIR, or (where the caller allows archives: a path a user named)
a zip of any of these, unpacked under limits (certseg.dicom.archives).  Every
file ends up either as a `Radiograph` or as a `Skipped` with the reason, never
as an exception.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

from certseg.core.window import IntensityWindow
from certseg.dicom.archives import UnpackBudget, is_archive, unpack
from certseg.errors import CertSegError, InputError, first_line
from certseg.limits import MAX_INFLATED_BYTES, MAX_PIXELS, codestream_problem, file_inflates_beyond
from certseg.names import UID_PATH_KEYWORDS, printable, shown, uid_problem
from certseg.files import PIXEL_RADIUS_FILE, SEG_NRRD_FILE
from certseg.record import MetadataCheck, SlicerGrid, StoredValues

CHEST_MODALITIES = {"CR", "DX"}
# Computed Radiography, Digital X-Ray for Presentation and for Processing: a secondary capture (a photo or
# screenshot of a film) that says Modality CR is not a radiograph's stored values.
RADIOGRAPH_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1.1"}
CHEST_BODY_PARTS = {"", "CHEST", "THORAX", "LUNG", "TORSO"}
FRONTAL_VIEWS = {"", "PA", "AP"}
PLAUSIBLE_SPACING_MM = (0.02, 5.0)


@dataclass
class Skipped:
    path: Path
    reason: str
    failed: bool = False  # True: a chest radiograph we could not process; False: not one of ours


DICOM_UNITS = ("DICOM Modality LUT output (RescaleSlope/Intercept or LUT Sequence applied, MONOCHROME1 mirrored), "
               "L2 over the source grid")
REFERENCE_DICOM_UNITS = "DICOM Modality LUT output of --reference-dicom (MONOCHROME1 mirrored), L2 over the source grid"
IMAGE_FILE_VALUES_UNITS = "the image file's own values, L2 over its grid"


@dataclass
class Radiograph:
    """One chest radiograph as read, once: stored values as MONOCHROME2 after the Modality LUT, and every fact
    the certification, the report and the result files need of the file (read_radiograph computes each once)."""

    path: Path
    dataset: pydicom.Dataset  # full dataset, pixels included (highdicom needs it as the SEG's source)
    pixels: np.ndarray  # (rows, columns) float64, bright = attenuating
    spacing_mm: tuple[float, float] | None  # (row spacing, column spacing); None: pixel units
    notes: list[str]
    window: IntensityWindow | None  # from the VOI tags (MONOCHROME2 space); None: none usable
    metadata: MetadataCheck  # the metadata gate's verdict on this dataset (overridden when forced)
    values: StoredValues  # what the stored values are: units, raw values per stored value
    slicer_grid: SlicerGrid  # the grid Slicer's DICOM import gives the file (the Slicer files use it)
    slicer_ijk_to_lps: np.ndarray  # 4x4 voxel-to-LPS matrix of that grid

    @property
    def uids(self) -> tuple[str, str, str]:
        return (str(self.dataset.StudyInstanceUID), str(self.dataset.SeriesInstanceUID), str(self.dataset.SOPInstanceUID))

    @functools.cached_property
    def pixel_sha256(self) -> str:
        """The digest of what was decoded (the values certified): a result is bound to these pixels."""
        return pixel_digest(self.pixels)


def pixel_digest(pixels: np.ndarray) -> str:
    """sha256 over an image's shape and its values as little-endian float64, row by row."""
    values = np.ascontiguousarray(pixels, dtype="<f8")
    digest = hashlib.sha256(repr(values.shape).encode())
    digest.update(values.tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def candidate_files(source: Path, scratch_parent: Path | None = None, *,
                    unpack_archives: bool = True) -> Iterator[list[Path]]:
    """Every file that might be DICOM under `source`.

    `unpack_archives`: zip archives are unpacked (under limits) to a temporary folder, made in
    `scratch_parent` when given (a cluster's workers must see it).  False for what a network peer sent: a
    received object is read as the file it is, never as an archive."""
    if not source.exists():
        raise CertSegError(f"{source}: no such file or folder")
    with tempfile.TemporaryDirectory(prefix="certseg-", dir=scratch_parent) as scratch:
        budget = UnpackBudget() if unpack_archives else None
        yield _expand(source, Path(scratch), budget, depth=0)


def _expand(source: Path, scratch: Path, budget: UnpackBudget | None, depth: int,
            archive: str | None = None) -> list[Path]:
    """The files under `source`; `archive`: the user's name of the archive `source` was unpacked from."""
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file())
        return [f for path in files for f in _expand_file(path, scratch, budget, depth, archive, source)]
    return _expand_file(source, scratch, budget, depth, archive, source.parent)


def _expand_file(path: Path, scratch: Path, budget: UnpackBudget | None, depth: int, archive: str | None,
                 root: Path) -> list[Path]:
    if budget is not None and is_archive(path):
        target = scratch / f"zip{len(list(scratch.iterdir()))}"
        name = str(path) if archive is None else f"{archive}, member {shown(str(path.relative_to(root)))}"
        unpack(path, target, budget, depth + 1, shown_as=name)
        return _expand(target, scratch, budget, depth + 1, name)
    if path.name.upper() == "DICOMDIR":
        return _dicomdir_files(path)
    return [path]


def _dicomdir_files(dicomdir: Path) -> list[Path]:
    from pydicom.fileset import FileSet

    try:
        fileset = FileSet(pydicom.dcmread(dicomdir))
    except (InvalidDicomError, ValueError, OSError) as error:
        raise CertSegError(f"{dicomdir}: unreadable DICOMDIR ({error})") from None
    # pydicom's FileSet refuses a record that resolves outside the DICOMDIR's folder ('..', or a symlink that
    # leads out): CertSeg relies on it, and Testing/test_dicom_input.py checks that it still does.
    return [Path(instance.path) for instance in fileset]


def check_header(path: Path, force: bool = False) -> pydicom.Dataset | Skipped:
    """The header (no pixels) of a chest radiograph we can process, or why the file is skipped.

    `force` overrides the metadata gate (modality, body part, view), not what cannot be decoded.
    """
    header = _parsed(path, stop_before_pixels=True)
    if isinstance(header, Skipped):
        return header
    return _refusal(path, header, force, chest_radiograph_refusal(header)) or header


def _unusable_uid(header: pydicom.Dataset) -> str | None:
    """The UIDs name the result folder (certseg.names): one that is not a DICOM UID refuses the file."""
    for keyword in UID_PATH_KEYWORDS:
        value = header.get(keyword, "")
        problem = uid_problem(value)
        if problem:
            return f"{keyword} {shown(value)} is not a DICOM UID ({problem})"
    return None


def read_radiograph(path: Path, force: bool = False) -> Radiograph | Skipped:
    """Read one file once and, if it is a chest radiograph we can use (or `force`), decode its pixels.

    The gate judges the dataset that is decoded (a file may change after discovery read its header)."""
    dataset = _parsed(path, stop_before_pixels=False)
    if isinstance(dataset, Skipped):
        return dataset
    metadata = _metadata_check(path, dataset)  # the gate's one verdict on what is decoded
    refused = _refusal(path, dataset, force, metadata.refusal)
    if refused is not None:
        return refused
    if "PixelData" not in dataset:
        return Skipped(path, "no pixel data", failed=True)
    mismatch = codestream_problem(dataset)  # before the codec allocates what its codestream says
    if mismatch:
        return Skipped(path, mismatch, failed=True)
    try:
        pixels = _monochrome2(dataset)
    except Exception as error:  # every codec failure becomes one line naming the transfer syntax
        syntax = dataset.file_meta.get("TransferSyntaxUID", "unknown transfer syntax")
        name = getattr(syntax, "name", str(syntax))
        return Skipped(path, f"cannot decode pixel data ({name}): {first_line(error, 200)}", failed=True)
    spacing, notes = _spacing(dataset)
    if getattr(dataset, "read_without_file_header", False):
        notes.append(BARE_DATASET_NOTE)
    if metadata.refusal:
        notes.append(f"metadata gate overridden by --force: {metadata.refusal}")
    slicer_spacing, slicer_origin = slicer_grid_spacing(dataset)
    return Radiograph(path, dataset, pixels, spacing, notes, _voi_window(dataset), metadata, _stored_values(dataset),
                      SlicerGrid(spacing_mm=slicer_spacing, spacing_from=slicer_origin,
                                 used_by=(SEG_NRRD_FILE, PIXEL_RADIUS_FILE),
                                 measurements_use="pixel_spacing_mm (areas in mm2, the SR)"),
                      ijk_to_lps(dataset, slicer_spacing))


def _parsed(path: Path, *, stop_before_pixels: bool) -> pydicom.Dataset | Skipped:
    """The file parsed by pydicom, or why it is skipped (inflation bombs refused before pydicom inflates them)."""
    if file_inflates_beyond(path, MAX_INFLATED_BYTES):
        return Skipped(path, f"Deflated dataset inflates to more than {MAX_INFLATED_BYTES // 2**20} MiB", failed=True)
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except (InvalidDicomError, EOFError) as error:
        bare = _bare_dataset(path, stop_before_pixels=stop_before_pixels)
        if bare is not None:
            return bare
        # pydicom's own hint ("Use force=True ...") names an option of pydicom, not of CertSeg: left out.
        reason = first_line(error, 200).split(" Use force=True")[0]
        return Skipped(path, f"not a DICOM file ({reason})")
    except Exception as error:  # pydicom raises many types on damaged headers
        return Skipped(path, f"unreadable DICOM header ({first_line(error, 200)})", failed=True)


BARE_DATASET_NOTE = ("no DICOM file header (preamble and file meta): read as a bare dataset, as older systems "
                     "stored images, its transfer syntax taken from its encoding")


def _bare_dataset(path: Path, *, stop_before_pixels: bool) -> pydicom.Dataset | None:
    """A file holding a dataset alone, without the Part 10 preamble and file meta, or None if it is not one.

    Such files start with an element of group 0008 (little endian) and are always uncompressed, so
    pydicom's encoding guess gives their transfer syntax; anything else that starts so but holds no SOP
    class is not taken for DICOM."""
    with path.open("rb") as handle:
        if handle.read(2) != b"\x08\x00":
            return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
        if "SOPClassUID" not in dataset:
            return None
    except Exception:  # noqa: BLE001 - whatever pydicom raises on such bytes, the file is not a dataset
        return None
    implicit, little_endian = dataset.original_encoding
    dataset.file_meta.TransferSyntaxUID = (pydicom.uid.ImplicitVRLittleEndian if implicit else
                                           pydicom.uid.ExplicitVRLittleEndian if little_endian else
                                           pydicom.uid.ExplicitVRBigEndian)
    dataset.read_without_file_header = True
    return dataset


def _refusal(path: Path, header: pydicom.Dataset, force: bool, reason: str | None) -> Skipped | None:
    """Why a parsed file is not certified (None: it is a chest radiograph we can process, or `force`d one).

    `reason`: the metadata gate's verdict on `header`; `force` overrides it (modality, body part, view), not
    what cannot be decoded."""
    if header.get("SOPClassUID") == "1.2.840.10008.1.3.10":
        return Skipped(path, "DICOMDIR (its referenced files are read instead)")
    if reason and not force:
        return Skipped(path, reason)
    problem = _unsupported_image(header) or _unusable_uid(header)
    return Skipped(path, problem, failed=True) if problem else None


NOT_CHECKED = MetadataCheck(checked=False, file=None, found=None, refusal=None,
                            text="not checked: an image file carries no DICOM modality, body part or view")


def _metadata_check(path: Path, header: pydicom.Dataset) -> MetadataCheck:
    """What the metadata gate saw (report.json's source.metadata_check): the tags it read and its verdict."""
    found = printable(f"modality {header.get('Modality', '') or 'missing'}, "
                      f"body part {header.get('BodyPartExamined', '') or 'not stated'}, "
                      f"view {header.get('ViewPosition', '') or 'not stated'}")
    refusal = chest_radiograph_refusal(header)
    verdict = f"OVERRIDDEN ({refusal})" if refusal else "a frontal chest radiograph"
    return MetadataCheck(checked=True, file=str(path), found=found, refusal=refusal,
                         text=f"{found} in {path.name}: {verdict}")


def chest_radiograph_refusal(header: pydicom.Dataset | Mapping[str, str]) -> str | None:
    """Why the metadata gate refuses a file (None: a frontal chest radiograph, or tags that do not say).

    `header`: a dataset, or its Modality, BodyPartExamined and ViewPosition by keyword (a DICOM database's)."""
    sop_class = str(header.get("SOPClassUID", "") or "")
    if sop_class and sop_class not in RADIOGRAPH_SOP_CLASSES:
        name = pydicom.uid.UID(sop_class).name if sop_class.replace(".", "").isdigit() else printable(sop_class[:64])
        return f"SOP class {name} is not a CR or DX image"
    modality = str(header.get("Modality", "")).upper()
    if modality not in CHEST_MODALITIES:
        return f"modality {printable(modality[:64]) or 'missing'} is not a radiograph (CR, DX)"
    body_part = str(header.get("BodyPartExamined", "")).upper()
    if body_part not in CHEST_BODY_PARTS:
        return f"body part {printable(body_part[:64])} is not CHEST"
    view = str(header.get("ViewPosition", "")).upper()
    if view not in FRONTAL_VIEWS:
        return f"view position {printable(view[:64])} is not frontal (PA or AP)"
    return None


def _unsupported_image(header: pydicom.Dataset) -> str | None:
    photometric = str(header.get("PhotometricInterpretation", "")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return f"photometric interpretation {printable(photometric[:64]) or 'missing'} is not grayscale"
    if int(header.get("SamplesPerPixel", 1)) != 1:
        return f"{header.SamplesPerPixel} samples per pixel (expected 1)"
    if int(header.get("NumberOfFrames", 1) or 1) != 1:
        return f"multi-frame image ({header.NumberOfFrames} frames); one radiograph per file expected"
    rows, columns = int(header.get("Rows", 0)), int(header.get("Columns", 0))
    if rows < 32 or columns < 32:
        return f"image of {rows} x {columns} pixels is too small or has no pixels"
    if rows * columns > MAX_PIXELS:
        return f"image of {rows} x {columns} pixels is larger than any chest detector"
    return None


def _monochrome2(dataset: pydicom.Dataset) -> np.ndarray:
    pixels = np.asarray(apply_modality_lut(dataset.pixel_array, dataset), dtype=np.float64)
    if pixels.ndim != 2:
        raise InputError(f"expected one 2D frame, got shape {pixels.shape}")
    if _is_monochrome1(dataset):
        pixels = _inversion_constant(dataset) - pixels
    return pixels


def _stored_values(dataset: pydicom.Dataset, units: str = DICOM_UNITS) -> StoredValues:
    """What a radius in the file's stored values (the Modality LUT's output) means in its raw pixel values.

    A linear Modality LUT maps a raw perturbation d to s d (s = RescaleSlope), so a radius R in its
    output is R / |s| in raw values; a Modality LUT Sequence is a table, possibly non-linear, and
    gives no raw-value bound at all.
    """
    if "ModalityLUTSequence" in dataset:
        return StoredValues(units, None, "a Modality LUT Sequence maps raw values non-linearly: no raw-value radius "
                                         "holds")
    slope = abs(float(dataset.get("RescaleSlope", 1) or 1))
    return StoredValues(units, 1 / slope, f"Modality LUT output radius / |RescaleSlope| ({slope:g})")


# An image file exported from a DICOM (certify-array's --reference-dicom): the DICOM's pixels are certified.
REFERENCE_VALUES = StoredValues(REFERENCE_DICOM_UNITS)

def _is_monochrome1(dataset: pydicom.Dataset) -> bool:
    return str(dataset.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"


def _inversion_constant(dataset: pydicom.Dataset) -> float:
    """lowest + highest value the Modality LUT can output: fixed by the header, not by the pixels.

    A constant taken from the pixels (their min + max) would move when an attacker changes a
    single pixel and shift the whole image, which no L2 certificate could cover.
    """
    bits = int(dataset.get("BitsStored", dataset.get("BitsAllocated", 16)))
    signed = int(dataset.get("PixelRepresentation", 0)) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    mapped = apply_modality_lut(np.array([low, high]), dataset).astype(np.float64)
    return float(mapped.min() + mapped.max())


def _voi_window(dataset: pydicom.Dataset) -> IntensityWindow | None:
    """The first WindowCenter/WindowWidth pair as a window on MONOCHROME2 values, if usable."""
    try:
        center = float(np.atleast_1d(dataset.WindowCenter)[0])
        width = float(np.atleast_1d(dataset.WindowWidth)[0])
    except (AttributeError, TypeError, ValueError, IndexError):
        return None
    if not (np.isfinite(center) and np.isfinite(width) and width > 1):
        return None
    low, high = center - width / 2, center + width / 2
    if _is_monochrome1(dataset):
        constant = _inversion_constant(dataset)
        low, high = constant - high, constant - low
    return IntensityWindow(low, high)


def _spacing(dataset: pydicom.Dataset) -> tuple[tuple[float, float] | None, list[str]]:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = dataset.get(keyword)
        if value is None:
            continue
        try:
            spacing = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            return None, [f"{keyword} {value!r} is unreadable: results are in pixel units"]
        low, high = PLAUSIBLE_SPACING_MM
        if len(spacing) != 2 or not all(low <= s <= high for s in spacing):
            return None, [f"{keyword} {list(spacing)} mm is implausible: results are in pixel units"]
        return spacing, [] if keyword == "PixelSpacing" else ["spacing from ImagerPixelSpacing (detector plane, not corrected for magnification)"]
    return None, ["no PixelSpacing or ImagerPixelSpacing: results are in pixel units"]


def slicer_grid_spacing(dataset: pydicom.Dataset) -> tuple[tuple[float, float], str]:
    """(row, column) spacing of the volume Slicer's DICOM import makes of a CR or DX file, and where it comes from.

    Slicer 5.12's DICOMScalarVolumePlugin reads with GDCM (DCMTK only when GDCM fails), and GDCM takes a
    radiograph's spacing from ImagerPixelSpacing alone: PixelSpacing is ignored, and without a positive
    ImagerPixelSpacing the volume has 1 mm pixels (measured with slicer-core's own reader, Testing/
    test_slicer_core.py).  The files meant for Slicer are written on that grid, so that they lie on the
    radiograph as Slicer loaded it; calibrated measurements keep `Radiograph.spacing_mm`.
    """
    try:
        spacing = tuple(float(v) for v in dataset.get("ImagerPixelSpacing") or ())
    except (TypeError, ValueError):
        spacing = ()
    if len(spacing) == 2 and all(s > 0 for s in spacing):
        return (spacing[0], spacing[1]), "ImagerPixelSpacing, as Slicer's DICOM import (GDCM) reads a CR or DX"
    return (1.0, 1.0), "1 mm: no positive ImagerPixelSpacing, as Slicer's DICOM import (GDCM) reads a CR or DX"


def ijk_to_lps(dataset, spacing_mm: tuple[float, float] | None) -> np.ndarray:
    """4x4 voxel (column i, row j, k) to LPS matrix of a single-frame image.

    Uses ImageOrientationPatient/ImagePositionPatient when the image has them
    (some DX do); projection radiographs usually do not, and then the image lies
    in the identity plane at the origin, as Slicer's DICOM import places it.
    """
    row_spacing, column_spacing = spacing_mm or (1.0, 1.0)
    orientation = [float(v) for v in dataset.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])]
    position = [float(v) for v in dataset.get("ImagePositionPatient", [0, 0, 0])]
    along_row, along_column = np.array(orientation[:3]), np.array(orientation[3:])
    matrix = np.eye(4)
    matrix[:3, 0] = along_row * column_spacing
    matrix[:3, 1] = along_column * row_spacing
    matrix[:3, 2] = np.cross(along_row, along_column)
    matrix[:3, 3] = position
    return matrix
