"""report.json built (the record types are certseg.record's), and its text for people (the CLI's summary
line, the Slicer panel).

One report per certified image (docs/reference.md, "report.json"):

    certseg_version, source           where the image came from: file, DICOM UIDs and transfer syntax, spacing, notes,
                                      metadata_check (what dicom.reading found when it read the file)
    parameters, samples_drawn         the certificate's smoothing parameters and the samples drawn
    denoiser, execution, noise        how the base segmenter ran and where the noise came from (the one seed)
    models, model_digest              name, version, weights' sha256 and definition digest of each network; one digest
                                      over the models that ran (model.cards)
    radius                            the certified radius three ways (core.radius) in the units the image was read in
    model_grid, source_grid           size and abstained fraction on each grid
    intensity_window, preprocessing_operator_norm   the window and its origin; the input map's norm
    structures, measurements          certified pixels and area per structure; certified intervals (core.measurements)
    out_of_distribution, timings_s

Light on purpose (no torch): the Slicer module imports it to show a report.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from certseg import __version__
from certseg.core.labels import ABSTAIN, ClassTable, Label
from certseg.core.measurements import certified_measurements
from certseg.dicom.reading import NOT_CHECKED, Radiograph
from certseg.record import (CertifiedStructure, Interval, ModelGrid, OodVerdict, RatioMeasurement, Report,
                            SamplesDrawn, SegmenterClass, Source, SourceGrid, combined_digest)

if TYPE_CHECKING:
    from certseg.model.folder import LoadedModels
    from certseg.pipeline import CertificationResult

def dicom_report(result: CertificationResult, models: LoadedModels, radiograph: Radiograph,
                 extra_timings: dict[str, float] | None = None) -> Report:
    """The report of a certified DICOM radiograph: what was read of it, and what certifying it found."""
    study, series, sop = radiograph.uids
    source = Source(file=str(radiograph.path), study_instance_uid=study, series_instance_uid=series,
                    sop_instance_uid=sop, modality=str(radiograph.dataset.Modality),
                    transfer_syntax=str(radiograph.dataset.file_meta.get("TransferSyntaxUID", "")),
                    pixel_spacing_mm=tuple(radiograph.spacing_mm) if radiograph.spacing_mm else None,
                    slicer_grid=radiograph.slicer_grid, notes=tuple(radiograph.notes),
                    metadata_check=radiograph.metadata, pixel_sha256=radiograph.pixel_sha256)
    return _report(result, models, source, extra_timings)


def image_file_report(result: CertificationResult, models: LoadedModels, path: Path,
                      spacing_mm: tuple[float, float] | None, reference: Radiograph | None,
                      pixel_sha256: str) -> Report:
    """The report of a certified image file (`certify-array`), with its `reference` DICOM when given."""
    source = Source(file=str(path), reference_dicom="" if reference is None else str(reference.path),
                    pixel_spacing_mm=None if spacing_mm is None else tuple(spacing_mm),
                    notes=() if reference is None else tuple(reference.notes),
                    metadata_check=NOT_CHECKED if reference is None else reference.metadata,
                    pixel_sha256=pixel_sha256)
    return _report(result, models, source)


def _report(result: CertificationResult, models: LoadedModels, source: Source,
            extra_timings: dict[str, float] | None = None) -> Report:
    certificate = result.certificate
    spacing_mm = source.pixel_spacing_mm
    area = None if spacing_mm is None else spacing_mm[0] * spacing_mm[1]
    structures = []
    for label in models.segmenter_card.structures:
        pixels = int(np.sum(result.class_table.mask(result.source_labels, label.value)))
        structures.append(CertifiedStructure(label.name, label.value, pixels, None if area is None else pixels * area))
    cards = (("segmenter", models.segmenter_card), ("denoiser", models.denoiser_card))
    return Report(
        certseg_version=__version__,
        source=source,
        parameters=certificate.parameters.recorded,
        samples_drawn=SamplesDrawn(selection=certificate.parameters.n0, estimation=certificate.estimation_samples),
        denoiser=models.denoiser is not None,
        laterality_rule=None if models.laterality is None else models.laterality.describe(),
        execution=result.execution,
        noise=result.noise,
        models=(identities := {kind: card.identity() for kind, card in cards if card is not None}),
        radius=result.radius,
        model_grid=ModelGrid(size=result.input_map.model_size, abstain_fraction=certificate.abstain_fraction),
        source_grid=SourceGrid(shape=tuple(result.input_map.source_shape),
                               abstain_fraction=float(np.mean(result.source_labels == ABSTAIN))),
        intensity_window=result.window,
        preprocessing_operator_norm=result.input_map.operator_norm(),
        structures=tuple(structures),
        measurements=certified_measurements(result.source_labels, result.clean_labels,
                                            models.segmenter_card.labels, result.class_table, area),
        out_of_distribution=result.ood,
        timings_s={**certificate.timings, **(extra_timings or {})},
        segmenter_classes=segmenter_classes(result.class_table, models.segmenter_card.labels),
        model_digest=combined_digest(identities),
    )


def segmenter_classes(table: ClassTable, labels: Sequence[Label]) -> tuple[SegmenterClass, ...]:
    """The class table in the report's words: each class value with the names of the structures it stands for."""
    names = {label.value: label.name for label in labels}
    return tuple(SegmenterClass(value, tuple(names[s] for s in members))
                 for value, members in enumerate(table.structures_of))


def summary_line(report: Report, target: Path) -> str:
    """One line per certified image for the terminal: areas, ratio, abstention, radius, OOD verdict, where."""
    structures = ", ".join(
        f"{s.name} {s.certified_area_mm2 / 100:.1f} cm2" if s.certified_area_mm2 is not None
        else f"{s.name} {s.certified_pixels} px"
        for s in report.structures
    )
    ratio = ratio_words(report.measurements.cardiothoracic_ratio)
    if ratio:
        structures += f"; {ratio}"
    radius = report.radius
    return (f"certified {structures}; abstained {report.source_grid.abstain_fraction:.1%}; "
            f"radius {radius.model_space:.3f} in model input / {radius.rms_per_source_pixel:.3g} "
            f"stored-value RMS per pixel; {ood_text(report.out_of_distribution)} -> {target}")


def ood_text(verdict: OodVerdict | None) -> str:
    """The out-of-distribution verdict in a few words."""
    if verdict is None:
        return "no OOD detector in this model folder"
    if verdict.in_distribution:
        return f"input check: frontal chest radiograph (spectral score {verdict.score:.1f} / {verdict.threshold:.1f})"
    return f"input check: NOT like a frontal chest radiograph, certified because forced ({verdict.refusal_words()})"


def panel_summary(report: Report) -> str:
    """Certified area intervals per structure, the cardiothoracic ratio, abstained share, the radius three
    ways and every caveat the backend noted, as plain text lines."""
    lines = [f"Note: {note}" for note in report.source.notes]
    lines.append(f"DICOM metadata: {report.source.metadata_check.text}")
    lines += _measurement_lines(report)
    lines.append(f"Abstained: {report.source_grid.abstain_fraction:.1%} of the image")
    radius = report.radius
    lines.append(f"Certified L2 radius: {radius.model_space:.3f} (model input, [0, 1] intensities)")
    lines.append(f"  = {radius.stored_values_l2:.4g} in stored pixel values over the whole image")
    lines.append(f"  = {radius.rms_per_source_pixel:.4g} stored pixel values RMS change per pixel")
    if report.out_of_distribution is not None:
        lines.append(f"Input check: {input_check(report.out_of_distribution)}")
    lines.append(parameter_words(report))
    return "\n".join(lines)


def parameter_words(report: Report) -> str:
    """The smoothing parameters and how the segmenter ran, on one line."""
    params = report.parameters
    return (f"sigma {params.sigma}, n0 {params.n0}, n {params.n}, alpha {params.alpha}, tau {params.tau}, "
            f"{params.correction}, denoiser {'on' if report.denoiser else 'off'}, {params.device} in "
            f"{report.execution.precision}")


def batch_detail(report: Report) -> str:
    """A batch's line for one certified radiograph (the Slicer panel): abstained share and the ratio's interval."""
    detail = f"abstained {report.source_grid.abstain_fraction:.1%}"
    ratio = ratio_words(report.measurements.cardiothoracic_ratio)
    return detail + (f", {ratio}" if ratio else "")


def _ratio_interval(ratio: RatioMeasurement | None, dash: str = "-") -> str | None:
    """The cardiothoracic ratio's certified interval as text ("0.41-0.48"); None without one."""
    if ratio is None or ratio.interval is None:
        return None
    return f"{ratio.low:.2f}{dash}{ratio.high:.2f}"


def ratio_words(ratio: RatioMeasurement | None) -> str | None:
    """The interval and its verdict on 0.5 ("cardiothoracic ratio 0.41-0.48, below 0.5 for every image within
    the radius"); None when the model has no heart and lungs."""
    if ratio is None:
        return None
    interval = _ratio_interval(ratio)
    return f"cardiothoracic ratio {interval}, {ratio.verdict_text}" if interval else \
        f"cardiothoracic ratio {ratio.verdict_text}"


def input_check(verdict: OodVerdict | None) -> str:
    """The out-of-distribution verdict as a sentence (the Slicer panel and the report page)."""
    if verdict is None:
        return "no out-of-distribution check in this model folder"
    if verdict.in_distribution:
        return (f"looks like a frontal chest radiograph (every measure in range; spectral score "
                f"{verdict.score:.1f}, threshold {verdict.threshold:.1f})")
    return (f"does NOT look like a frontal chest radiograph (certified because forced): refused by "
            f"{verdict.refusal_words()}")


def area_table(report: Report) -> tuple[str, list[tuple[str, Interval]]]:
    """The unit areas are shown in (cm² when every structure has a spacing, else pixels) and, per structure,
    its certified low and high and the clean network's value in that unit."""
    measurements = report.measurements
    if measurements.in_mm2:
        return "cm²", [(s.name, Interval(s.area_mm2.low / 100, s.area_mm2.high / 100, s.area_mm2.clean / 100))
                       for s in measurements.structures]
    return "pixels", [(s.name, s.area_pixels) for s in measurements.structures]


def _measurement_lines(report: Report) -> list[str]:
    """A small table: certified lower and upper bound of each area, and the clean network's value."""
    unit, areas = area_table(report)
    lines = [f"Area ({unit})          certified range      clean"]
    for name, area in areas:
        lines.append(f"  {name:<16} {area.low:>8.1f} - {area.high:<8.1f} {area.clean:>8.1f}")
    ratio = report.measurements.cardiothoracic_ratio
    interval = _ratio_interval(ratio, dash=" - ")
    if interval:
        clean = "-" if ratio.clean is None else f"{ratio.clean:.2f}"
        lines.append(f"Cardiothoracic ratio: {interval} (clean {clean})")
    if ratio is not None:
        lines.append(f"  against 0.5: {ratio.verdict_text}")
    lines.append("Ranges hold for the smoothed segmenter with the certificate's probability, within its radius.")
    return lines
