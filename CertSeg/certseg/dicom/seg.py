"""The certified segmentation as a BINARY DICOM SEG (highdicom): one segment per certified structure, and Abstained.

Abstention has no standard code: it carries ("ABSTAINED", "99CERTSEG", "Certification abstained")
in category ("CERTOUTCOME", "99CERTSEG", "Certification outcome"), documented in README.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from certseg import __version__
from certseg.dicom.codes import ANATOMICAL_STRUCTURE, Segment, segments
from certseg.record import ModelIdentity

# The certified masks are AUTOMATIC (the backend's own); a reader's edit or addition is MANUAL (not certified).
AUTOMATIC, MANUAL = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, hd.seg.SegmentAlgorithmTypeValues.MANUAL


def write_dicom_seg(path: Path, radiograph, labels: np.ndarray, model: ModelIdentity) -> None:
    """A BINARY DICOM SEG (highdicom) in the source's study, new series, referencing the source image.

    `model`: the segmenter, as the report records it."""
    _write_seg(path, radiograph, [(segment, AUTOMATIC) for segment in segments(labels)], model,
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
    # Projection images have no Frame of Reference, so Slice Thickness is not required; dcmqi (Slicer's
    # DICOM SEG reader) and highdicom's reader still need it, so we state the nominal 1 mm.
    measures, source = None, radiograph.dataset
    if radiograph.spacing_mm is not None:
        measures = hd.PixelMeasuresSequence(pixel_spacing=list(radiograph.spacing_mm), slice_thickness=1.0)
    elif "PixelSpacing" in source:
        # Without measures highdicom copies the source's Pixel Spacing, which we found unusable (0\0 on a
        # real CR, which dciodvfy rejects): the SEG then states no spacing, as the report does.
        source = pydicom.Dataset(source)
        source.file_meta = radiograph.dataset.file_meta
        del source.PixelSpacing
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
        pixel_measures=measures,
        omit_empty_frames=False,
    )
    if "FrameOfReferenceUID" not in segmentation:
        # General Image: Patient Orientation is Type 2C without a frame of reference; highdicom leaves it out.
        segmentation.PatientOrientation = radiograph.dataset.get("PatientOrientation", "")
    segmentation.save_as(path)
