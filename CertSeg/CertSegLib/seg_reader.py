"""CertSeg's own DICOM SEG files, read with highdicom for the DICOM plugin (no Slicer needed here).

dcmqi, Slicer's usual SEG reader, cannot read the SEGs earlier versions wrote on a projection
radiograph, without a Frame of Reference; every CertSeg SEG references its source image through
Derivation Image, so its frames map onto the radiograph's pixels one to one, whatever plane (if any)
it also states.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.uid import SegmentationStorage

from certseg.record import ModelIdentity

CERTSEG_MANUFACTURER = "CertSeg"
SLICER_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


def is_certseg_seg(sop_class_uid: str, manufacturer: str) -> bool:
    return sop_class_uid.strip() == SegmentationStorage and manufacturer.strip() == CERTSEG_MANUFACTURER


@dataclass
class SegmentLayer:
    name: str
    color: tuple[float, float, float]  # RGB in [0, 1]
    terminology: str  # Slicer's serialized terminology entry
    mask: np.ndarray  # (rows, columns) uint8, 1 inside
    certified: bool  # the backend's own mask (AUTOMATIC); False: edited or added by a reader (MANUAL)


@dataclass
class CertSegSeg:
    referenced_sop_instance_uid: str
    series_description: str
    segments: list[SegmentLayer]
    model: ModelIdentity  # the certifying segmenter's name and version


def referenced_instance_uid(path: str | Path) -> str:
    """The SOP Instance UID of the radiograph a CertSeg SEG lies on (header only: cheap enough for examine)."""
    import pydicom

    dataset = pydicom.dcmread(str(path), stop_before_pixels=True)
    return str(dataset.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID)


def read_certseg_seg(path: str | Path) -> CertSegSeg:
    """Segments, colours, terminology and masks of a CertSeg SEG, on its referenced radiograph's grid."""
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    if not is_certseg_seg(str(seg.SOPClassUID), str(seg.get("Manufacturer", ""))):
        raise ValueError(f"{path}: not a DICOM SEG written by CertSeg")
    references = [uids[2] for uids in seg.get_source_image_uids()]
    if len(references) != 1:
        raise ValueError(f"{path}: references {len(references)} images; CertSeg's SEG references one radiograph")
    numbers = seg.get_segment_numbers()
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=references, segment_numbers=numbers,
                                               assert_missing_frames_are_empty=True)[0]
    segments, model = [], ModelIdentity("unknown", "")
    for index, number in enumerate(numbers):
        description = seg.get_segment_description(number)
        certified = description.SegmentAlgorithmType == "AUTOMATIC"
        if certified:
            algorithm = description.SegmentationAlgorithmIdentificationSequence[0]
            model = ModelIdentity(str(algorithm.AlgorithmName).removeprefix("CertSeg "), str(algorithm.AlgorithmVersion))
        lab = hd.color.CIELabColor.from_dicom_value(list(description.RecommendedDisplayCIELabValue))
        segments.append(SegmentLayer(
            name=str(description.SegmentLabel),
            color=tuple(channel / 255 for channel in lab.to_rgb()),
            terminology=_terminology(description),
            mask=(pixels[:, :, index] > 0).astype(np.uint8),
            certified=certified))
    return CertSegSeg(references[0], str(seg.get("SeriesDescription", "")), segments, model)


def _terminology(description) -> str:
    """Slicer's serialized terminology entry (vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry)."""
    category = description.SegmentedPropertyCategoryCodeSequence[0]
    kind = description.SegmentedPropertyTypeCodeSequence[0]
    # Nested in the type's item (PS3.3 C.8.20.4); CertSeg before 0.3 put it beside the type.
    modifiers = kind.get("SegmentedPropertyTypeModifierCodeSequence") \
        or description.get("SegmentedPropertyTypeModifierCodeSequence")
    modifier = "^".join((modifiers[0].CodingSchemeDesignator, modifiers[0].CodeValue, modifiers[0].CodeMeaning)) \
        if modifiers else "^^"
    code = lambda item: f"{item.CodingSchemeDesignator}^{item.CodeValue}^{item.CodeMeaning}"  # noqa: E731
    return f"{SLICER_CONTEXT}~{code(category)}~{code(kind)}~{modifier}~{ANATOMIC_CONTEXT}~^^~^^"
