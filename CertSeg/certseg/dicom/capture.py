"""The two objects every PACS viewer displays: a Secondary Capture of the certified overlay and the report as
Encapsulated PDF.  Same study, a series each, referencing the source radiograph; Modality OT and DOC, never CR,
so that CertSeg (and its Orthanc plugin) never takes them for radiographs to certify."""

from __future__ import annotations

import datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.uid import EncapsulatedPDFStorage, ExplicitVRLittleEndian

from certseg import __version__

CAPTURE_SERIES_OFFSET, PDF_SERIES_OFFSET = 9002, 9003  # after the SEG's 9000 and the SR's 9001
CAPTURE_DESCRIPTION = "CertSeg certified overlay (research only)"
PDF_TITLE = "CertSeg certified segmentation report (research only)"


def _source_reference(source: pydicom.Dataset) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    return item


def write_secondary_capture(path: Path, rgb: np.ndarray, source: pydicom.Dataset) -> None:
    """An RGB Secondary Capture (highdicom) of `rgb`, the radiograph's own size with text burned in."""
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=hd.UID(),
        series_number=int(source.get("SeriesNumber", 0) or 0) + CAPTURE_SERIES_OFFSET, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="CertSeg", patient_orientation=_orientation(source) or ("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    # highdicom needs an orientation to build it; the SC states only the source's own (type 2: empty if unknown).
    capture.PatientOrientation = list(_orientation(source) or [])
    capture.Laterality = source.get("Laterality", "")  # General Series, type 2C (dciodvfy asks for it with a body part)
    capture.Modality = "OT"
    capture.SeriesDescription = CAPTURE_DESCRIPTION
    capture.ImageType = ["DERIVED", "SECONDARY"]
    capture.BurnedInAnnotation = "YES"
    capture.DerivationDescription = "CertSeg certified segmentation drawn on the source radiograph"
    capture.SourceImageSequence = [_source_reference(source)]
    capture.SoftwareVersions = __version__
    capture.save_as(path)


def write_encapsulated_pdf(path: Path, pdf: bytes, source: pydicom.Dataset) -> None:
    """The report page as Encapsulated PDF (PS3.3 A.45), in the source's study, referencing the source."""
    now = datetime.datetime.now(datetime.timezone.utc)
    dataset = pydicom.Dataset()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        setattr(dataset, keyword, source.get(keyword, ""))  # Patient and General Study: type 2 at least
    dataset.SOPClassUID, dataset.SOPInstanceUID = EncapsulatedPDFStorage, hd.UID()
    dataset.Modality, dataset.SeriesInstanceUID = "DOC", hd.UID()
    dataset.SeriesNumber = int(source.get("SeriesNumber", 0) or 0) + PDF_SERIES_OFFSET
    dataset.SeriesDescription = PDF_TITLE
    dataset.Manufacturer, dataset.SoftwareVersions = "CertSeg", __version__
    dataset.ConversionType = "WSD"  # SC Equipment: workstation
    dataset.InstanceNumber = 1
    dataset.ContentDate, dataset.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    dataset.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    dataset.BurnedInAnnotation = "YES"
    dataset.DocumentTitle = PDF_TITLE
    dataset.ConceptNameCodeSequence = []
    dataset.SourceInstanceSequence = [_source_reference(source)]
    dataset.MIMETypeOfEncapsulatedDocument = "application/pdf"
    dataset.EncapsulatedDocumentLength = len(pdf)
    dataset.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")  # even length; the length says the rest
    dataset.SpecificCharacterSet = source.get("SpecificCharacterSet", "ISO_IR 100")
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = dataset.SOPClassUID, dataset.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta = meta
    dataset.save_as(path, enforce_file_format=True)


def _orientation(source: pydicom.Dataset) -> tuple[str, str] | None:
    value = source.get("PatientOrientation")
    return (str(value[0]), str(value[1])) if value and len(value) == 2 else None
