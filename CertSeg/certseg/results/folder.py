"""One result folder per image: every output file, written into a staging folder that appears whole or not at all.

    seg.dcm, measurements.dcm   DICOM SEG and its TID 1500 SR (DICOM sources only)
    capture.dcm, report-pdf.dcm the certified overlay as Secondary Capture and the report page as Encapsulated
                                PDF, for PACS viewers that show no SEG (DICOM sources only)
    report.pdf                  the one-page report
    certseg.seg.nrrd            the same segments for Slicer; pixel_radius.nrrd the per-pixel radius
    overlay.png                 a quick look: the capture's picture, at most 1024 pixels
    certificate.npz             model-grid arrays for research, with what each promises
    report.json                 certseg.report
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from certseg.dicom.capture import write_encapsulated_pdf, write_secondary_capture
from certseg.dicom.seg import write_dicom_seg
from certseg.dicom.sr import write_measurement_sr
from certseg.files import (CAPTURE_FILE, CERTIFICATE_ARRAYS_FILE, MEASUREMENT_SR_FILE, OVERLAY_FILE, PIXEL_RADIUS_FILE,
                           REPORT_FILE, REPORT_PDF_DICOM_FILE, REPORT_PDF_FILE, SEG_FILE, SEG_NRRD_FILE, write_json)
from certseg.record import Report, WindowOrigin
from certseg.results.capture import render_capture
from certseg.results.preview import write_overlay
from certseg.results.report_page import write_report_page
from certseg.results.segmentation import segment_tags, write_radius_map, write_seg_nrrd


def write_result_folder(folder: Path, stored: np.ndarray, result, report: Report, geometry: np.ndarray,
                        radiograph=None) -> None:
    """Every output of one image into `folder`: the DICOM objects (DICOM sources only), report.pdf, certseg.seg.nrrd,
    overlay.png, certificate.npz (model-grid arrays for research) and report.json."""
    labels, table = result.source_labels, result.class_table
    capture = render_capture(stored, labels, table, report)
    page = write_report_page(stored, labels, table, report, identity(radiograph))
    (folder / REPORT_PDF_FILE).write_bytes(page)
    if radiograph is not None:
        write_dicom_seg(folder / SEG_FILE, radiograph, labels, table, report.segmenter)
        write_measurement_sr(folder / MEASUREMENT_SR_FILE, radiograph, folder / SEG_FILE, report, labels, table)
        write_secondary_capture(folder / CAPTURE_FILE, capture, radiograph.dataset)
        write_encapsulated_pdf(folder / REPORT_PDF_DICOM_FILE, page, radiograph.dataset)
    write_seg_nrrd(folder / SEG_NRRD_FILE, labels, table, geometry, segment_tags(report))
    write_overlay(folder / OVERLAY_FILE, capture)
    write_certificate_arrays(folder / CERTIFICATE_ARRAYS_FILE, result, report)
    write_radius_map(folder / PIXEL_RADIUS_FILE, result, geometry)
    write_json(folder / REPORT_FILE, report.to_json())


def identity(radiograph) -> dict[str, str]:
    """The patient and study lines the report page prints (none for an image file)."""
    if radiograph is None:
        return {}
    dataset = radiograph.dataset
    fields = {"Patient": "PatientName", "Patient ID": "PatientID", "Born": "PatientBirthDate", "Study date": "StudyDate",
              "Accession": "AccessionNumber", "View": "ViewPosition"}
    return {label: str(dataset.get(keyword, "") or "") for label, keyword in fields.items()}


CERTIFICATE_ARRAYS = {
    "model_labels": "certified class per model-grid pixel, -1 = abstained; report.json's segmenter_classes say which "
                    "structures each class stands for (a lung under its clavicle is one class). Guarantee (probability >= 1 - alpha "
                    "over the sampling): every certified pixel carries the smoothed segmenter's label, unchanged "
                    "under any L2 perturbation of the model input below radius.model_space",
    "candidates": "class tested per pixel (from the n0 selection samples); certified or not",
    "counts": "votes for the candidate among the estimation samples drawn",
    "pixel_radius": "model-input L2 radius per certified pixel (NaN elsewhere) for its candidate, from a "
                    "Clopper-Pearson bound at each look's share of alpha / pixels: holds with probability "
                    ">= 1 - alpha on its own, together with model_labels with probability >= 1 - 2 alpha",
    "pixel_radius_stored_values": "pixel_radius / ||A||, L2 over the source grid in the units of "
                                  "radius.stored_values_units; all NaN when the intensity window came from the "
                                  "image itself (no per-pixel bound is computed for a movable window)",
}


def write_certificate_arrays(path: Path, result, report: Report) -> None:
    """certificate.npz: the model-grid arrays and, as `guarantees` (a JSON string), what each one promises."""
    certificate = result.certificate
    fixed_window = report.intensity_window.origin is WindowOrigin.DICOM_VOI
    per_pixel_stored = (certificate.pixel_radius / result.input_map.operator_norm() if fixed_window
                        else np.full_like(certificate.pixel_radius, np.nan))
    guarantees = {**CERTIFICATE_ARRAYS, "alpha": certificate.parameters.alpha,
                  "radius_model_space": certificate.radius}
    np.savez_compressed(path, model_labels=certificate.labels, candidates=certificate.candidates,
                        counts=certificate.counts, pixel_radius=certificate.pixel_radius,
                        pixel_radius_stored_values=per_pixel_stored, guarantees=np.array(json.dumps(guarantees)))
