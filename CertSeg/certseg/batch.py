"""`certseg certify INPUT --out OUT`: every chest radiograph in a PACS export, one result folder each."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from . import __version__
from .acceleration import Execution
from .errors import EXIT_OK, EXIT_SOME_FAILED, CertSegError
from .io_dicom import Radiograph, Skipped, candidate_files, check_header, raw_value_radius, read_radiograph
from .models import LoadedModels
from .outputs import atomic_directory
from .pipeline import certify_stored_image
from .progress import sample_bar
from .results import ijk_to_lps, write_result_folder
from .segmenter import CertifiedSegmenter


@dataclass
class Outcome:
    path: Path
    message: str
    status: str  # "certified", "kept" (result exists), "skipped" (not ours), "failed"
    result: Path | None = None  # the result folder (certified or kept)


def certify_input(source: Path, out: Path, models: LoadedModels, *, certification: dict[str, Any],
                  device: str, batch_size: int, seed: int | None, overwrite: bool, quiet: bool,
                  series: str | None = None, study: str | None = None,
                  force: bool = False, execution: Execution | None = None) -> tuple[int, list[Outcome]]:
    """Certify every selected chest radiograph under `source`; returns the exit code and one outcome per file."""
    outcomes: list[Outcome] = []
    segmenter = CertifiedSegmenter(models.network, models.num_classes, models.denoiser, device, execution)
    with candidate_files(source) as files:
        selected = []
        for path in files:
            header = check_header(path, force)
            if isinstance(header, Skipped):
                outcomes.append(_skipped(header))
            elif series and header.SeriesInstanceUID != series or study and header.StudyInstanceUID != study:
                outcomes.append(Outcome(path, "not in the selected study/series", "skipped"))
            else:
                selected.append(path)
        if not selected:
            raise CertSegError(f"{source}: no chest radiograph (CR or DX) to certify" + _reasons(outcomes))
        for path in tqdm(selected, desc="images", unit="image", disable=quiet):
            try:
                outcomes.append(_certify_file(path, out, models, segmenter, certification, batch_size, seed,
                                              overwrite, quiet, force))
            except CertSegError as error:
                outcomes.append(Outcome(path, f"refused: {error}", "failed"))
            except (ValueError, RuntimeError, OSError, MemoryError) as error:
                # One image's failure (bad geometry, out of memory, disk full) never stops the batch.
                outcomes.append(Outcome(path, f"{type(error).__name__}: {error}", "failed"))
    failed = any(o.status == "failed" for o in outcomes)
    return (EXIT_SOME_FAILED if failed else EXIT_OK), outcomes


def _skipped(skipped: Skipped) -> Outcome:
    return Outcome(skipped.path, skipped.reason, "failed" if skipped.failed else "skipped")


def _reasons(outcomes: list[Outcome]) -> str:
    shown = "; ".join(f"{o.path.name}: {o.message}" for o in outcomes[:5])
    return f" ({shown}{'; ...' if len(outcomes) > 5 else ''})" if outcomes else ""


def _certify_file(path, out, models, segmenter, certification, batch_size, seed, overwrite, quiet, force) -> Outcome:
    started = time.perf_counter()
    radiograph = read_radiograph(path, force)
    if isinstance(radiograph, Skipped):
        return _skipped(radiograph)
    target = out.joinpath(*radiograph.uids)
    if target.exists() and not overwrite:
        return Outcome(path, f"result kept: {target} exists (use --overwrite to replace it)", "kept", target)
    with sample_bar(certification["n0"] + certification["n"], disable=quiet) as progress:
        result = certify_stored_image(radiograph.pixels, models, segmenter=segmenter, batch_size=batch_size, seed=seed,
                                      image_key=radiograph.uids[2], progress=progress, force=force,
                                      window=radiograph.window, **certification)
    report = _report(radiograph, result, models)
    report["timings_s"]["total_with_decoding"] = time.perf_counter() - started
    with atomic_directory(target, overwrite=overwrite) as staging:
        write_result_folder(staging, radiograph.pixels, result, report,
                            ijk_to_lps(radiograph.dataset, radiograph.spacing_mm), models.segmenter_card, radiograph)
    return Outcome(path, summary_line(report, target), "certified", target)


def _report(radiograph: Radiograph, result, models: LoadedModels) -> dict[str, Any]:
    study, series, sop = radiograph.uids
    area = None if radiograph.spacing_mm is None else radiograph.spacing_mm[0] * radiograph.spacing_mm[1]
    return {
        "certseg_version": __version__,
        "source": {"file": str(radiograph.path), "study_instance_uid": study, "series_instance_uid": series,
                   "sop_instance_uid": sop, "modality": str(radiograph.dataset.Modality),
                   "transfer_syntax": str(radiograph.dataset.file_meta.get("TransferSyntaxUID", "")),
                   "pixel_spacing_mm": list(radiograph.spacing_mm) if radiograph.spacing_mm else None,
                   "notes": radiograph.notes},
        **result.report(models, pixel_area_mm2=area),
    } | {"radius": _radius_with_units(result.radii, radiograph)}


def _radius_with_units(radii: dict[str, Any], radiograph: Radiograph) -> dict[str, Any]:
    raw, meaning = raw_value_radius(radii["stored_values_l2"], radiograph.dataset)
    return {**radii, "stored_values_units": "DICOM Modality LUT output (RescaleSlope/Intercept or LUT Sequence "
                                            "applied, MONOCHROME1 mirrored), L2 over the source grid",
            "raw_pixel_values_l2": raw, "raw_pixel_values_note": meaning}


def summary_line(report: dict[str, Any], target: Path) -> str:
    structures = ", ".join(
        f"{s['name']} {s['certified_area_mm2'] / 100:.1f} cm2" if s["certified_area_mm2"] is not None
        else f"{s['name']} {s['certified_pixels']} px"
        for s in report["structures"]
    )
    ratio = report["measurements"]["cardiothoracic_ratio"]
    if ratio is not None and ratio["low"] is not None and ratio["high"] is not None:
        structures += f"; cardiothoracic ratio {ratio['low']:.2f}-{ratio['high']:.2f}"
    return (f"certified {structures}; abstained {report['source_grid']['abstain_fraction']:.1%}; "
            f"radius {report['radius']['model_space']:.3f} model / {report['radius']['rms_per_source_pixel']:.3g} "
            f"RMS per pixel; {ood_text(report.get('out_of_distribution'))} -> {target}")


def ood_text(verdict: dict[str, Any] | None) -> str:
    """The out-of-distribution verdict in a few words (CLI summary and Slicer panel)."""
    if verdict is None:
        return "no OOD detector in this model folder"
    decision = "chest radiograph" if verdict["in_distribution"] else "NOT like a chest radiograph (forced)"
    return f"OOD check: {decision}, score {verdict['score']:.1f} / threshold {verdict['threshold']:.1f}"

