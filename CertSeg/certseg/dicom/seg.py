"""The certified segmentation as a BINARY DICOM SEG (highdicom): one segment per certified structure, and Abstained.

Abstention has no standard code: it carries ("ABSTAINED", "99CERTSEG", "Certification abstained")
in category ("CERTOUTCOME", "99CERTSEG", "Certification outcome"), documented in docs/reference.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from certseg import __version__
from certseg.core.labels import ClassTable
from certseg.dicom.codes import ANATOMICAL_STRUCTURE, Segment, segments
from certseg.record import ModelIdentity

# The certified masks are AUTOMATIC (the backend's own); a reader's edit or addition is MANUAL (not certified).
AUTOMATIC, MANUAL = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, hd.seg.SegmentAlgorithmTypeValues.MANUAL
IDENTITY_PLANE = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # rows along x, columns along y: where viewers put an unplaced image
NOMINAL_SPACING = (1.0, 1.0)  # only to let highdicom build the plane; never stated in the SEG
# A projection has no slice; dcmqi (Slicer's SEG reader) and highdicom's reader still need a thickness.
NOMINAL_SLICE_THICKNESS_MM = 1.0


def write_dicom_seg(path: Path, radiograph, labels: np.ndarray, table: ClassTable, model: ModelIdentity) -> None:
    """A BINARY DICOM SEG (highdicom) in the source's study, new series, referencing the source image.

    `labels`: class values of `table`; each structure is a segment of its own, so frames overlap where
    structures do.  `model`: the segmenter, as the report records it."""
    _write_seg(path, radiograph, [(segment, AUTOMATIC) for segment in segments(labels, table)], model,
               "CertSeg certified segmentation", "CERTSEG", "certified structures and abstained region")


def write_reviewed_seg(path: Path, radiograph, reviewed: Sequence[tuple[Segment, bool]],
                       model: ModelIdentity) -> None:
    """The segmentation as a reader left it in Slicer: (segment, changed) pairs, changed meaning edited or added.

    A segment whose mask is still the certified one keeps its name and AUTOMATIC algorithm type; a changed one
    must be named as such by the caller ("... (edited, not certified)") and is MANUAL: the certificate covers only
    the backend's own masks, which stay in their own series."""
    _write_seg(path, radiograph, [(segment, MANUAL if changed else AUTOMATIC) for segment, changed in reviewed],
               model, "CertSeg segmentation, reviewed", "REVIEWED",
               "reviewed in Slicer; MANUAL segments are not certified")


def _write_seg(path: Path, radiograph, coded: Sequence[tuple[Segment, hd.seg.SegmentAlgorithmTypeValues]],
               model: ModelIdentity, series_description: str, content_label: str, content_description: str) -> None:
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"CertSeg {model.name}", family=codes.cid7162.ArtificialIntelligence,
        version=model.version, source="CertSeg randomized smoothing",
    )
    descriptions, masks = [], []
    for number, (segment, algorithm_type) in enumerate(coded, start=1):
        # DICOM's CID 7150 codes the category 91723000; Slicer's terminology context (the .seg.nrrd) 123037004.
        category = codes.SCT.AnatomicalStructure if segment.category == ANATOMICAL_STRUCTURE else segment.category
        description = hd.seg.SegmentDescription(
            segment_number=number, segment_label=segment.name, segmented_property_category=category,
            segmented_property_type=segment.type, algorithm_type=algorithm_type,
            algorithm_identification=algorithm if algorithm_type is AUTOMATIC else None,
            display_color=hd.color.CIELabColor.from_rgb(*segment.color),
        )
        if segment.modifier:  # laterality, nested in the type's item as PS3.3 C.8.20.4 places it (highdicom has no
            # argument for it)
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept.from_code(segment.modifier)]
        descriptions.append(description)
        masks.append(segment.mask)
    source, spacing = placed_source(radiograph)
    segmentation = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=np.stack(masks, axis=-1)[None],
        segmentation_type="BINARY",
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(radiograph.dataset.get("SeriesNumber", 0) or 0) + 9000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="CertSeg",
        manufacturer_model_name=model.name,
        software_versions=__version__,
        device_serial_number="n/a",
        series_description=series_description,
        content_label=content_label,
        content_description=content_description,
        pixel_measures=hd.PixelMeasuresSequence(pixel_spacing=list(spacing or NOMINAL_SPACING), slice_thickness=NOMINAL_SLICE_THICKNESS_MM),
        omit_empty_frames=False,
    )
    if spacing is None:
        # Pixel Measures may be left out beside the Derivation Image group, and is: the report has no spacing.
        del segmentation.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
    segmentation.save_as(path)


def placed_source(radiograph) -> tuple[pydicom.Dataset, tuple[float, float] | None]:
    """The radiograph as highdicom is given it, placed in a plane, and the SEG's pixel spacing (None: unknown).

    A projection radiograph (CR, most DX) has no Frame of Reference and no plane, and a SEG on it needs none:
    the Derivation Image functional group maps each SEG pixel onto a radiograph pixel (PS3.3 A.51.5.1).  But
    web viewers built on cornerstone (OHIF) draw a SEG only through its Plane Orientation (Patient), and
    PS3.3 Table A.51-2 allows that group, beside Derivation Image, only with a Frame of Reference.  So the SEG
    carries a Frame of Reference of its own (the radiograph's, when it has one) and places its single plane
    where viewers place the radiograph: the radiograph's own orientation and position when it states them
    (some DX do), else the identity plane at the origin, as Slicer's DICOM import, cornerstone and
    `reading.ijk_to_lps` place an image without them.  That plane locates the frame for display; it says
    nothing of the patient's anatomy, which the radiograph's Patient Orientation states.
    """
    dataset = radiograph.dataset
    source = pydicom.Dataset(dataset)
    source.file_meta = dataset.file_meta
    if "FrameOfReferenceUID" not in source:
        source.FrameOfReferenceUID = hd.UID()
        source.PositionReferenceIndicator = ""
    source.ImageOrientationPatient = [float(v) for v in dataset.get("ImageOrientationPatient") or IDENTITY_PLANE]
    source.ImagePositionPatient = [float(v) for v in dataset.get("ImagePositionPatient") or (0.0, 0.0, 0.0)]
    # highdicom places the plane with the source's Pixel Spacing; the SEG states the report's calibrated spacing.
    source.PixelSpacing = list(radiograph.spacing_mm or NOMINAL_SPACING)
    source.SliceThickness = NOMINAL_SLICE_THICKNESS_MM
    return source, radiograph.spacing_mm
