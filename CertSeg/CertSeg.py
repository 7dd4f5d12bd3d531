"""CertSeg: certified chest X-ray segmentation in 3D Slicer.

A thin GUI over the `certseg` backend (in this module's folder): the input volume is
written to a temporary NRRD, `certseg certify-array` runs in a background process,
and its `.seg.nrrd` is loaded as a segmentation with one segment per certified
structure and an "Abstained" segment.  Requires Slicer 5.12 or later (pydicom 3, highdicom
and slicer.packaging; see CertSegLib/dependencies.py).  Calls into Slicer were checked against
5.10's and 5.12's sources.
"""

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# The backend's own light modules (no torch): defaults and the report's text are defined there once.
from certseg.files import PIXEL_RADIUS_FILE, REPORT_FILE, SEG_FILE, SEG_NRRD_FILE
from certseg.record import Report
from certseg.report import batch_detail, panel_summary
from certseg.request import CertificationRequest, RunOptions
from CertSegLib import mrml
from CertSegLib.batch import BatchQueue, ItemStatus, kept_result_folder
from CertSegLib.dependencies import installed_version, protected_constraints
from CertSegLib.process import BackendProcess, Progress
from CertSegLib.backend_call import (
    SELF_TEST_OPTIONS,
    SELF_TEST_REQUEST,
    backend_command,
    dicom_file_or_none,
    ood_refusal,
    progress_text,
)

DEFAULTS, DEFAULT_OPTIONS = CertificationRequest(), RunOptions()

MODULE_DIR = Path(__file__).resolve().parent
SAMPLE_CR = MODULE_DIR / "Resources" / "SampleData" / "sample_cr.dcm"
# What Slicer does not ship; torch comes from the PyTorch extension, never from here.
REQUIREMENTS = MODULE_DIR / "Resources" / "requirements.txt"


class CertSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("CertSeg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["CertSeg team"]
        self.parent.helpText = _(
            "Certified segmentation of chest X-rays: every pixel is either certified (no L2 perturbation of the "
            "image below the stated radius can change its label) or abstained. Demonstration and research only; "
            "not for clinical use."
        )
        self.parent.acknowledgementText = _(
            "Randomized smoothing for segmentation (Fischer et al. 2021) with diffusion denoised smoothing "
            "(Carlini et al. 2023), after Laousy et al. (MICCAI 2023)."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """The shipped sample CR in the Sample Data module (a local file: urllib reads file:// URIs)."""
    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="CertSeg", sampleName="CertSegSampleCR", uris=SAMPLE_CR.as_uri(), fileNames=SAMPLE_CR.name,
        nodeNames="CertSegSampleCR", thumbnailFileName=str(MODULE_DIR / "Resources" / "Icons" / "CertSeg.png"))


@parameterNodeWrapper
class CertSegParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    sigma: Annotated[float, WithinRange(0.01, 2.0)] = DEFAULTS.sigma
    n0: Annotated[int, WithinRange(1, 10000)] = DEFAULTS.n0
    n: Annotated[int, WithinRange(1, 100000)] = DEFAULTS.n
    alpha: Annotated[float, WithinRange(1e-6, 0.5)] = DEFAULTS.alpha  # the spin box shows 6 decimals
    tau: Annotated[float, WithinRange(0.51, 0.9999)] = DEFAULTS.tau
    useDenoiser: bool = DEFAULT_OPTIONS.use_denoiser
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = DEFAULT_OPTIONS.device
    modelFolder: str = ""
    wholeStudy: bool = False
    keepResults: bool = False
    resultFolder: Path = Path(slicer.app.defaultScenePath) / "CertSeg"  # as Screen Capture's default folder


class CertSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._started = 0.0
        self._queue = BatchQueue()

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CertSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CertSegLogic()
        self.ui.progressBar.hide()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.openResultFolderButton.connect("clicked(bool)", self.onOpenResultFolder)
        self.initializeParameterNode()

    def onReload(self):
        """Reload CertSegLib and the backend's modules too (CertSegLib.reload), then the module itself."""
        from CertSegLib.reload import forget_own_modules

        forget_own_modules()
        super().onReload()

    def cleanup(self):
        self.logic.cancel()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateApplyButton)

    def onSceneStartClose(self, caller, event):
        if self.logic.isRunning:  # its nodes are about to go
            self.logic.cancel()
        self._queue.cancel()
        self._queue.clear_finished()
        self._finish()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, inputParameterNode: Optional[CertSegParameterNode]):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateApplyButton)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets carrying the "SlicerParameterName" property in the .ui are bound here.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateApplyButton)
        self._updateApplyButton()

    def _updateApplyButton(self, caller=None, event=None):
        running = self.logic.isRunning
        self.ui.inputsCollapsibleButton.enabled = not running  # a run's nodes and parameters are fixed
        self.ui.certificationCollapsibleButton.enabled = not running
        if running:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.text = _("Apply")
        problem = inputProblem(self._parameterNode.inputVolume if self._parameterNode else None)
        self.ui.applyButton.enabled = not problem
        self.ui.applyButton.toolTip = problem or _("Certify the input radiograph")
        self.ui.openResultFolderButton.enabled = self.logic.lastResultFolder is not None

    def onApplyButton(self):
        if self.logic.isRunning:
            self.logic.cancel()
            self._queue.cancel()
            self._log(_("Cancelled."))
            self._finish()
            return
        volume = self._parameterNode.inputVolume
        self.certifyVolumes(self.logic.studyRadiographs(volume) if self._parameterNode.wholeStudy else [volume])

    def certifyVolumes(self, volumes):
        """Queue radiographs to certify one after another (the DICOM plugin's loadables come here too)."""
        self._queue.clear_finished()
        for volume in volumes:
            self._queue.add(volume, volume.GetName())
        if not self.logic.isRunning:
            self.ui.logText.clear()
            self.ui.summaryText.clear()
            self._startNext()

    def onOpenResultFolder(self):
        folder = self.logic.lastResultFolder
        if folder is not None:  # as ScriptedLoadableModule opens files (Slicer 5.10)
            qt.QDesktopServices.openUrl(qt.QUrl("file:///" + str(folder), qt.QUrl.TolerantMode))

    @property
    def _batch(self) -> bool:
        return len(self._queue.items) > 1

    def _startNext(self):
        item = self._queue.start_next()
        if item is None:
            if self._batch:
                self.ui.summaryText.setPlainText(self._queue.summary())
            self._finish()
            return
        self._start(item, force=False)

    def _start(self, item, force: bool):
        if self._batch:
            self._log(_("Certifying {name}").format(name=item.name))
        try:
            with slicer.util.tryWithErrorDisplay(_("CertSeg could not start."), waitCursor=True):
                self.logic.ensureDependencies()
                self.ui.progressBar.value = 0
                self.ui.progressBar.format = progress_text(0.0, 0.0)
                self.ui.progressBar.show()
                self._started = time.monotonic()
                self.logic.process(self._parameterNode, wait=False, onProgress=self._onProgress, onLog=self._log,
                                   onFinished=self._onFinished, force=force, volume=item.node)
        except Exception as error:  # tryWithErrorDisplay showed it; what keeps one from starting stops the rest
            self._queue.finish(ItemStatus.FAILED, str(error))
            self._queue.cancel()
            if self._batch:
                self.ui.summaryText.setPlainText(self._queue.summary())
            self._finish()
        self._updateApplyButton()

    def _onProgress(self, progress: Progress):
        item = self._queue.current
        if item is None:  # cancelled meanwhile
            return
        prefix = f"{item.name} ({self._queue.items.index(item) + 1}/{len(self._queue.items)}): " if self._batch else ""
        self.ui.progressBar.value = int(100 * progress.fraction)
        self.ui.progressBar.format = prefix + progress_text(progress.fraction, time.monotonic() - self._started)

    def _log(self, text: str):
        self.ui.logText.appendPlainText(text)

    def _onFinished(self, report: Optional[Report], error: Optional[str]):
        """One run ended: alone, show its result or ask about a refusal; in a batch, record it and go on."""
        item = self._queue.current
        if item is None:  # cancelled meanwhile
            return
        question = ood_refusal(error, self.logic.lastExitCode) if error else None
        if question and not self._batch and slicer.util.confirmYesNoDisplay(question, windowTitle="CertSeg"):
            self._start(item, force=True)
            return
        if report is not None:
            self._queue.finish(ItemStatus.CERTIFIED, batch_detail(report))
            if not self._batch:
                self.ui.summaryText.setPlainText(panel_summary(report))
        elif error:
            self._queue.finish(ItemStatus.REFUSED if question else ItemStatus.FAILED, error)
            if self._batch:
                self._log(item.line())
            else:
                slicer.util.errorDisplay(error)
        else:
            self._queue.finish(ItemStatus.CANCELLED)
        self._startNext()

    def _finish(self):
        self.ui.progressBar.hide()
        self._updateApplyButton()


