"""From inputs on disk to result folders: every chest radiograph of a DICOM export, or one image file.

`certseg certify` (discovered, then certify_selection once the models are loaded), `certseg pacs`, the
listener (certify_input), the Orthanc plugin (through `certseg certify`) and the Ray engine (certify_selected
per worker) certify DICOM the same way: read once into a dicom.reading.Radiograph, certified, one result
folder per image under OUT/<study>/<series>/<instance>/; `certseg certify-array` (the Slicer module's call) reads one image
file with read_image_file_input and certifies it with certify_image_file_input.  Both write each
result folder atomically and never replace one unless asked.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from pathlib import Path

import numpy as np
from tqdm import tqdm

from certseg.dicom.reading import (IMAGE_FILE_VALUES_UNITS, REFERENCE_VALUES, Radiograph, Skipped, candidate_files,
                                   check_header, pixel_digest, read_radiograph)
from certseg.errors import EXIT_OK, EXIT_SOME_FAILED, CertSegError, OutOfDistributionError, first_line
from certseg.files import REPORT_FILE, atomic_directory
from certseg.imagefile import ImageFile, read_image
from certseg.names import result_folder
from certseg.progress import progress_lines, sample_bar
from certseg.record import Report, StoredValues
from certseg.report import dicom_report, image_file_report, summary_line
from certseg.request import CertificationRequest
from certseg.status import Status
from certseg.results.folder import write_result_folder

if TYPE_CHECKING:  # torch, MONAI and diffusers load with the pipeline: only once there is something to certify
    from certseg.pipeline import CertificationPipeline, StoredImage


DecodingHook = Callable[[Path, bool], None]  # (path, started): called around each decoding


@dataclass
class Outcome:
    path: Path
    message: str
    status: Status
    result: Path | None = None  # the result folder (certified or kept)
    superseded: str | None = None  # certified anew: why the earlier result under the same UIDs no longer held


@dataclass
class Selection:
    """What discovery found under the inputs: the radiographs to certify, and an outcome for every other file."""

    radiographs: list[Path]
    others: list[Outcome]
    uids: dict[Path, tuple[str, str, str]] = field(default_factory=dict)  # each radiograph's study, series, SOP


def select_radiographs(files: list[Path], request: CertificationRequest, *, series: str | None = None,
                       study: str | None = None) -> Selection:
    """Headers only: the chest radiographs to certify (the gate, `--series`, `--study`), and why each other file is not."""
    selection = Selection([], [])
    for path in files:
        header = check_header(path, request.force)
        if isinstance(header, Skipped):
            selection.others.append(_skipped(header))
        elif series and header.SeriesInstanceUID != series or study and header.StudyInstanceUID != study:
            selection.others.append(Outcome(path, "not in the selected study/series", Status.SKIPPED))
        else:
            selection.radiographs.append(path)
            selection.uids[path] = (str(header.StudyInstanceUID), str(header.SeriesInstanceUID),
                                    str(header.SOPInstanceUID))
    return selection


def certify_selected(path: Path, out: Path, pipeline: CertificationPipeline, request: CertificationRequest, *,
                     overwrite: bool = False, quiet: bool = False, replace_changed: bool = False,
                     decoding: DecodingHook | None = None) -> Outcome:
    """One selected radiograph into OUT/<study>/<series>/<instance>/; every failure is an outcome, never a raise.

    A result already there is kept only when it certified these very pixels (report.json's pixel digest);
    one for other pixels under the same UIDs is replaced when `replace_changed` (CertSeg's own spool: the
    listener) and refused otherwise (a user's folder is never overwritten unasked)."""
    try:
        return _certify_dicom_file(path, out, pipeline, request, overwrite, quiet, replace_changed, decoding)
    except CertSegError as error:
        return Outcome(path, f"refused: {error}", Status.FAILED)
    except (ValueError, RuntimeError, OSError, MemoryError) as error:
        # One image's failure (bad geometry, out of memory, disk full) never stops the batch.
        return Outcome(path, f"{type(error).__name__}: {error}", Status.FAILED)


def kept(path: Path, target: Path) -> Outcome:
    """The outcome of a radiograph whose result exists, certified its pixels, and was not asked to be replaced."""
    return Outcome(path, f"result kept: {target} exists and certified these pixels (use --overwrite to replace it)",
                   Status.KEPT, target)


def previous_result(target: Path, radiograph: Radiograph) -> str | None:
    """Why the result in `target` is not the certificate of `radiograph`'s pixels (None: it is one)."""
    try:
        previous = Report.read(target / REPORT_FILE).source.pixel_sha256
    except CertSegError as error:
        return f"its report is unreadable ({first_line(error, 200)})"
    if not previous:
        return "its report names no pixel digest (written by an earlier version)"
    if previous != radiograph.pixel_sha256:
        return "it certified other pixels under the same UIDs"
    return None


def kept_or_refused(path: Path, target: Path, radiograph: Radiograph) -> Outcome:
    """An existing result, not to be replaced: kept if it certified these pixels, else this image fails."""
    mismatch = previous_result(target, radiograph)
    if mismatch is None:
        return kept(path, target)
    return Outcome(path, f"refused: {target} exists but {mismatch}; use --overwrite to certify this file",
                   Status.FAILED)


def exit_code_of(outcomes: list[Outcome]) -> int:
    return EXIT_SOME_FAILED if any(o.status == Status.FAILED for o in outcomes) else EXIT_OK


def nothing_to_certify(source: object, outcomes: list[Outcome]) -> CertSegError:
    return CertSegError(f"{source}: no chest radiograph (CR or DX) to certify" + _reasons(outcomes))


@contextlib.contextmanager
def discovered(sources: list[Path], request: CertificationRequest, *, series: str | None = None,
               study: str | None = None, unpack_archives: bool = True,
               scratch_parent: Path | None = None) -> Iterator[Selection]:
    """Discovery over every source, headers only (nothing heavy is loaded): what to certify and why each other
    file is not.  Files unpacked from archives (under `scratch_parent` when given: where workers can read them)
    live while the context lasts."""
    selection = Selection([], [])
    with contextlib.ExitStack() as stack:
        for source in sources:
            files = stack.enter_context(candidate_files(source, scratch_parent, unpack_archives=unpack_archives))
            found = select_radiographs(files, request, series=series, study=study)
            selection.radiographs += found.radiographs
            selection.others += found.others
            selection.uids.update(found.uids)
        yield selection


def certify_selection(selection: Selection, out: Path, pipeline: CertificationPipeline,
                      request: CertificationRequest, *, overwrite: bool = False, quiet: bool = False,
                      replace_changed: bool = False, decoding: DecodingHook | None = None) -> tuple[int, list[Outcome]]:
    """Certify each selected radiograph (certify_selected); the exit code and one outcome per file discovered."""
    outcomes = list(selection.others)
    for path in tqdm(selection.radiographs, desc="images", unit="image", disable=quiet):
        outcomes.append(certify_selected(path, out, pipeline, request, overwrite=overwrite, quiet=quiet,
                                         replace_changed=replace_changed, decoding=decoding))
    return exit_code_of(outcomes), outcomes


def certify_input(source: Path, out: Path, pipeline: CertificationPipeline, request: CertificationRequest, *,
                  overwrite: bool = False, quiet: bool = False, series: str | None = None,
                  study: str | None = None, none_is_an_error: bool = True,
                  received: bool = False, replace_changed: bool = False,
                  decoding: DecodingHook | None = None) -> tuple[int, list[Outcome]]:
    """Certify every selected chest radiograph under `source` with a loaded pipeline (pacs, the listener).

    `received`: the files came from a network peer: they are read as the files they are, never unpacked as
    archives.  `decoding(path, started)` is called before and after each decoding.  `none_is_an_error`: no
    chest radiograph at all is a CertSegError (the command line's exit 2); the listener asks for the outcomes
    instead, to say of each object why it was not certified."""
    with discovered([source], request, series=series, study=study, unpack_archives=not received) as selection:
        if not selection.radiographs and none_is_an_error:
            raise nothing_to_certify(source, selection.others)
        return certify_selection(selection, out, pipeline, request, overwrite=overwrite, quiet=quiet,
                                 replace_changed=replace_changed, decoding=decoding)


@dataclass
class ImageFileInput:
    """An image file read and checked, ready to certify: its pixels (the reference DICOM's, when given)."""

    path: Path
    image: ImageFile
    radiograph: Radiograph | None  # the reference DICOM, gated and matched to the image


def read_image_file_input(path: Path, out: Path, request: CertificationRequest, *,
                          reference_dicom: Path | None = None, overwrite: bool = False) -> ImageFileInput:
    """Everything `certify-array` can refuse before a model is loaded: the image, the reference DICOM and its
    metadata gate, and a result folder that exists (kept unless `overwrite`; a file there is never replaced)."""
    if out.exists() and not out.is_dir():
        raise CertSegError(f"{out}: is a file, not a result folder (CertSeg replaces only result folders)")
    image = read_image(path)
    radiograph = None
    if reference_dicom is not None:
        radiograph = _reference_radiograph(reference_dicom, image.pixels, request.force)
        image.pixels, image.spacing_mm = radiograph.pixels, radiograph.spacing_mm
    if out.exists() and not overwrite:
        raise CertSegError(f"{out}: already exists (use --overwrite to replace it)")
    return ImageFileInput(path, image, radiograph)


def certify_image_file_input(given: ImageFileInput, out: Path, pipeline: CertificationPipeline,
                             request: CertificationRequest, *, overwrite: bool = False, quiet: bool = False,
                             progress_protocol: bool = False) -> str:
    """Certify an image file already read (read_image_file_input) into `out`; returns the summary line."""
    from certseg.pipeline import StoredImage

    path, image, radiograph = given.path, given.image, given.radiograph
    values = REFERENCE_VALUES if radiograph is not None else StoredValues(IMAGE_FILE_VALUES_UNITS)
    stored = StoredImage(image.pixels, path.name, None if radiograph is None else radiograph.window, values)
    reporter = progress_lines() if progress_protocol else sample_bar(request.samples, disable=quiet)
    with reporter as progress:
        try:
            result = pipeline.certify(stored, request, progress)
        except OutOfDistributionError as error:
            raise error.located(path) from None  # its own exit code: the Slicer module asks about an override
        except CertSegError as error:
            raise CertSegError(f"{path}: {error}") from None
    report = image_file_report(result, pipeline.models, path, image.spacing_mm, radiograph, pixel_digest(image.pixels))
    _write(out, image.pixels, result, report, image.ijk_to_lps, radiograph, overwrite)
    return summary_line(report, out)


def _certify_dicom_file(path: Path, out: Path, pipeline: CertificationPipeline, request: CertificationRequest,
                        overwrite: bool, quiet: bool, replace_changed: bool,
                        decoding: DecodingHook | None = None) -> Outcome:
    started = time.perf_counter()
    if decoding is not None:
        decoding(path, True)
    radiograph = read_radiograph(path, request.force)
    if decoding is not None:
        decoding(path, False)
    if isinstance(radiograph, Skipped):
        return _skipped(radiograph)
    target = result_folder(out, radiograph.uids)  # refused (CertSegError) unless every UID is one
    superseded = None
    if target.exists() and not overwrite:
        superseded = previous_result(target, radiograph)
        if superseded is None or not replace_changed:
            return kept_or_refused(path, target, radiograph)
        overwrite = True  # CertSeg's own spool: the new pixels are certified, the old result superseded
    with sample_bar(request.samples, disable=quiet) as progress:
        result = pipeline.certify(stored_image(radiograph), request, progress)
    report = dicom_report(result, pipeline.models, radiograph,
                          extra_timings={"total_with_decoding": time.perf_counter() - started})
    # .seg.nrrd and pixel_radius.nrrd lie on the grid Slicer's DICOM import gives the file (report: slicer_grid)
    _write(target, radiograph.pixels, result, report, radiograph.slicer_ijk_to_lps, radiograph, overwrite)
    line = summary_line(report, target)
    if superseded:
        line = f"certified anew, superseding the earlier result ({superseded}): {line}"
    return Outcome(path, line, Status.CERTIFIED, target, superseded)


def stored_image(radiograph: Radiograph) -> StoredImage:
    """What the pipeline certifies of a radiograph: its stored values, keyed by SOPInstanceUID, with its VOI window."""
    from certseg.pipeline import StoredImage

    return StoredImage(radiograph.pixels, radiograph.uids[2], radiograph.window, radiograph.values)


def _write(target: Path, pixels: np.ndarray, result, report: Report, geometry: np.ndarray,
           radiograph: Radiograph | None, overwrite: bool) -> None:
    with atomic_directory(target, overwrite=overwrite) as staging:
        write_result_folder(staging, pixels, result, report, geometry, radiograph)


def _reference_radiograph(path: Path, pixels: np.ndarray, force: bool) -> Radiograph:
    """The DICOM an exported volume came from, checked to hold the same picture (possibly inverted).

    Its metadata gate applies as to any DICOM input (`force` overrides it, and the report says so)."""
    radiograph = read_radiograph(path, force)
    if isinstance(radiograph, Skipped):
        raise CertSegError(f"{path}: {radiograph.reason}")
    if radiograph.pixels.shape != pixels.shape:
        raise CertSegError(f"{path}: {radiograph.pixels.shape} pixels do not match the image's {pixels.shape}")
    correlation = np.corrcoef(radiograph.pixels.ravel(), pixels.ravel())[0, 1]
    if not abs(correlation) > 0.9:
        raise CertSegError(f"{path}: its pixels do not match the image (correlation {correlation:.2f})")
    return radiograph


def _skipped(skipped: Skipped) -> Outcome:
    return Outcome(skipped.path, skipped.reason, Status.FAILED if skipped.failed else Status.SKIPPED)


def _reasons(outcomes: list[Outcome]) -> str:
    shown = "; ".join(f"{o.path.name}: {o.message}" for o in outcomes[:5])
    return f" ({shown}{'; ...' if len(outcomes) > 5 else ''})" if outcomes else ""
