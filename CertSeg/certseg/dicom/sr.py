"""measurements.dcm: the certified measurement intervals as a DICOM SR (TID 1500), built by highdicom.

Each certified structure is a planar ROI group (TID 1410) that references its segment of the
CertSeg SEG; its area is two measurements, the certified interval's ends, with derivation
Minimum and Maximum (CID 7464).  The cardiothoracic ratio's ends are an image-level group
(TID 1501).  The values and their guarantee are report.json's `measurements`.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes

from certseg import __version__
from certseg.dicom.codes import CARDIOTHORACIC_RATIO, CHEST_XRAY, RATIO_VERDICT, RATIO_VERDICT_VALUES
from certseg.record import AreaMeasurement, RatioMeasurement, Report


def write_measurement_sr(path: Path, radiograph, seg_path: Path, report: Report) -> None:
    """The SR of `report`'s measurements, referencing the radiograph and the SEG at `seg_path`."""
    seg = pydicom.dcmread(seg_path)
    model = report.segmenter
    algorithm = hd.sr.AlgorithmIdentification(name=f"CertSeg {model.name}", version=model.version)
    observer = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(uid=hd.UID(), name="CertSeg")))
    groups = [group for group in (_structure_group(seg, structure, algorithm)
                                  for structure in report.measurements.structures) if group is not None]
    ratio = _ratio_group(report.measurements.cardiothoracic_ratio, algorithm)
    if ratio is not None:
        groups.append(ratio)
    content = hd.sr.MeasurementReport(observation_context=observer,
                                      procedure_reported=CHEST_XRAY, imaging_measurements=groups)
    sr = hd.sr.ComprehensiveSR(
        evidence=[radiograph.dataset, seg], content=content, series_instance_uid=hd.UID(),
        series_number=int(radiograph.dataset.get("SeriesNumber", 0) or 0) + 9001, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="CertSeg", series_description="CertSeg certified measurements")
    sr.SoftwareVersions = __version__
    _drop_frame_numbers(sr, str(radiograph.dataset.SOPInstanceUID))
    sr.save_as(path)


def _structure_group(seg, structure: AreaMeasurement, algorithm):
    number = _segment_number(seg, f"certified {structure.name}")
    if number is None:  # nothing certified: no segment to reference
        return None
    in_mm2 = structure.area_mm2 is not None
    values = structure.area_mm2 if in_mm2 else structure.area_pixels
    unit = hd.sr.CodedConcept("mm2", "UCUM", "mm2") if in_mm2 else hd.sr.CodedConcept("{pixels}", "UCUM", "pixels")
    measurements = [hd.sr.Measurement(name=codes.SCT.Area, value=float(value), unit=unit, derivation=derivation,
                                      algorithm_id=algorithm)
                    for value, derivation in ((values.low, codes.SCT.Minimum), (values.high, codes.SCT.Maximum))]
    description = next(d for d in seg.SegmentSequence if d.SegmentNumber == number)
    kind = description.SegmentedPropertyTypeCodeSequence[0]
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=structure.name),
        referenced_segment=hd.sr.ReferencedSegmentationFrame.from_segmentation(seg, segment_number=number),
        finding_type=hd.sr.CodedConcept(kind.CodeValue, kind.CodingSchemeDesignator, kind.CodeMeaning),
        measurements=measurements, algorithm_id=algorithm)


def _ratio_group(ratio: RatioMeasurement | None, algorithm):
    """The ratio's certified ends (Minimum, Maximum), when certified, and its verdict on 0.5 (always) as a
    qualitative evaluation; None when the model does not measure the ratio."""
    if ratio is None:
        return None
    ends = () if ratio.interval is None else zip(ratio.interval, (codes.SCT.Minimum, codes.SCT.Maximum))
    measurements = [hd.sr.Measurement(name=CARDIOTHORACIC_RATIO, value=float(value),
                                      unit=hd.sr.CodedConcept("1", "UCUM", "no units"), derivation=derivation,
                                      algorithm_id=algorithm)
                    for value, derivation in ends]
    verdict = RATIO_VERDICT_VALUES[ratio.verdict]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="cardiothoracic ratio"),
        measurements=measurements or None, algorithm_id=algorithm,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=RATIO_VERDICT, value=verdict)])


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
