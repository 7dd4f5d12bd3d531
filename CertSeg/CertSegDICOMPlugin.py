"""DICOM plugin: CertSeg's DICOM SEG files in and out of Slicer, and chest radiographs to certify.

Follows DICOMScalarVolumePlugin's pattern (Slicer 5.10, Modules/Scripted/DICOMPlugins): a hidden
scripted module registers the plugin class in slicer.modules.dicomPlugins.
- Import: CertSeg's SEG is claimed above dcmqi's DICOMSegmentationPlugin, which cannot read a SEG on a
  projection image without a Frame of Reference; it is read with highdicom (CertSegLib.seg_reader).
  A chest CR or DX also gets a low-confidence "certify with CertSeg" loadable: loading it loads the
  radiograph and queues it in the CertSeg module, so selecting several series certifies them in turn.
- Export: a CertSeg segmentation, as the reader left it, goes back as a highdicom SEG (never dcmqi,
  which fails on CR); segments edited or added since certification are marked (CertSegLib.review).
"""

import json
from pathlib import Path

import slicer
from DICOMLib import DICOMLoadable, DICOMPlugin

from certseg.dicom.reading import chest_radiograph_refusal
from certseg.record import ModelIdentity
from CertSegLib.mrml import database_file, segmentation_from_seg, slicer_segments
from CertSegLib.review import CERTIFIED_DIGESTS_ATTRIBUTE, MODEL_ATTRIBUTE, reviewed_segments
from CertSegLib.seg_reader import is_certseg_seg, read_certseg_seg, referenced_instance_uid

SOP_CLASS_UID, MANUFACTURER, SERIES_DESCRIPTION = "0008,0016", "0008,0070", "0008,103E"
MODALITY, BODY_PART, VIEW_POSITION = "0008,0060", "0018,0015", "0018,5101"
SEG_CONFIDENCE = 0.99  # above any generic SEG reader's (dcmqi's DICOMSegmentationPlugin cannot read these)
CERTIFY_CONFIDENCE = 0.1  # below DICOMScalarVolumePlugin's 0.5: plain loading stays the default
EXPORT_CONFIDENCE = 0.9  # above dcmqi's segmentation export, which fails on CR