def inputProblem(volume) -> Optional[str]:
    """Why `volume` cannot be certified (None: it can): CertSeg takes one grayscale radiograph (CertSegLib.mrml)."""
    if volume is None:
        return _("Select an input volume")
    return mrml.node_input_problem(volume)


class CertSegLogic(ScriptedLoadableModuleLogic):
    """Runs the backend for a volume node and loads its result; usable from scripts and tests."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._backend: Optional[BackendProcess] = None
        self._timer: Optional[qt.QTimer] = None
        self._workDir: Optional[str] = None
        self.lastResultFolder: Optional[Path] = None  # the last run's kept result files
        self.lastExitCode: Optional[int] = None  # the backend's last exit code (3: refused as out of distribution)

    def getParameterNode(self):
        return CertSegParameterNode(super().getParameterNode())

    @property
    def isRunning(self) -> bool:
        return self._backend is not None and not self._backend.finished

    def ensureDependencies(self):
        """torch from the PyTorch extension, the rest from requirements.txt, after one confirmation."""
        try:
            import torch  # noqa: F401
        except ImportError:
            try:
                import PyTorchUtils
            except ImportError:
                raise RuntimeError(_("CertSeg needs the PyTorch extension: install \"PyTorch\" from the Extensions "
                                     "Manager and restart Slicer.")) from None
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True) is None:
                raise RuntimeError(_("CertSeg needs PyTorch; install it with the PyTorch extension."))
        try:  # Slicer >= 5.12; slicer/__init__.py does not import it, so hasattr() alone would miss it
            import slicer.packaging as slicer_packaging
        except ImportError:
            raise RuntimeError(_("CertSeg needs Slicer {version} or later (it ships pydicom 3 and highdicom, which "
                                 "the backend needs).").format(version="5.12")) from None
        # Pinned: pip refuses to replace anything Slicer or the PyTorch extension ships (CertSegLib.dependencies).
        constraints = Path(tempfile.mkdtemp(prefix="CertSeg-pip-")) / "constraints.txt"
        constraints.write_text(protected_constraints(installed_version))
        try:
            slicer_packaging.pip_ensure(slicer_packaging.load_requirements(REQUIREMENTS), constraints=constraints,
                                        requester="CertSeg")
        finally:
            shutil.rmtree(constraints.parent, ignore_errors=True)

    @staticmethod
    def _missingRequirements():
        from importlib.metadata import PackageNotFoundError, version

        from packaging.requirements import Requirement

        missing = []
        for line in REQUIREMENTS.read_text().splitlines():
            line = line.split("#")[0].strip()
            if not line:
                continue
            requirement = Requirement(line)
            try:
                if version(requirement.name) not in requirement.specifier:
                    missing.append(line)
            except PackageNotFoundError:
                missing.append(line)
        return missing

    def process(self, parameters: CertSegParameterNode, wait: bool = True, onProgress=None, onLog=None,
                onFinished=None, force: bool = False, volume=None):
        """Certify `volume` (default parameters.inputVolume); with wait=False return at once and report through
        the callbacks. The input volume's result goes to parameters.outputSegmentation, any other volume's (a
        batch's) to a new segmentation.

        The input and output nodes are captured now: the result goes where the run was asked to put it,
        whatever the selectors show when it ends."""
        volume = volume if volume is not None else parameters.inputVolume
        output = parameters.outputSegmentation if volume is parameters.inputVolume else None
        problem = inputProblem(volume)
        if problem:
            raise ValueError(problem)
        if parameters.device == "cuda" and not self._cudaAvailable():
            raise ValueError(_("No CUDA GPU is available to this Slicer; choose 'cpu' or 'auto'."))
        # Built (and so validated) before anything is written: a bad parameter leaves no temporary folder behind.
        request = CertificationRequest(sigma=parameters.sigma, n0=parameters.n0, n=parameters.n, alpha=parameters.alpha,
                                       tau=parameters.tau, force=force)
        options = RunOptions(model_dir=Path(parameters.modelFolder) if parameters.modelFolder else None,
                             use_denoiser=parameters.useDenoiser, device=parameters.device)
        self._workDir = tempfile.mkdtemp(prefix="CertSeg-")
        image = Path(self._workDir) / "input.nrrd"
        # exportNode leaves the volume's own storage node alone (saveNode would repoint it at our temp file).
        # Our own properties dict: its default {} is shared and it writes "fileFormat" into it (util.py, 5.10).
        if not slicer.util.exportNode(volume, str(image), properties={}):
            raise RuntimeError(_("Could not write the input volume to a temporary file"))
        out = self._resultFolder(parameters, volume)
        args = backend_command(self._python(), image, out, request, options, self._sourceDicomFile(volume))
        env = slicer.util.startupEnvironment()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(MODULE_DIR), env.get("PYTHONPATH", "")]))
        if parameters.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = "-1"
        logging.info("CertSeg: %s", " ".join(args))
        self._backend = BackendProcess(args, env)
        self._backend.start()
        lines = []

        def drain():
            for event in self._backend.poll():
                if isinstance(event, Progress):
                    if onProgress:
                        onProgress(event)
                else:
                    lines.append(event)
                    if onLog:
                        onLog(event)

        def complete():
            drain()
            code = self.lastExitCode = self._backend.returncode
            report, error = None, None
            try:
                if code == 0:
                    report = Report.read(out / REPORT_FILE)
                    segmentation = self._loadResult(out / SEG_NRRD_FILE, volume, output, report)
                    self._loadRadiusMap(out / PIXEL_RADIUS_FILE, volume)
                    self._statisticsTable(segmentation, volume)
                    self._keepDicomSeg(out / SEG_FILE)
                    self.lastResultFolder = out if parameters.keepResults else self.lastResultFolder
                    if output is None and parameters.inputVolume is volume:
                        parameters.outputSegmentation = segmentation
                elif not self._backend.cancelled:
                    error = (lines[-1] if lines else _("CertSeg failed")) + f" (exit code {code})"
            except Exception as exception:  # a result that cannot be loaded is reported, never left hanging
                report, error = None, _("Could not load the CertSeg result: ") + str(exception)
            finally:
                self._cleanup()
            if onFinished:
                onFinished(report, error)
            return report, error

        if wait:
            while not self._backend.finished:
                drain()
                qt.QThread.msleep(100)
            report, error = complete()
            if error:
                raise RuntimeError(error)
            return report

        self._timer = qt.QTimer()
        self._timer.setInterval(200)

        def tick():
            drain()
            if self._backend.finished:
                self._timer.stop()
                complete()

        self._timer.connect("timeout()", tick)
        self._timer.start()
        return None

    def _resultFolder(self, parameters: CertSegParameterNode, volume) -> Path:
        """Where the backend writes: a new folder under the result folder when results are kept, else temporary.
        The backend writes it atomically, so a failed or cancelled run leaves nothing there."""
        if not parameters.keepResults:
            return Path(self._workDir) / "result"
        root = Path(parameters.resultFolder)
        if not root.is_absolute():  # an emptied path edit reads as Path("."): never Slicer's working folder
            raise ValueError(_("Choose a result folder (or clear 'Keep result files')."))
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RuntimeError(_("Cannot create the result folder {folder}: {reason}").format(
                folder=root, reason=error.strerror)) from None
        return kept_result_folder(root, volume.GetName(), datetime.now())

    @staticmethod
    def studyRadiographs(volume) -> list:
        """Every radiograph CertSeg can certify in `volume`'s study; only `volume` when it is in no study."""
        return mrml.study_radiographs(slicer.mrmlScene, volume)

    def cancel(self):
        """Kill the backend's whole process tree and remove its temporary files."""
        if self._backend is not None:
            self._backend.cancel()
        if self._timer is not None:
            self._timer.stop()
        self._cleanup()

    def _cleanup(self):
        if self._workDir:
            shutil.rmtree(self._workDir, ignore_errors=True)
            self._workDir = None

    @staticmethod
    def _python() -> str:
        return shutil.which("PythonSlicer") or sys.executable

    @staticmethod
    def _cudaAvailable() -> bool:
        import torch

        return torch.cuda.is_available()

    @staticmethod
    def _sourceDicomFile(volume) -> Optional[Path]:
        """The DICOM file a volume was loaded from: its metadata gate, photometry and spacing are authoritative.

        Loaded through the DICOM module: the database's file for its instance. Loaded as a file (Add Data on a
        .dcm): its storage node's file, when that is DICOM. Otherwise None, and the report says nothing was checked."""
        storage = volume.GetStorageNode()
        return (mrml.database_file(volume, slicer.dicomDatabase)
                or dicom_file_or_none(storage.GetFileName() if storage else None))

    def _loadResult(self, segNrrd: Path, volume, segmentation, report: Report):
        """The result as a segmentation tied to the volume and filed beside it (CertSegLib.mrml.load_result)."""
        segmentation = mrml.load_result(slicer.mrmlScene, segNrrd, volume, segmentation, report,
                                        f"{volume.GetName()} CertSeg")
        if segmentation.GetAttribute(mrml.FORCED_ATTRIBUTE) and not segmentation.GetName().endswith(_(" (OOD override)")):
            segmentation.SetName(segmentation.GetName() + _(" (OOD override)"))
        return segmentation

    @staticmethod
    def _keepDicomSeg(path: Path):
        """The backend's DICOM SEG (highdicom-built, valid on CR) and its measurement SR into Slicer's DICOM database,
        ready to send to the PACS from the DICOM browser; copied there, since the temporary folder goes next."""
        if path.is_file() and slicer.dicomDatabase is not None and slicer.dicomDatabase.isOpen:
            from DICOMLib import DICOMUtils

            DICOMUtils.importDicom(str(path.parent), slicer.dicomDatabase, copyFiles=True)

    @staticmethod
    def _statisticsTable(segmentation, volume):
        """Segment Statistics (areas, intensities) of the certified segments, as a table node beside the result."""
        import SegmentStatistics

        logic = SegmentStatistics.SegmentStatisticsLogic()
        logic.getParameterNode().SetParameter("Segmentation", segmentation.GetID())
        logic.getParameterNode().SetParameter("ScalarVolume", volume.GetID())
        logic.computeStatistics()
        table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", f"{segmentation.GetName()} statistics")
        logic.exportToTable(table)
        return table

    @staticmethod
    def _loadRadiusMap(path: Path, volume):
        """The per-pixel radius as a Viridis foreground layer with a colour legend: where the certificate is strong."""
        radiusMap = mrml.load_radius_map(slicer.mrmlScene, path, volume, f"{volume.GetName()} CertSeg radius")
        slicer.util.setSliceViewerLayers(background=volume, foreground=radiusMap, foregroundOpacity=0.35)
        return radiusMap


class CertSegTest(ScriptedLoadableModuleTest):
    """Loads the shipped sample CR, certifies it on the CPU with small n, and checks the segments."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self._requireDependencies()
        self.setUp()
        self.test_CertifySampleRadiograph()
        self.setUp()
        self.test_CancelLeavesNothingBehind()

    def _requireDependencies(self):
        """Fail saying so when the backend's packages are missing: under --testing nothing installs them
        (Slicer 5.12's pip_ensure skips installing in testing mode), so the test would fail obscurely."""
        missing = CertSegLogic._missingRequirements()
        try:
            import torch  # noqa: F401
        except ImportError:
            missing.append("torch (PyTorch extension)")
        self.assertFalse(missing, "install CertSeg's dependencies in this Slicer before the self-test (open the "
                                  "module and press Apply once): missing " + ", ".join(missing))

    @contextlib.contextmanager
    def _sampleInTemporaryDatabase(self):
        """The sample CR loaded through a temporary DICOM database that stays open while the test runs: closing
        it empties fileForInstance, and the run would lose its --reference-dicom."""
        from DICOMLib import DICOMUtils

        self.assertTrue(SAMPLE_CR.is_file(), f"{SAMPLE_CR} is missing")
        with DICOMUtils.TemporaryDICOMDatabase() as database:
            DICOMUtils.importDicom(str(SAMPLE_CR.parent), database)
            loaded = DICOMUtils.loadPatientByUID(database.patients()[0])
            yield slicer.mrmlScene.GetNodeByID(loaded[0])

    def test_CertifySampleRadiograph(self):
        self.delayDisplay("Loading the sample CR")
        with self._sampleInTemporaryDatabase() as volume:
            self._certifySample(volume)

    def _certifySample(self, volume):
        self.assertIsNotNone(CertSegLogic._sourceDicomFile(volume), "the sample's DICOM file is not found")
        logic = CertSegLogic()
        parameters = logic.getParameterNode()
        parameters.inputVolume = volume
        parameters.n0, parameters.n = SELF_TEST_REQUEST.n0, SELF_TEST_REQUEST.n
        parameters.device = SELF_TEST_OPTIONS.device
        self.delayDisplay("Certifying on the CPU")
        report = logic.process(parameters, wait=True)
        self.assertTrue(report.source.reference_dicom, "the backend did not get the source DICOM file")
        database = slicer.dicomDatabase
        series = database.seriesForStudy(database.studiesForPatient(database.patients()[0])[0])
        self.assertEqual(len(series), 3, "the SEG and the measurement SR did not reach the DICOM database")
        self.assertEqual(len(slicer.util.getNodesByClass("vtkMRMLTableNode")), 1)  # segment statistics
        radiusMaps = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode") if "CertSeg radius" in n.GetName()]
        self.assertEqual(len(radiusMaps), 1)
        self.assertEqual(slicer.util.arrayFromVolume(radiusMaps[0]).shape, slicer.util.arrayFromVolume(volume).shape)
        segmentation = parameters.outputSegmentation.GetSegmentation()
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        self.assertIn("Abstained", names)
        self.assertIn("certified right lung", names)
        self.assertIn("certified left lung", names)
        lungs = [s for s in report.structures if s.name.endswith("lung")]
        self.assertTrue(all(s.certified_pixels > 0 for s in lungs), lungs)
        import numpy as np

        labelmap = slicer.util.arrayFromSegmentBinaryLabelmap(
            parameters.outputSegmentation, segmentation.GetSegmentIdBySegmentName("Abstained"), volume)
        self.assertEqual(labelmap.shape, slicer.util.arrayFromVolume(volume).shape)
        volumeMatrix, segMatrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(volumeMatrix)
        geometry = slicer.vtkOrientedImageData()
        # The two-argument form copies into `geometry` (vtkMRMLSegmentationNode.h, Slicer 5.10); the
        # Internal variant takes only the segment ID.
        parameters.outputSegmentation.GetBinaryLabelmapRepresentation(
            segmentation.GetSegmentIdBySegmentName("Abstained"), geometry)
        geometry.GetImageToWorldMatrix(segMatrix)
        for row in range(3):
            for column in range(4):
                self.assertAlmostEqual(volumeMatrix.GetElement(row, column), segMatrix.GetElement(row, column), 4)
        self.assertTrue(np.any(labelmap) or report.source_grid.abstain_fraction == 0)
        self._exportReviewed(parameters.outputSegmentation, volume)
        self.delayDisplay("Test passed")

    def _exportReviewed(self, segmentationNode, volume):
        """The DICOM plugin exports the result as a reader left it: the trimmed lung is marked, the rest certified."""
        from CertSegDICOMPlugin import CertSegDICOMPluginClass

        from CertSegLib.seg_reader import read_certseg_seg

        plugin = CertSegDICOMPluginClass()
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        exportables = plugin.examineForExport(hierarchy.GetItemByDataNode(segmentationNode))
        self.assertEqual(len(exportables), 1)
        lungId = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName("certified right lung")
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, lungId, volume)
        mask[:, : mask.shape[1] // 2] = 0  # the reader trims the lung's upper half
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentationNode, lungId, volume)
        with tempfile.TemporaryDirectory() as folder:
            exportables[0].directory = folder
            self.assertEqual(plugin.export(exportables), "")
            seg = read_certseg_seg(next(Path(folder).glob("*.dcm")))
        self.assertEqual([layer.name for layer in seg.segments if not layer.certified],
                         ["right lung (edited, not certified)"])

    def test_CancelLeavesNothingBehind(self):
        with self._sampleInTemporaryDatabase() as volume:
            self._cancelSample(volume)

    def _cancelSample(self, volume):
        logic = CertSegLogic()
        parameters = logic.getParameterNode()
        parameters.inputVolume = volume
        parameters.device = "cpu"
        logic.process(parameters, wait=False)
        workDir = logic._workDir
        qt.QThread.msleep(2000)
        logic.cancel()
        self.assertFalse(logic.isRunning)
        self.assertTrue(logic._backend.finished)  # the child was killed and reaped, with its process group
        self.assertFalse(Path(workDir).exists())
