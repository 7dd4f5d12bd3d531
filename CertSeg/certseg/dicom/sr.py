"""measurements.dcm: the certified measurement intervals as a DICOM SR (TID 1500), built by highdicom.

Each certified structure is a planar ROI group (TID 1410) that references its segment of the
CertSeg SEG; its area is two measurements, the certified interval's ends, with derivation
Minimum and Maximum (CID 7464).  Beside it, a second planar ROI group with the same tracking
identifier and UID (the same finding) gives the image region: the outline of the structure's
largest certified region on the radiograph (core.outline), which viewers that draw SR regions
(OHIF) draw and list with the measurements.  TID 1410 takes one ROI per group, a segment or an
image region, hence two groups; the measurements sit only in the segment's group, so no value is
stated twice.

The cardiothoracic ratio is a planar ROI group with its verdict on 0.5 and, when certified, its
interval's ends, on the heart's largest certified region (the region its cardiac diameter is
measured from); a ratio that is not certified (no certified heart or lung) is stated on the whole
image.  Every group has an image region: a group without one breaks OHIF's SR viewport.  With nothing
certified and no ratio measured, one group on the whole image says "abstained".  The values and
their guarantee are report.json's `measurements`.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from certseg import __version__
from certseg.core.labels import ClassTable
from certseg.core.outline import main_region_outline
from certseg.dicom.codes import (ABSTAINED_TYPE, CARDIOTHORACIC_RATIO, CHEST_XRAY, HEART, RATIO_VERDICT,
                                 RATIO_VERDICT_VALUES, segments)
from certseg.record import AreaMeasurement, RatioMeasurement, Report

HEART_SEGMENT = "certified heart"


def write_measurement_sr(path: Path, radiograph, seg_path: Path, report: Report, labels: np.ndarray,
                         table: ClassTable) -> None:
    """The SR of `report`'s measurements, referencing the radiograph and the SEG at `seg_path` (written from
    `labels`, the certified classes of `table` on the radiograph's grid, whose regions the SR outlines)."""
    seg = pydicom.dcmread(seg_path)
    masks = {segment.name: segment.mask for segment in segments(labels, table)}
    image = hd.sr.SourceImageForRegion(referenced_sop_class_uid=radiograph.dataset.SOPClassUID,
                                       referenced_sop_instance_uid=radiograph.dataset.SOPInstanceUID)
    model = report.segmenter
    algorithm = hd.sr.AlgorithmIdentification(name=f"CertSeg {model.name}", version=model.version)
    observer = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(uid=hd.UID(), name="CertSeg")))
    groups = []
    for structure in report.measurements.structures:
        groups += _structure_groups(seg, structure, masks, image, algorithm)
    whole_image = _whole_image_region(radiograph.dataset, image)
    ratio = _ratio_group(report.measurements.cardiothoracic_ratio, masks.get(HEART_SEGMENT), whole_image, image,
                         algorithm)
    if ratio is not None:
        groups.append(ratio)
    if not groups:  # nothing certified and no ratio measured: say so, on the whole image (TID 1500 needs a group)
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="abstained"),
            referenced_region=whole_image, finding_type=ABSTAINED_TYPE, algorithm_id=algorithm))
    content = hd.sr.MeasurementReport(observation_context=observer,
                                      procedure_reported=CHEST_XRAY, imaging_measurements=groups)
    sr = hd.sr.ComprehensiveSR(
        evidence=[radiograph.dataset, seg], content=content, series_instance_uid=hd.UID(),
        series_number=int(radiograph.dataset.get("SeriesNumber", 0) or 0) + 9001, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="CertSeg", series_description="CertSeg certified measurements")
    sr.SoftwareVersions = __version__
    _drop_frame_numbers(sr, str(radiograph.dataset.SOPInstanceUID))
    sr.save_as(path)