class CertSegDICOMPluginClass(DICOMPlugin):
    def __init__(self):
        super().__init__()
        self.loadType = "CertSeg segmentation"

    def examineForImport(self, fileLists):
        loadables = []
        for files in fileLists:
            for path in files:
                value = lambda tag, path=path: slicer.dicomDatabase.fileValue(path, tag)  # noqa: E731
                if is_certseg_seg(value(SOP_CLASS_UID), value(MANUFACTURER)):
                    loadables.append(self._segLoadable(path, value(SERIES_DESCRIPTION)))
                elif chest_radiograph_refusal({"Modality": value(MODALITY), "BodyPartExamined": value(BODY_PART),
                                               "ViewPosition": value(VIEW_POSITION)}) is None:  # the backend's gate
                    loadables.append(self._certifyLoadable(path, value(SERIES_DESCRIPTION)))
        return loadables

    @staticmethod
    def _segLoadable(path, description):
        loadable = DICOMLoadable()
        loadable.files = [path]
        loadable.name = description or "CertSeg certified segmentation"
        loadable.tooltip = "Certified structures and the Abstained region (CertSeg DICOM SEG)"
        loadable.selected = True
        loadable.confidence = SEG_CONFIDENCE
        loadable.referencedInstanceUIDs = [referenced_instance_uid(path)]
        return loadable

    @staticmethod
    def _certifyLoadable(path, description):
        loadable = DICOMLoadable()
        loadable.files = [path]
        loadable.name = f"Certify with CertSeg: {description or 'chest radiograph'}"
        loadable.tooltip = "Load this radiograph and certify it in the CertSeg module (several: one after another)"
        loadable.selected = False
        loadable.confidence = CERTIFY_CONFIDENCE
        return loadable

    def load(self, loadable):
        path = loadable.files[0]  # what a loadable is survives only in its fields (DICOMLoadable from qLoadable)
        if not is_certseg_seg(slicer.dicomDatabase.fileValue(path, SOP_CLASS_UID),
                              slicer.dicomDatabase.fileValue(path, MANUFACTURER)):
            return self._loadAndCertify(loadable)
        seg = read_certseg_seg(loadable.files[0])
        volume = self._radiograph(seg.referenced_sop_instance_uid)
        segmentation = segmentation_from_seg(slicer.mrmlScene, seg, volume, loadable.name)
        self.addSeriesInSubjectHierarchy(loadable, segmentation)
        return True

    def _loadAndCertify(self, loadable):
        volume = self._radiograph(slicer.dicomDatabase.instanceForFile(loadable.files[0]))
        slicer.util.selectModule("CertSeg")  # the panel shows the run: it listens to the module's logic
        slicer.util.getModuleLogic("CertSeg").certifyVolumes([volume])  # queued after any running one
        return True

    @staticmethod
    def _radiograph(sopInstanceUid):
        """The radiograph of this instance: the node already loaded from it, else loaded now from the database."""
        for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
            if (node.GetAttribute("DICOM.instanceUIDs") or "").split() == [sopInstanceUid]:
                return node
        path = slicer.dicomDatabase.fileForInstance(sopInstanceUid)
        if not path:
            raise RuntimeError(f"The radiograph {sopInstanceUid} is not in the DICOM database; import it first.")
        plugin = slicer.modules.dicomPlugins["DICOMScalarVolumePlugin"]()
        loadables = plugin.examineForImport([[path]])
        return plugin.load(loadables[0])  # files it under its study in the subject hierarchy

    def examineForExport(self, subjectHierarchyItemID):
        """A CertSeg segmentation on a radiograph from the DICOM database: the reviewed SEG."""
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        segmentation = hierarchy.GetItemDataNode(subjectHierarchyItemID)
        if segmentation is None or not segmentation.IsA("vtkMRMLSegmentationNode") \
                or segmentation.GetAttribute(CERTIFIED_DIGESTS_ATTRIBUTE) is None or not self._sourceFile(segmentation):
            return []
        exportable = slicer.qSlicerDICOMExportable()
        exportable.name = "CertSeg DICOM SEG (reviewed)"
        exportable.tooltip = ("The segmentation as you left it, as DICOM SEG on its radiograph; segments edited or "
                              "added since certification are named and coded as not certified")
        exportable.subjectHierarchyItemID = subjectHierarchyItemID
        exportable.pluginClass = self.__module__
        exportable.confidence = EXPORT_CONFIDENCE
        return [exportable]

    def export(self, exportables):
        from certseg.dicom.reading import Skipped, read_radiograph
        from certseg.dicom.seg import write_reviewed_seg

        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        for exportable in exportables:
            segmentation = hierarchy.GetItemDataNode(exportable.subjectHierarchyItemID)
            volume = segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole())
            radiograph = read_radiograph(self._sourceFile(segmentation), force=True)
            if isinstance(radiograph, Skipped):
                return f"{segmentation.GetName()}: {radiograph.reason}"
            reviewed = reviewed_segments(slicer_segments(segmentation, volume),
                                         json.loads(segmentation.GetAttribute(CERTIFIED_DIGESTS_ATTRIBUTE)))
            model = ModelIdentity(**json.loads(segmentation.GetAttribute(MODEL_ATTRIBUTE) or '{"name": "unknown", "version": ""}'))
            target = Path(exportable.directory) / f"CertSeg_reviewed_{exportable.subjectHierarchyItemID}.dcm"
            write_reviewed_seg(target, radiograph, reviewed, model)
        return ""

    @staticmethod
    def _sourceFile(segmentation):
        """The DICOM file of the radiograph the segmentation lies on, from the database (None: not from DICOM)."""
        volume = segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole())
        return database_file(volume, slicer.dicomDatabase) if volume is not None else None


class CertSegDICOMPlugin:
    """The hook that makes Slicer find the plugin: a hidden module, as DICOMScalarVolumePlugin's."""

    def __init__(self, parent):
        parent.title = "CertSeg DICOM Plugin"
        parent.categories = ["Developer Tools.DICOM Plugins"]
        parent.contributors = ["CertSeg team"]
        parent.helpText = ("Loads CertSeg's DICOM SEG files onto the radiograph they reference, offers chest "
                           "radiographs for certification, and exports reviewed CertSeg segmentations as DICOM SEG.")
        parent.acknowledgementText = "Reads and writes DICOM SEG with highdicom."
        parent.hidden = True
        try:
            slicer.modules.dicomPlugins
        except AttributeError:
            slicer.modules.dicomPlugins = {}
        slicer.modules.dicomPlugins["CertSegDICOMPlugin"] = CertSegDICOMPluginClass
