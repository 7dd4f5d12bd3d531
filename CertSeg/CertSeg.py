"""CertSeg: certified chest X-ray segmentation in 3D Slicer.

A thin GUI over the `certseg` backend (in this module's folder): the input volume is
written to a temporary NRRD, `certseg certify-array` runs in a background process,
and its `.seg.nrrd` is loaded as a segmentation with one segment per certified
structure and an "Abstained" segment.  Requires Slicer 5.12 or later (pydicom 3, highdicom
and slicer.packaging; see CertSegLib/dependencies.py).  Calls into Slicer were checked against
5.10's and 5.12's sources.
"""

import contextlib
import shutil
import tempfile
import time
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
from certseg.files import SEG_FILE
from certseg.report import panel_summary
from certseg.request import CertificationRequest, RunOptions
from CertSegLib import mrml
from CertSegLib.backend_call import SELF_TEST_OPTIONS, SELF_TEST_REQUEST, progress_text
from CertSegLib.batch import ItemStatus
from CertSegLib.dependencies import installed_version, protected_constraints
from CertSegLib.logic import BatchRun, CertificationLogic, RunOutcome
from CertSegLib.process import Progress

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
    """The panel: parameters bound to the parameter node, Apply/Cancel, progress, log and summary.  It only
    shows what the logic does; the logic certifies (CertSegLogic.certifyVolumes) whether or not a panel exists."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._started = 0.0

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CertSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CertSegLogic()
        self.logic.listener = self
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
        self.logic.listener = None
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateApplyButton)

    def onSceneStartClose(self, caller, event):
        self.logic.cancel()  # its nodes are about to go
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
            self._log(_("Cancelled."))
            self._finish()
            return
        volume = self._parameterNode.inputVolume
        self._certify(self.logic.studyRadiographs(volume) if self._parameterNode.wholeStudy else [volume])

    def _certify(self, volumes, force: bool = False):
        with slicer.util.tryWithErrorDisplay(_("CertSeg could not start."), waitCursor=True):
            self.logic.certifyVolumes(volumes, force=force)
        self._updateApplyButton()

    def onOpenResultFolder(self):
        folder = self.logic.lastResultFolder
        if folder is not None:  # as ScriptedLoadableModule opens files (Slicer 5.10)
            qt.QDesktopServices.openUrl(qt.QUrl("file:///" + str(folder), qt.QUrl.TolerantMode))

    # The logic's listener: what a run says, shown.
    def onBatchStarted(self, batch):
        self.ui.logText.clear()
        self.ui.summaryText.clear()
        self._updateApplyButton()

    def onItemStarted(self, batch, item):
        if len(batch.items) > 1:
            self._log(_("Certifying {name}").format(name=item.name))
        self.ui.progressBar.value = 0
        self.ui.progressBar.format = progress_text(0.0, 0.0)
        self.ui.progressBar.show()
        self._started = time.monotonic()

    def onProgress(self, batch, progress: Progress):
        item = batch.queue.current
        if item is None:  # cancelled meanwhile
            return
        several = len(batch.items) > 1
        prefix = f"{item.name} ({batch.items.index(item) + 1}/{len(batch.items)}): " if several else ""
        self.ui.progressBar.value = int(100 * progress.fraction)
        self.ui.progressBar.format = prefix + progress_text(progress.fraction, time.monotonic() - self._started)

    def onLog(self, batch, text: str):
        self._log(text)

    def onItemFinished(self, batch, item, outcome: RunOutcome):
        if len(batch.items) > 1:
            if outcome.status is not ItemStatus.CERTIFIED:
                self._log(item.line())
        elif outcome.report is not None:
            self.ui.summaryText.setPlainText(panel_summary(outcome.report))

    def onBatchFinished(self, batch):
        """Alone, a refusal becomes a question (yes: certify it again, forced) and a failure an error box."""
        self._finish()
        if len(batch.items) > 1:
            self.ui.summaryText.setPlainText(batch.summary())
            return
        outcome = batch.outcomes.get(0)
        if outcome is None or outcome.status in (ItemStatus.CERTIFIED, ItemStatus.CANCELLED):
            return
        if outcome.question:
            if slicer.util.confirmYesNoDisplay(outcome.question, windowTitle="CertSeg"):
                self._certify([batch.items[0].node], force=True)
        else:
            slicer.util.errorDisplay(outcome.error)

    def _log(self, text: str):
        self.ui.logText.appendPlainText(text)

    def _finish(self):
        self.ui.progressBar.hide()
        self._updateApplyButton()


def inputProblem(volume) -> Optional[str]:
    """Why `volume` cannot be certified (None: it can): CertSeg takes one grayscale radiograph (CertSegLib.mrml)."""
    if volume is None:
        return _("Select an input volume")
    return mrml.node_input_problem(volume)


class CertSegLogic(ScriptedLoadableModuleLogic, CertificationLogic):
    """The module's logic: CertSegLib.logic's CertificationLogic (process, processBatch, cancel: usable from
    Slicer's Python console without the panel) with the module's parameter node, its dependencies, and what
    Slicer's application adds to a result (statistics table, radius map shown, SEG and SR in the DICOM database).

        logic = slicer.util.getModuleLogic("CertSeg")      # or CertSegLogic()
        run = logic.process(volume, CertificationRequest(n0=10, n=100), RunOptions(device="cpu"))
        run.outcome.report
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        CertificationLogic.__init__(self)
        self.lastResultFolder: Optional[Path] = None  # the last run's kept result files
        self.listener = None  # the panel, when shown: onBatchStarted, onItemStarted, onProgress, ...

    def getParameterNode(self):
        return CertSegParameterNode(super().getParameterNode())

    def certifyVolumes(self, volumes, parameters: Optional[CertSegParameterNode] = None, force: bool = False,
                       wait: bool = False) -> BatchRun:
        """Certify volumes one after another with the parameter node's settings, as Apply and the DICOM plugin
        do; the panel (the listener), when there is one, shows it.  The input volume's result goes to the
        output segmentation (made when there is none), any other volume's to a new segmentation.  While a batch
        runs, the volumes join it (the DICOM plugin's loadables, loaded one by one), with its settings."""
        if isinstance(self.current, BatchRun) and self.isRunning:
            for volume in volumes:
                self._checkInput(volume, RunOptions())
                self.current.queue.add(volume, volume.GetName())
            return self.current
        parameters = parameters or self.getParameterNode()
        # Built (and so validated) before anything is written: a bad parameter leaves no temporary folder behind.
        request = CertificationRequest(sigma=parameters.sigma, n0=parameters.n0, n=parameters.n,
                                       alpha=parameters.alpha, tau=parameters.tau, force=force)
        options = RunOptions(model_dir=Path(parameters.modelFolder) if parameters.modelFolder else None,
                             use_denoiser=parameters.useDenoiser, device=parameters.device)
        resultRoot = Path(parameters.resultFolder) if parameters.keepResults else None
        self.ensureDependencies()
        listener = self.listener

        def tell(name, *args):  # processBatch makes its batch `self.current` before the first callback
            if listener is not None:
                getattr(listener, name)(self.current, *args)

        def itemStarted(item):
            tell("onItemStarted", item)

        def itemFinished(item, outcome):
            if item.node is parameters.inputVolume and outcome.segmentation is not None:
                parameters.outputSegmentation = outcome.segmentation
            tell("onItemFinished", item, outcome)

        outputs = {}
        if parameters.inputVolume is not None and parameters.outputSegmentation is not None:
            outputs[parameters.inputVolume.GetID()] = parameters.outputSegmentation
        return self.processBatch(volumes, request, options, resultRoot, wait=wait, outputs=outputs,
                                 onStarted=lambda b: tell("onBatchStarted"), onItemStarted=itemStarted,
                                 onProgress=lambda p: tell("onProgress", p), onLog=lambda line: tell("onLog", line),
                                 onItemFinished=itemFinished, onFinished=lambda b: tell("onBatchFinished"))

    def presentResult(self, outcome: RunOutcome, volume, resultFolder: Path) -> None:
        """What Slicer's application adds to a certified result: statistics, the radius map shown, the SEG and
        SR in the DICOM database (ready to send to the PACS)."""
        self._statisticsTable(outcome.segmentation, volume)
        slicer.util.setSliceViewerLayers(background=volume, foreground=outcome.radiusMap, foregroundOpacity=0.35)
        self._keepDicomSeg(resultFolder / SEG_FILE)
        if outcome.resultFolder is not None:
            self.lastResultFolder = outcome.resultFolder

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

    @staticmethod
    def studyRadiographs(volume) -> list:
        """Every radiograph CertSeg can certify in `volume`'s study; only `volume` when it is in no study."""
        return mrml.study_radiographs(slicer.mrmlScene, volume)

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
        self.assertIsNotNone(CertSegLogic.sourceDicomFile(volume), "the sample's DICOM file is not found")
        logic = CertSegLogic()
        parameters = logic.getParameterNode()
        parameters.inputVolume = volume
        parameters.n0, parameters.n = SELF_TEST_REQUEST.n0, SELF_TEST_REQUEST.n
        parameters.device = SELF_TEST_OPTIONS.device
        self.delayDisplay("Certifying on the CPU")
        outcome = logic.certifyVolumes([volume], parameters, wait=True).outcomes[0]  # as Apply does, without the panel
        self.assertEqual(outcome.status, ItemStatus.CERTIFIED, outcome.error)
        report = outcome.report
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
        batch = logic.certifyVolumes([volume], parameters, wait=False)
        run = batch.run
        qt.QThread.msleep(2000)
        logic.cancel()
        self.assertFalse(logic.isRunning)
        self.assertTrue(run.backendEnded)  # the child was killed and reaped, with its process group
        self.assertEqual(run.outcome.status, ItemStatus.CANCELLED)
        self.assertFalse(run.workDir.exists())