def _structure_groups(seg, structure: AreaMeasurement, masks: dict[str, np.ndarray], image, algorithm) -> list:
    """The structure's segment group (its area interval) and its outline group, one finding; none when nothing of
    it is certified."""
    name = f"certified {structure.name}"
    number = _segment_number(seg, name)
    if number is None:  # nothing certified: no segment to reference
        return []
    tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=structure.name)
    in_mm2 = structure.area_mm2 is not None
    values = structure.area_mm2 if in_mm2 else structure.area_pixels
    unit = hd.sr.CodedConcept("mm2", "UCUM", "mm2") if in_mm2 else hd.sr.CodedConcept("{pixels}", "UCUM", "pixels")
    measurements = [hd.sr.Measurement(name=codes.SCT.Area, value=float(value), unit=unit, derivation=derivation,
                                      algorithm_id=algorithm)
                    for value, derivation in ((values.low, codes.SCT.Minimum), (values.high, codes.SCT.Maximum))]
    description = next(d for d in seg.SegmentSequence if d.SegmentNumber == number)
    kind = description.SegmentedPropertyTypeCodeSequence[0]
    finding = hd.sr.CodedConcept(kind.CodeValue, kind.CodingSchemeDesignator, kind.CodeMeaning)
    by_segment = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_segment=hd.sr.ReferencedSegmentationFrame.from_segmentation(seg, segment_number=number),
        finding_type=finding, measurements=measurements, algorithm_id=algorithm)
    by_region = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, referenced_region=_outline_region(masks[name], image), finding_type=finding,
        algorithm_id=algorithm)
    return [by_segment, by_region]


def _outline_region(mask: np.ndarray, image) -> hd.sr.ImageRegion:
    return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=main_region_outline(mask),
                             source_image=image)


def _ratio_group(ratio: RatioMeasurement | None, heart: np.ndarray | None, whole_image, image, algorithm):
    """The ratio's verdict on 0.5 and, when certified, its interval's ends (Minimum, Maximum), on the heart's
    largest certified region; on the whole image when the ratio is not certified. None when the model does not
    measure the ratio."""
    if ratio is None:
        return None
    certified = ratio.interval is not None and heart is not None and heart.any()
    measurements = [hd.sr.Measurement(name=CARDIOTHORACIC_RATIO, value=float(value),
                                      unit=hd.sr.CodedConcept("1", "UCUM", "no units"), derivation=derivation,
                                      algorithm_id=algorithm)
                    for value, derivation in zip(ratio.interval, (codes.SCT.Minimum, codes.SCT.Maximum))] if certified else None
    verdict = RATIO_VERDICT_VALUES[ratio.verdict]
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="cardiothoracic ratio"),
        referenced_region=_outline_region(heart, image) if certified else whole_image, finding_type=HEART,
        measurements=measurements, algorithm_id=algorithm,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=RATIO_VERDICT, value=verdict)])


def _whole_image_region(dataset, image) -> hd.sr.ImageRegion:
    """The radiograph's full extent as a closed polyline: the region of a statement about the whole image."""
    rows, columns = float(dataset.Rows), float(dataset.Columns)
    corners = np.array([[0, 0], [columns, 0], [columns, rows], [0, rows], [0, 0]], dtype=np.float32)
    return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=corners, source_image=image)


def _drop_frame_numbers(dataset: pydicom.Dataset, radiograph_uid: str) -> None:
    """Frame numbers highdicom's ReferencedSegmentationFrame writes but dciodvfy rejects: a SEG is referenced by
    segment number or by frame number, never both, and the radiograph is a single-frame image."""
    for element in dataset:
        if element.VR != "SQ":
            continue
        for item in element.value:
            if element.keyword == "ReferencedSOPSequence" and (
                    "ReferencedSegmentNumber" in item or item.get("ReferencedSOPInstanceUID") == radiograph_uid):
                item.pop("ReferencedFrameNumber", None)
            _drop_frame_numbers(item, radiograph_uid)


def _segment_number(seg, label: str) -> int | None:
    return next((int(d.SegmentNumber) for d in seg.SegmentSequence if d.SegmentLabel == label), None)
