"""report.json: its schema, how it is built, and its text for people (the CLI's summary line, the Slicer panel).

One report per certified image (README.md, "report.json"):

    certseg_version, source           where the image came from: file, DICOM UIDs and transfer syntax, spacing, notes,
                                      metadata_check (dicom.reading.metadata_check)
    parameters, samples_drawn         the certificate's SmoothingParameters and the samples drawn
    denoiser, execution, noise        how the base segmenter ran and where the noise came from
    models                            name, version and sha256 of each network
    radius                            the certified radius three ways (core.radius) and its units
    model_grid, source_grid           size and abstained fraction on each grid
    intensity_window, preprocessing_operator_norm
    structures, measurements          certified pixels and area per structure; certified intervals (core.measurements)
    out_of_distribution, timings_s

Light on purpose (no torch): the Slicer module imports it to show a report.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from certseg import __version__
from certseg.core.labels import ABSTAIN
from certseg.core.measurements import VERDICTS, certified_measurements, ratio_verdict
from certseg.dicom.reading import Radiograph, metadata_check, raw_value_radius, slicer_grid_spacing

if TYPE_CHECKING:
    from certseg.model.folder import LoadedModels
    from certseg.pipeline import CertificationResult

DICOM_UNITS = ("DICOM Modality LUT output (RescaleSlope/Intercept or LUT Sequence applied, MONOCHROME1 mirrored), "
               "L2 over the source grid")
IMAGE_FILE_UNITS = "the image file's own values, L2 over its grid"
REFERENCE_DICOM_UNITS = "DICOM Modality LUT output of --reference-dicom (MONOCHROME1 mirrored), L2 over the source grid"


def dicom_report(result: CertificationResult, models: LoadedModels, radiograph: Radiograph) -> dict[str, Any]:
    """The report of a certified DICOM radiograph."""
    study, series, sop = radiograph.uids
    body = _body(result, models, radiograph.spacing_mm)
    raw, meaning = raw_value_radius(result.radii["stored_values_l2"], radiograph.dataset)
    body["radius"].update(stored_values_units=DICOM_UNITS, raw_pixel_values_l2=raw, raw_pixel_values_note=meaning)
    source = {"file": str(radiograph.path), "study_instance_uid": study, "series_instance_uid": series,
              "sop_instance_uid": sop, "modality": str(radiograph.dataset.Modality),
              "transfer_syntax": str(radiograph.dataset.file_meta.get("TransferSyntaxUID", "")),
              "pixel_spacing_mm": list(radiograph.spacing_mm) if radiograph.spacing_mm else None,
              "slicer_grid": slicer_grid(radiograph),
              "notes": radiograph.notes, "metadata_check": metadata_check(radiograph)}
    return {"certseg_version": __version__, "source": source, **body}


def slicer_grid(radiograph: Radiograph) -> dict[str, Any]:
    """Which spacing each output uses: areas and the DICOM SEG/SR the calibrated one, the Slicer files Slicer's."""
    spacing, origin = slicer_grid_spacing(radiograph.dataset)
    return {"spacing_mm": list(spacing), "from": origin,
            "used_by": ["certseg.seg.nrrd", "pixel_radius.nrrd"],
            "measurements_use": "pixel_spacing_mm (areas in mm2, the SR)"}


def image_file_report(result: CertificationResult, models: LoadedModels, path: Path,
                      spacing_mm: tuple[float, float] | None, reference: Radiograph | None) -> dict[str, Any]:
    """The report of a certified image file (`certify-array`), its values from the `reference` DICOM when given."""
    body = _body(result, models, spacing_mm)
    body["radius"]["stored_values_units"] = IMAGE_FILE_UNITS if reference is None else REFERENCE_DICOM_UNITS
    source = {"file": str(path), "reference_dicom": "" if reference is None else str(reference.path),
              "pixel_spacing_mm": spacing_mm, "notes": [] if reference is None else reference.notes,
              "metadata_check": metadata_check(reference)}
    return {"certseg_version": __version__, "source": source, **body}


