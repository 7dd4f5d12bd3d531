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
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from certseg.errors import CertSegError
from certseg.request import CertificationRequest, RunOptions
from certseg.runner import Outcome, Status, certify_selected, exit_code_of, nothing_to_certify, select_radiographs
from certseg.scale.table import TABLE_FILE, OutcomeRow, write_table

SCRATCH = ".certseg-unpacked"  # zips unpacked under OUT, for workers on other machines
RAY_MISSING = '--engine ray needs Ray: pip install "certseg[scale]"'


@dataclass(frozen=True)
class ClusterSettings:
    address: str | None = None  # None: start a local Ray on this machine; else join this cluster
    workers: int | None = None  # None: one per GPU of the cluster, else one per CPU
    max_attempts: int = 3  # an image whose worker died this often is reported failed


def require_ray():
    try:
        import ray
    except ImportError:
        raise CertSegError(RAY_MISSING) from None
    return ray


class CertifyWorker:
    """A Ray actor: loads the models once, then certifies one image per call into OUT (atomically)."""

    def __init__(self, options: RunOptions, request: CertificationRequest, out: str, overwrite: bool, threads: int):
        import torch

        from certseg.pipeline import CertificationPipeline

        torch.set_num_threads(threads)  # as many as the actor was given, not every core of the machine
        self.pipeline = CertificationPipeline.from_folder(options)
        self.request, self.out, self.overwrite = request, Path(out), overwrite
        self.identity = f"{socket.gethostname()}:{os.getpid()}"

    def certify(self, path: str) -> tuple[Outcome, float, str]:
        started = time.perf_counter()
        outcome = certify_selected(Path(path), self.out, self.pipeline, self.request, overwrite=self.overwrite,
                                   quiet=True)
        return outcome, time.perf_counter() - started, self.identity

    def pid(self) -> int:
        return os.getpid()


def certify_on_ray(inputs: list[Path], out: Path, request: CertificationRequest, options: RunOptions,
                   cluster: ClusterSettings, *, overwrite: bool = False, quiet: bool = False,
                   series: str | None = None, study: str | None = None) -> tuple[int, list[OutcomeRow]]:
    """Certify every chest radiograph under `inputs` on Ray; the exit code and one row per file (also as CSV)."""
    ray = require_ray()
    for source in inputs:
        if not source.exists():
            raise CertSegError(f"{source}: no such file or folder")
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)
    with contextlib.ExitStack() as stack:
        rows, todo = _discover(inputs, out, request, stack, overwrite, series, study)
        started_ray = _connect(ray, cluster)
        try:
            rows += _run(ray, todo, out, request, options, cluster, overwrite, quiet)
        finally:
            if started_ray:
                ray.shutdown()
            remove_stale_staging(out)
    rows.sort(key=lambda row: row.file)
    write_table(out / TABLE_FILE, rows)
    return exit_code_of([Outcome(Path(r.file), r.reason, Status(r.status)) for r in rows]), rows


def _discover(inputs, out, request, stack, overwrite, series, study) -> tuple[list[OutcomeRow], list[Path]]:
    """Rows for what is not certified here (skipped, kept) and the radiographs to submit."""
    import pydicom

    from certseg.dicom.reading import candidate_files
    from certseg.names import result_folder

    rows, todo, others = [], [], []
    (out / SCRATCH).mkdir(exist_ok=True)
    stack.callback(shutil.rmtree, out / SCRATCH, True)  # registered first: runs after the unpacked folders' own cleanup
    for source in inputs:
        files = stack.enter_context(candidate_files(source, scratch_parent=out / SCRATCH))
        selection = select_radiographs(files, request, series=series, study=study)
        others += selection.others
        for path in selection.radiographs:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            try:
                target = result_folder(out, (header.StudyInstanceUID, header.SeriesInstanceUID, header.SOPInstanceUID))
            except CertSegError as error:
                others.append(Outcome(path, f"refused: {error}", Status.FAILED))
                continue
            if (target / "report.json").is_file() and not overwrite:  # complete: resume past it
                rows.append(_row(Outcome(path, f"result kept: {target} exists (use --overwrite to replace it)",
                                         Status.KEPT, target)))
            else:
                todo.append(path)
    if not todo and not rows:
        raise nothing_to_certify(", ".join(map(str, inputs)), others)
    return rows + [_row(o) for o in others], todo


def _connect(ray, cluster: ClusterSettings) -> bool:
    """Join the cluster at `address`, or start a local Ray; True when this call started it."""
    if ray.is_initialized():
        return False
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False, "include_dashboard": False}
    if cluster.address:
        try:
            ray.init(address=cluster.address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise CertSegError(f"--ray-address {cluster.address}: cannot join the cluster ({error})") from None
    else:
        ray.init(num_cpus=os.cpu_count(), **quiet)
    return True


def _run(ray, todo: list[Path], out: Path, request, options, cluster, overwrite, quiet) -> list[OutcomeRow]:
    from tqdm import tqdm

    if not todo:
        return []
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    count = cluster.workers or gpus or max(1, int(resources.get("CPU", 1)))
    actor_options = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}
    threads = 1 if not gpus else max(1, int(resources.get("CPU", 1)) // max(gpus, 1))
    worker_class = ray.remote(**actor_options)(CertifyWorker)

    def new_worker():
        return worker_class.options(max_restarts=0).remote(options, request, str(out), overwrite, threads)

    idle = [new_worker() for _ in range(min(count, len(todo)))]
    queue = [(path, 1) for path in todo]
    running: dict = {}  # object ref -> (path, attempt, actor)
    rows: list[OutcomeRow] = []
    progress = tqdm(total=len(todo), desc="images", unit="image", disable=quiet)
    try:
        while queue or running:
            while queue and idle:
                path, attempt = queue.pop(0)
                actor = idle.pop()
                running[actor.certify.remote(str(path))] = (path, attempt, actor)
            (done,), _ = ray.wait(list(running), num_returns=1)
            path, attempt, actor = running.pop(done)
            try:
                outcome, seconds, worker = ray.get(done)
            except ray.exceptions.RayActorError:  # the worker died under this image: a fresh one does it again
                idle.append(new_worker())
                if attempt < cluster.max_attempts:
                    queue.append((path, attempt + 1))
                    continue
                outcome, seconds, worker = Outcome(path, f"its worker died {attempt} times", Status.FAILED), None, ""
            else:
                idle.append(actor)
            rows.append(_row(outcome, seconds, worker, attempt))
            progress.update(1)
            progress.set_postfix(failed=sum(r.status == Status.FAILED for r in rows), refresh=False)
    finally:
        progress.close()
        for actor in idle + [entry[2] for entry in running.values()]:
            with contextlib.suppress(Exception):
                ray.kill(actor)
    return rows


def _row(outcome: Outcome, seconds: float | None = None, worker: str = "", attempts: int = 0) -> OutcomeRow:
    row = OutcomeRow(str(outcome.path), str(outcome.status), outcome.message,
                     str(outcome.result or ""), seconds=seconds, worker=worker, attempts=attempts)
    if outcome.result is not None and (outcome.result / "report.json").is_file():
        row.add_report(outcome.result)
    return row


def remove_stale_staging(out: Path) -> list[Path]:
    """Staging folders a killed worker left (`.<name>.*.partial`, certseg.files.atomic_directory); removed."""
    stale = [p for p in out.rglob(".*.partial") if p.is_dir()] if out.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale
