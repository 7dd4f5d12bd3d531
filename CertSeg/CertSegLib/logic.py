"""CertSeg's logic without its panel: certify volume nodes from Slicer's Python console, a script or a test.

    from CertSegLib.logic import CertificationLogic
    from certseg.request import CertificationRequest, RunOptions

    logic = CertificationLogic()
    run = logic.process(volume, CertificationRequest(n0=10, n=100), RunOptions(device="cpu"))
    outcome = run.wait()          # or wait=False and an onFinished callback, the GUI staying live
    outcome.report.radius, outcome.segmentation

    batch = logic.processBatch(volumes, request, options)   # one after another; a refusal does not stop it

The backend runs as its own process (`certseg certify-array`, CertSegLib.process); its result is loaded
as a segmentation and a radius map tied to the volume (CertSegLib.mrml).  A run reports through
callbacks: `onProgress(Progress)`, `onLog(line)`, `onFinished(RunOutcome)`; `cancel()` ends its whole
process tree and leaves nothing behind.  Nothing here needs Qt unless `wait=False` is asked for (then a
Qt timer polls the run from the GUI thread); the module's widget and its DICOM plugin use this logic and
nothing else, and the tests run it on Slicer's MRML from slicer-core.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

import slicer
import slicer.util

from certseg.files import PIXEL_RADIUS_FILE, REPORT_FILE, SEG_NRRD_FILE
from certseg.record import Report
from certseg.report import batch_detail
from certseg.request import CertificationRequest, RunOptions
from CertSegLib import mrml
from CertSegLib.backend_call import backend_command, dicom_file_or_none, ood_refusal
from CertSegLib.batch import BatchItem, BatchQueue, ItemStatus, kept_result_folder
from CertSegLib.process import BackendProcess, Progress

OVERRIDE_SUFFIX = " (OOD override)"
POLL_INTERVAL_S = 0.1


@dataclass(frozen=True)
class RunOutcome:
    """How one run ended.  `question`: the backend refused the image as unlike a chest radiograph, and this
    asks whether to certify it anyway (the panel asks it; a script may rerun with `force=True`)."""

    status: ItemStatus  # CERTIFIED, REFUSED, FAILED or CANCELLED
    report: Optional[Report] = None
    error: Optional[str] = None
    exitCode: Optional[int] = None
    question: Optional[str] = None
    segmentation: Any = None  # vtkMRMLSegmentationNode, when certified
    radiusMap: Any = None  # vtkMRMLScalarVolumeNode, when certified
    resultFolder: Optional[Path] = None  # the result files, when kept


@dataclass(frozen=True)
class Placement:
    """Where a run's results go: the segmentation node to fill (None: a new one) and the folder that keeps the
    result files (None: a temporary folder, removed when the run ends)."""

    output: Any = None
    resultRoot: Optional[Path] = None


Callback = Optional[Callable[..., None]]


class CertificationRun:
    """One backend process certifying one volume; poll() it (or wait()) until `outcome` is set."""

    def __init__(self, logic: CertificationLogic, volume, placement: Placement, request: CertificationRequest,
                 options: RunOptions, onProgress: Callback = None, onLog: Callback = None, onFinished: Callback = None):
        self.volume, self.placement, self.request = volume, placement, request
        self.onProgress, self.onLog, self.onFinished = onProgress, onLog, onFinished
        self.outcome: Optional[RunOutcome] = None
        self._logic, self._lines = logic, []
        self._workDir = Path(tempfile.mkdtemp(prefix="CertSeg-"))
        try:
            image = self._workDir / "input.nrrd"
            mrml.write_volume(volume, image)
            self._out = self._resultFolder(volume, placement)
            args = backend_command(logic.python(), image, self._out, request, options, logic.sourceDicomFile(volume))
            logging.info("CertSeg: %s", " ".join(args))
            self._backend = BackendProcess(args, logic.backendEnvironment(options))
            self._backend.start()
        except BaseException:
            self._cleanup()
            raise

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    @property
    def workDir(self) -> Path:
        """The run's temporary folder (input NRRD, and the result unless kept): gone once the run has ended."""
        return self._workDir

    @property
    def backendEnded(self) -> bool:
        """The backend process has exited and been reaped (after cancel(): its whole process group)."""
        return self._backend.finished

    def poll(self) -> bool:
        """Pass on what the backend said; once it has ended, load its result and call onFinished. True: ended."""
        if self.outcome is not None:
            return True
        for event in self._backend.poll():
            if isinstance(event, Progress):
                self.onProgress and self.onProgress(event)
            else:
                self._lines.append(event)
                self.onLog and self.onLog(event)
        if not self._backend.finished:
            return False
        self._complete()
        return True

    def wait(self, timeout: Optional[float] = None) -> RunOutcome:
        """Poll until the run ends (cancelled after `timeout` seconds); its outcome."""
        _pollUntilEnded(self, timeout)
        return self.outcome

    def cancel(self) -> None:
        """End the backend's whole process tree; the run ends CANCELLED with nothing left behind."""
        if self.outcome is not None:
            return
        self._backend.cancel()
        self._finish(RunOutcome(ItemStatus.CANCELLED, exitCode=self._backend.returncode))

    def _complete(self) -> None:
        code = self._backend.returncode
        if self._backend.cancelled:
            outcome = RunOutcome(ItemStatus.CANCELLED, exitCode=code)
        elif code != 0:
            error = (self._lines[-1] if self._lines else "CertSeg failed") + f" (exit code {code})"
            question = ood_refusal(error, code)
            outcome = RunOutcome(ItemStatus.REFUSED if question else ItemStatus.FAILED, error=error, exitCode=code,
                                 question=question)
        else:
            try:
                outcome = self._loaded(code)
            except Exception as exception:  # a result that cannot be loaded is reported, never left hanging
                outcome = RunOutcome(ItemStatus.FAILED, error=f"Could not load the CertSeg result: {exception}",
                                     exitCode=code)
        self._finish(outcome)

    def _loaded(self, code: int) -> RunOutcome:
        report = Report.read(self._out / REPORT_FILE)
        scene, name = self._logic.scene, self.volume.GetName()
        segmentation = mrml.load_result(scene, self._out / SEG_NRRD_FILE, self.volume, self.placement.output, report,
                                        f"{name} CertSeg")
        if segmentation.GetAttribute(mrml.FORCED_ATTRIBUTE) and not segmentation.GetName().endswith(OVERRIDE_SUFFIX):
            segmentation.SetName(segmentation.GetName() + OVERRIDE_SUFFIX)
        radiusMap = mrml.load_radius_map(scene, self._out / PIXEL_RADIUS_FILE, self.volume, f"{name} CertSeg radius")
        kept = self._out if self.placement.resultRoot is not None else None
        outcome = RunOutcome(ItemStatus.CERTIFIED, report=report, exitCode=code, segmentation=segmentation,
                             radiusMap=radiusMap, resultFolder=kept)
        self._logic.presentResult(outcome, self.volume, self._out)
        return outcome

    def _finish(self, outcome: RunOutcome) -> None:
        self._cleanup()
        self.outcome = outcome
        if self.onFinished:
            self.onFinished(outcome)

    def _resultFolder(self, volume, placement: Placement) -> Path:
        """A new folder under the result root when results are kept, else one in the temporary folder.  The
        backend writes it atomically, so a failed or cancelled run leaves nothing there."""
        if placement.resultRoot is None:
            return self._workDir / "result"
        root = Path(placement.resultRoot)
        if not root.is_absolute():  # an emptied path edit reads as Path("."): never the working folder
            raise ValueError("Choose a result folder (or do not keep result files).")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RuntimeError(f"Cannot create the result folder {root}: {error.strerror}") from None
        return kept_result_folder(root, volume.GetName(), datetime.now())

    def _cleanup(self) -> None:
        shutil.rmtree(self._workDir, ignore_errors=True)


class BatchRun:
    """Volumes certified one after another; a refusal or failure never stops the rest, cancel() drops them."""

    def __init__(self, volumes: list, start: Callable[[BatchItem, Callable], CertificationRun],
                 onItemFinished: Callback = None, onFinished: Callback = None):
        self.queue = BatchQueue()
        for volume in volumes:
            self.queue.add(volume, volume.GetName())
        self.run: Optional[CertificationRun] = None
        self.outcomes: dict[int, RunOutcome] = {}  # by the item's position in the queue
        self._start, self.onItemFinished, self.onFinished = start, onItemFinished, onFinished

    @property
    def items(self) -> list[BatchItem]:
        return self.queue.items

    @property
    def finished(self) -> bool:
        return self.queue.done and (self.run is None or self.run.finished)

    def startNext(self) -> None:
        item = self.queue.start_next()
        if item is None:
            self.onFinished and self.onFinished(self)
            return
        try:
            self.run = self._start(item, self._itemFinished)
        except Exception as error:  # what keeps one from starting stops the rest
            self.queue.finish(ItemStatus.FAILED, str(error))
            self.queue.cancel()
            self.onFinished and self.onFinished(self)
            raise

    def _itemFinished(self, outcome: RunOutcome) -> None:
        item = self.queue.current
        if item is None:  # cancelled meanwhile
            return
        detail = batch_detail(outcome.report) if outcome.report is not None else (outcome.error or "")
        self.queue.finish(outcome.status, detail)
        self.outcomes[self.items.index(item)] = outcome
        self.onItemFinished and self.onItemFinished(item, outcome)
        self.startNext()

    def poll(self) -> bool:
        if self.run is not None:
            self.run.poll()
        return self.finished

    def wait(self, timeout: Optional[float] = None) -> BatchRun:
        """Poll until every volume has ended (the rest cancelled after `timeout` seconds)."""
        _pollUntilEnded(self, timeout)
        return self

    def cancel(self) -> None:
        self.queue.cancel()
        if self.run is not None:
            self.run.cancel()

    def summary(self) -> str:
        return self.queue.summary()


class CertificationLogic:
    """Certifies volume nodes of a scene (default: Slicer's scene) through the backend process."""

    def __init__(self, scene=None):
        self._scene = scene
        self.current: Optional[CertificationRun | BatchRun] = None
        self._timer = None

    @property
    def scene(self):
        return self._scene if self._scene is not None else slicer.mrmlScene

    @property
    def isRunning(self) -> bool:
        return self.current is not None and not self.current.finished

    def process(self, volume, request: CertificationRequest = CertificationRequest(),
                options: RunOptions = RunOptions(), placement: Placement = Placement(), *, wait: bool = True,
                onProgress: Callback = None, onLog: Callback = None, onFinished: Callback = None) -> CertificationRun:
        """Certify one volume.  wait=True returns the ended run (its `outcome`); wait=False returns at once
        and the callbacks report, polled by a Qt timer in Slicer (its GUI stays live) or by the caller's
        run.poll() where there is no Qt."""
        self._refuseWhileRunning()
        self._checkInput(volume, options)
        run = CertificationRun(self, volume, placement, request, options, onProgress, onLog, onFinished)
        self.current = run
        return self._drive(run, wait)

    def processBatch(self, volumes: list, request: CertificationRequest = CertificationRequest(),
                     options: RunOptions = RunOptions(), resultRoot: Optional[Path] = None, *, wait: bool = True,
                     outputs: Optional[dict] = None, onStarted: Callback = None, onItemStarted: Callback = None,
                     onProgress: Callback = None, onLog: Callback = None, onItemFinished: Callback = None,
                     onFinished: Callback = None) -> BatchRun:
        """Certify volumes one after another; each result goes to `outputs[volume ID]` when given, else to a new
        segmentation.  `onStarted(batch)`, then per volume `onItemStarted(item)`, progress and log lines and
        `onItemFinished(item, outcome)`; `onFinished(batch)` at the end."""
        self._refuseWhileRunning()
        for volume in volumes:
            self._checkInput(volume, options)
        outputs = outputs or {}

        def start(item, finished):
            onItemStarted and onItemStarted(item)
            placement = Placement(outputs.get(item.node.GetID()), resultRoot)
            return CertificationRun(self, item.node, placement, request, options, onProgress, onLog, finished)

        batch = BatchRun(volumes, start, onItemFinished, onFinished)
        self.current = batch
        onStarted and onStarted(batch)
        batch.startNext()
        return self._drive(batch, wait)

    def cancel(self) -> None:
        """Cancel what runs (a batch: the rest too); its process tree ends, its temporary files go."""
        if self.current is not None:
            self.current.cancel()
        self._stopTimer()

    # What a subclass (the module's logic inside Slicer's application) may add.
    def presentResult(self, outcome: RunOutcome, volume, resultFolder: Path) -> None:
        """Called with each certified result while its files are still there; nothing to add headless."""

    @staticmethod
    def python() -> str:
        return shutil.which("PythonSlicer") or sys.executable

    @staticmethod
    def backendEnvironment(options: RunOptions) -> dict[str, str]:
        """Slicer's startup environment (the launcher's paths left out) with this module's folder on PYTHONPATH."""
        app = getattr(slicer, "app", None)
        env = slicer.util.startupEnvironment() if app is not None else dict(os.environ)
        module = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [module, env.get("PYTHONPATH", "")]))
        if options.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = "-1"
        return env

    @staticmethod
    def sourceDicomFile(volume) -> Optional[Path]:
        """The DICOM file a volume was loaded from: its metadata gate, photometry and spacing are authoritative.

        Loaded through the DICOM module: the database's file for its instance.  Loaded as a file (Add Data on
        a .dcm): its storage node's file, when that is DICOM.  Otherwise None: the report says nothing was
        checked."""
        storage = volume.GetStorageNode()
        return (mrml.database_file(volume, getattr(slicer, "dicomDatabase", None))
                or dicom_file_or_none(storage.GetFileName() if storage else None))

    def _checkInput(self, volume, options: RunOptions) -> None:
        problem = "Select an input volume" if volume is None else mrml.node_input_problem(volume)
        if problem:
            raise ValueError(problem)
        if options.device == "cuda" and not _cudaAvailable():
            raise ValueError("No CUDA GPU is available to this Slicer; choose 'cpu' or 'auto'.")

    def _refuseWhileRunning(self) -> None:
        if self.isRunning:
            raise RuntimeError("CertSeg is already certifying; cancel it or wait for it to end.")

    def _drive(self, run, wait: bool):
        if wait:
            run.wait()
            return run
        try:
            import qt  # inside Slicer's application its event loop calls the timer
        except ImportError:  # headless (a script, a kernel, the tests): the caller polls the run
            return run

        self._timer = qt.QTimer()
        self._timer.setInterval(int(2 * POLL_INTERVAL_S * 1000))
        self._timer.connect("timeout()", lambda: run.poll() and self._stopTimer())
        self._timer.start()
        return run

    def _stopTimer(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None


def _pollUntilEnded(run, timeout: Optional[float]) -> None:
    """Poll a run or a batch until it has ended; past `timeout` seconds, cancel it."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not run.poll():
        if deadline is not None and time.monotonic() > deadline:
            run.cancel()
            return
        time.sleep(POLL_INTERVAL_S)


def _cudaAvailable() -> bool:
    import torch

    return torch.cuda.is_available()


def forced(request: CertificationRequest) -> CertificationRequest:
    """The same request with the input check overridden (recorded in the report and the segmentation's name)."""
    return replace(request, force=True)