def _body(result: CertificationResult, models: LoadedModels, spacing_mm: tuple[float, float] | None) -> dict[str, Any]:
    summary = result.certificate.summary()
    area = None if spacing_mm is None else spacing_mm[0] * spacing_mm[1]
    structures = []
    for label in models.segmenter_card.structures:
        pixels = int(np.sum(result.source_labels == label.value))
        structures.append({"name": label.name, "value": label.value, "certified_pixels": pixels,
                           "certified_area_mm2": None if area is None else pixels * area})
    return {
        "parameters": summary["parameters"],
        "samples_drawn": {"selection": summary["parameters"]["n0"], "estimation": summary["estimation_samples"]},
        "denoiser": models.denoiser is not None,
        "laterality_rule": None if models.laterality is None else models.laterality.describe(),
        "execution": result.execution,
        "noise": result.noise,
        "models": {kind: card.identity() for kind, card in (("segmenter", models.segmenter_card),
                                                             ("denoiser", models.denoiser_card)) if card is not None},
        "radius": dict(result.radii),
        "model_grid": {"size": result.input_map.model_size, "abstain_fraction": summary["abstain_fraction"]},
        "source_grid": {"shape": list(result.input_map.source_shape),
                        "abstain_fraction": float(np.mean(result.source_labels == ABSTAIN))},
        "intensity_window": {"low": result.input_map.window.low, "high": result.input_map.window.high,
                             "source": result.window_source},
        "preprocessing_operator_norm": result.input_map.operator_norm(),
        "structures": structures,
        "measurements": certified_measurements(result.source_labels, result.clean_labels,
                                               models.segmenter_card.labels, area),
        "out_of_distribution": result.ood,
        "timings_s": summary["timings_s"],
    }


def summary_line(report: dict[str, Any], target: Path) -> str:
    """One line per certified image for the terminal: areas, ratio, abstention, radius, OOD verdict, where."""
    structures = ", ".join(
        f"{s['name']} {s['certified_area_mm2'] / 100:.1f} cm2" if s["certified_area_mm2"] is not None
        else f"{s['name']} {s['certified_pixels']} px"
        for s in report["structures"]
    )
    ratio = ratio_words(report["measurements"]["cardiothoracic_ratio"])
    if ratio:
        structures += f"; {ratio}"
    return (f"certified {structures}; abstained {report['source_grid']['abstain_fraction']:.1%}; "
            f"radius {report['radius']['model_space']:.3f} in model input / {report['radius']['rms_per_source_pixel']:.3g} "
            f"stored-value RMS per pixel; {ood_text(report.get('out_of_distribution'))} -> {target}")


def ood_text(verdict: dict[str, Any] | None) -> str:
    """The out-of-distribution verdict in a few words."""
    if verdict is None:
        return "no OOD detector in this model folder"
    decision = "chest radiograph" if verdict["in_distribution"] else "NOT like a chest radiograph (forced)"
    return f"OOD check: {decision}, score {verdict['score']:.1f} / threshold {verdict['threshold']:.1f}"


def panel_summary(report: dict[str, Any]) -> str:
    """Certified area intervals per structure, the cardiothoracic ratio, abstained share, the radius three
    ways and every caveat the backend noted, as plain text lines."""
    source = report.get("source", {})
    lines = [f"Note: {note}" for note in source.get("notes", [])]
    if "metadata_check" in source:
        lines.append(f"DICOM metadata: {source['metadata_check']['text']}")
    lines += _measurement_lines(report)
    lines.append(f"Abstained: {report['source_grid']['abstain_fraction']:.1%} of the image")
    radius = report["radius"]
    lines.append(f"Certified L2 radius: {radius['model_space']:.3f} (model input, [0, 1] intensities)")
    lines.append(f"  = {radius['stored_values_l2']:.4g} in stored pixel values over the whole image")
    lines.append(f"  = {radius['rms_per_source_pixel']:.4g} RMS change per pixel")
    verdict = report.get("out_of_distribution")
    if verdict is not None:
        lines.append(f"Input check: {input_check(verdict)}")
    params = report["parameters"]
    lines.append(f"sigma {params['sigma']}, n0 {params['n0']}, n {params['n']}, alpha {params['alpha']}, "
                 f"tau {params['tau']}, {params['correction']}, denoiser {'on' if report['denoiser'] else 'off'}, "
                 f"{params['device']} in {report['execution']['precision']}")
    return "\n".join(lines)


def batch_detail(report: dict[str, Any]) -> str:
    """A batch's line for one certified radiograph (the Slicer panel): abstained share and the ratio's interval."""
    detail = f"abstained {report['source_grid']['abstain_fraction']:.1%}"
    ratio = ratio_words(report["measurements"]["cardiothoracic_ratio"])
    return detail + (f", {ratio}" if ratio else "")


def _ratio_interval(ratio: dict[str, Any] | None, dash: str = "-") -> str | None:
    """The cardiothoracic ratio's certified interval as text ("0.41-0.48"); None without one."""
    if ratio is None or ratio["low"] is None or ratio["high"] is None:
        return None
    return f"{ratio['low']:.2f}{dash}{ratio['high']:.2f}"


def ratio_words(ratio: dict[str, Any] | None) -> str | None:
    """The interval and its verdict on 0.5 ("cardiothoracic ratio 0.41-0.48, below 0.5 for every image within
    the radius"); None when the model has no heart and lungs."""
    if ratio is None:
        return None
    interval, verdict = _ratio_interval(ratio), _verdict_words(ratio)
    return f"cardiothoracic ratio {interval}, {verdict}" if interval else f"cardiothoracic ratio {verdict}"


def _verdict_words(ratio: dict[str, Any]) -> str:
    """The verdict on 0.5 in words (derived from the ends for a report written before verdicts were stored)."""
    return ratio.get("verdict_text") or VERDICTS[ratio_verdict(ratio["low"], ratio["high"])]


def input_check(verdict: dict[str, Any] | None) -> str:
    """The out-of-distribution verdict as a sentence (the Slicer panel and the report page)."""
    if verdict is None:
        return "no out-of-distribution check in this model folder"
    decision = "looks like a chest radiograph" if verdict["in_distribution"] else \
        "does NOT look like a chest radiograph (certified because forced)"
    return f"{decision} (spectral score {verdict['score']:.1f}, threshold {verdict['threshold']:.1f})"


def area_table(report: dict[str, Any]) -> tuple[str, list[tuple[str, dict[str, float]]]]:
    """The unit areas are shown in (cm² when every structure has a spacing, else pixels) and, per structure,
    its certified low and high and the clean network's value in that unit."""
    structures = report["measurements"]["structures"]
    in_mm2 = all(s["area_mm2"] is not None for s in structures)
    unit, key, scale = ("cm²", "area_mm2", 0.01) if in_mm2 else ("pixels", "area_pixels", 1.0)
    return unit, [(s["name"], {k: v * scale for k, v in s[key].items()}) for s in structures]


def _measurement_lines(report: dict[str, Any]) -> list[str]:
    """A small table: certified lower and upper bound of each area, and the clean network's value."""
    measurements = report["measurements"]
    unit, areas = area_table(report)
    lines = [f"Area ({unit})          certified range      clean"]
    for name, area in areas:
        lines.append(f"  {name:<16} {area['low']:>8.1f} - {area['high']:<8.1f} {area['clean']:>8.1f}")
    ratio = measurements["cardiothoracic_ratio"]
    interval = _ratio_interval(ratio, dash=" - ")
    if interval:
        clean = "-" if ratio["clean"] is None else f"{ratio['clean']:.2f}"
        lines.append(f"Cardiothoracic ratio: {interval} (clean {clean})")
    if ratio is not None:
        lines.append(f"  against 0.5: {_verdict_words(ratio)}")
    lines.append("Ranges hold for the smoothed segmenter with the certificate's probability, within its radius.")
    return lines
