"""`certseg certify --engine ray`: the same inputs, outputs, exit codes and reports as `certify`, on a Ray cluster.

Ray Core actors rather than Ray Data: the work is a list of files whose results each worker writes itself
(certify's atomic result folders), the driver only lists inputs and collects small outcome records, and a
worker that dies must have exactly its current image done again elsewhere.  An actor per worker loads the
models once (one per GPU where the cluster has GPUs, one per CPU elsewhere); the driver keeps each actor
busy with one image at a time, so a dead actor loses at most that image, which goes to a fresh actor.

- Discovery is one step on the driver (headers only); an image whose complete result exists is `kept` and
  never submitted, so a rerun resumes.  Zips are unpacked under OUT (workers elsewhere must see them).
- Nothing is certified twice in a run: each image is submitted once, and again only when its worker died;
  a result that exists by then (the worker died after writing it) is `kept`, not recomputed.
- A killed worker leaves at most a hidden `.<name>.*.partial` staging folder, never a result folder; the
  driver removes those when the run starts and ends (no worker of the run is alive then).
- Noise: every image's noise seed is derived from the run seed and its SOP Instance UID on whichever worker
  certifies it, so `--seed` reproduces each certificate whatever the number of workers, and without a seed
  each image gets fresh OS entropy as in one process.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
from dataclasses import dataclass
from pathlib import Path

from certseg.errors import CertSegError
from certseg.request import CertificationRequest, RunOptions
from certseg.files import REPORT_FILE
from certseg.runner import Outcome, certify_selected, discovered, exit_code_of, kept_or_refused, nothing_to_certify
from certseg.scale.pool import ClusterSettings, TaskResult, connected, map_on_ray, require_ray
from certseg.scale.table import TABLE_FILE, OutcomeRow, write_table
from certseg.status import Status

SCRATCH = ".certseg-unpacked"  # zips unpacked under OUT, for workers on other machines


@dataclass(frozen=True)
class CertifyState:
    """What each worker builds once: the pipeline (models loaded) and where and how to certify."""

    pipeline: object
    request: CertificationRequest
    out: Path
    overwrite: bool


def certify_state(options: RunOptions, request: CertificationRequest, out: str, overwrite: bool) -> CertifyState:
    from certseg.pipeline import CertificationPipeline

    return CertifyState(CertificationPipeline.from_folder(options), request, Path(out), overwrite)


def certify_one(state: CertifyState, path: str) -> Outcome:
    return certify_selected(Path(path), state.out, state.pipeline, state.request, overwrite=state.overwrite, quiet=True)


def certify_on_ray(inputs: list[Path], out: Path, request: CertificationRequest, options: RunOptions,
                   cluster: ClusterSettings, *, overwrite: bool = False, quiet: bool = False,
                   series: str | None = None, study: str | None = None) -> tuple[int, list[OutcomeRow]]:
    """Certify every chest radiograph under `inputs` on Ray; the exit code and one row per file (also as CSV)."""
    require_ray()
    for source in inputs:
        if not source.exists():
            raise CertSegError(f"{source}: no such file or folder")
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)
    with contextlib.ExitStack() as stack:
        rows, todo = _discover(inputs, out, request, stack, overwrite, series, study)
        try:
            with connected(cluster) as ray:
                rows += _run(ray, todo, out, request, options, cluster, overwrite, quiet)
        finally:
            remove_stale_staging(out)
    rows.sort(key=lambda row: row.file)
    write_table(out / TABLE_FILE, rows)
    return exit_code_of([Outcome(Path(r.file), r.reason, Status(r.status)) for r in rows]), rows


def _kept_or_refused(path: Path, target: Path, request) -> Outcome:
    from certseg.dicom.reading import Skipped, read_radiograph

    radiograph = read_radiograph(path, request.force)
    if isinstance(radiograph, Skipped):
        return Outcome(path, radiograph.reason, Status.FAILED if radiograph.failed else Status.SKIPPED)
    return kept_or_refused(path, target, radiograph)


def _discover(inputs, out, request, stack, overwrite, series, study) -> tuple[list[OutcomeRow], list[Path]]:
    """Rows for what is not certified here (skipped, kept) and the radiographs to submit."""
    from certseg.names import result_folder

    rows, todo = [], []
    (out / SCRATCH).mkdir(exist_ok=True)
    stack.callback(shutil.rmtree, out / SCRATCH, True)  # registered first: runs after the unpacked folders' own cleanup
    selection = stack.enter_context(discovered(inputs, request, series=series, study=study,
                                               scratch_parent=out / SCRATCH))
    others = list(selection.others)
    for path in selection.radiographs:
        try:
            target = result_folder(out, selection.uids[path])  # discovery read the header once
        except CertSegError as error:
            others.append(Outcome(path, f"refused: {error}", Status.FAILED))
            continue
        if (target / REPORT_FILE).is_file() and not overwrite:  # complete: resume past it, if it certified these pixels
            rows.append(_row(_kept_or_refused(path, target, request)))
        else:
            todo.append(path)
    if not todo and not rows:
        raise nothing_to_certify(", ".join(map(str, inputs)), others)
    return rows + [_row(o) for o in others], todo


def _run(ray, todo: list[Path], out: Path, request, options, cluster, overwrite, quiet) -> list[OutcomeRow]:
    from tqdm import tqdm

    progress = tqdm(total=len(todo), desc="images", unit="image", disable=quiet)
    failed = 0

    def show(_: int, result: TaskResult) -> None:
        nonlocal failed
        failed += result.value is None or result.value.status == Status.FAILED
        progress.update(1)
        progress.set_postfix(failed=failed, refresh=False)

    make_state = functools.partial(certify_state, options, request, str(out), overwrite)
    with contextlib.closing(progress):
        results = map_on_ray(ray, make_state, certify_one, [str(p) for p in todo], cluster, on_result=show)
    rows = []
    for path, result in zip(todo, results):
        outcome = result.value or Outcome(path, f"its worker died {result.attempts} times", Status.FAILED)
        rows.append(_row(outcome, result.seconds, result.worker, result.attempts))
    return rows


def _row(outcome: Outcome, seconds: float | None = None, worker: str = "", attempts: int = 0) -> OutcomeRow:
    row = OutcomeRow(str(outcome.path), str(outcome.status), outcome.message,
                     str(outcome.result or ""), seconds=seconds, worker=worker, attempts=attempts)
    if outcome.result is not None and (outcome.result / REPORT_FILE).is_file():
        row.add_report(outcome.result)
    return row


def remove_stale_staging(out: Path) -> list[Path]:
    """Staging folders a killed worker left (`.<name>.*.partial`, certseg.files.atomic_directory); removed."""
    stale = [p for p in out.rglob(".*.partial") if p.is_dir()] if out.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale
