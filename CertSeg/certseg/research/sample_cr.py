"""A realistic CR DICOM file made from a DRR view: the shipped sample and the tests' raw material."""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

from certseg import __version__


def cr_dataset(stored: np.ndarray, *, imager_spacing_mm: float, source_to_detector_mm: float,
               magnification: float, seed: int) -> pydicom.Dataset:
    """A CR Image Storage dataset (MONOCHROME2, 12 of 16 bits) with the tags a chest CR carries."""
    if stored.dtype != np.uint16 or stored.ndim != 2:
        raise ValueError("stored must be a 2D uint16 array")
    rng = np.random.default_rng(seed)
    now = datetime.datetime(2026, 1, 5, 9, 30, 0)
    uid = lambda kind: generate_uid(entropy_srcs=[f"certseg-sample-{seed}-{kind}"])  # noqa: E731 - stable UIDs
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = uid("sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = ComputedRadiographyImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid("study"), uid("series")
    ds.PatientName, ds.PatientID = "CERTSEG^SAMPLE", f"CS{seed:06d}"
    ds.PatientBirthDate, ds.PatientSex, ds.PatientAge = "19700101", "O", "056Y"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = now.strftime("%H%M%S")
    ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = f"A{seed:07d}", "1", ""
    ds.StudyDescription, ds.SeriesDescription = "XR CHEST PA", "PA"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.PatientOrientation = ["L", "F"]  # columns run to the patient's left, rows to the feet
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Manufacturer = "CertSeg synthetic radiograph"
    ds.ManufacturerModelName = "certseg data sample-cr"
    ds.SoftwareVersions = __version__
    ds.ConversionType = "WSD"
    ds.KVP = f"{rng.uniform(110, 125):.0f}"
    ds.ExposureTime, ds.XRayTubeCurrent = int(rng.integers(5, 20)), int(rng.integers(200, 400))
    ds.DistanceSourceToDetector = f"{source_to_detector_mm:.1f}"
    ds.DistanceSourceToPatient = f"{source_to_detector_mm / magnification:.1f}"
    ds.EstimatedRadiographicMagnificationFactor = f"{magnification:.4f}"
    ds.ImagerPixelSpacing = [f"{imager_spacing_mm:.6f}"] * 2
    ds.PixelSpacing = [f"{imager_spacing_mm / magnification:.6f}"] * 2
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.WindowCenter, ds.WindowWidth = "2048", "4096"
    ds.LossyImageCompression = "00"
    ds.PixelData = stored.tobytes()
    return ds


def write_sample_cr(out: Path, *, seed: int, size: int, compress: bool = True) -> Path:
    """Render one view from its own seed stream and save it as CR (JPEG 2000 lossless unless not `compress`).

    Use a seed other than the training and evaluation datasets' so the view is new to the models.
    """
    from certseg.research.drr import ViewParameters, load_phantom, render_view

    params = ViewParameters.draw(np.random.default_rng(np.random.SeedSequence(seed)))
    stored, _ = render_view(load_phantom(), params, size)
    ds = cr_dataset(
        stored,
        imager_spacing_mm=params.field_of_view_mm * params.magnification / size,
        source_to_detector_mm=params.source_to_detector_mm,
        magnification=params.magnification,
        seed=seed,
    )
    if compress:
        from pydicom.uid import JPEG2000Lossless

        ds.compress(JPEG2000Lossless)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(out.name + ".partial")
    ds.save_as(temporary, enforce_file_format=True)
    temporary.replace(out)
    return out
