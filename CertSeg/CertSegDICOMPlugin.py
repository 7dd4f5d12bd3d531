"""DICOM plugin: loads CertSeg's DICOM SEG files onto the radiograph they reference.

Follows DICOMScalarVolumePlugin's pattern (Slicer 5.10, Modules/Scripted/DICOMPlugins): a hidden
scripted module registers the plugin class in slicer.modules.dicomPlugins.  CertSeg's SEG is
claimed above dcmqi's DICOMSegmentationPlugin, which cannot read a SEG on a projection image
without a Frame of Reference; it is read with highdicom (CertSegLib.seg_reader).
"""

import slicer
from DICOMLib import DICOMLoadable, DICOMPlugin

from CertSegLib.seg_reader import is_certseg_seg, read_certseg_seg, referenced_instance_uid

SOP_CLASS_UID, MANUFACTURER, SERIES_DESCRIPTION = "0008,0016", "0008,0070", "0008,103E"
CONFIDENCE = 0.99  # above any generic SEG reader's (dcmqi's DICOMSegmentationPlugin cannot read these)


class CertSegDICOMPluginClass(DICOMPlugin):
    def __init__(self):
        super().__init__()
        self.loadType = "CertSeg segmentation"

    def examineForImport(self, fileLists):
        loadables = []
        for files in fileLists:
            for path in files:
                value = lambda tag, path=path: slicer.dicomDatabase.fileValue(path, tag)  # noqa: E731
                if not is_certseg_seg(value(SOP_CLASS_UID), value(MANUFACTURER)):
                    continue
                loadable = DICOMLoadable()
                loadable.files = [path]
                loadable.name = value(SERIES_DESCRIPTION) or "CertSeg certified segmentation"
                loadable.tooltip = "Certified structures and the Abstained region (CertSeg DICOM SEG)"
                loadable.selected = True
                loadable.confidence = CONFIDENCE
                loadable.referencedInstanceUIDs = [referenced_instance_uid(path)]
                loadables.append(loadable)
        return loadables

    def load(self, loadable):
        seg = read_certseg_seg(loadable.files[0])
        volume = self._radiograph(seg.referenced_sop_instance_uid)
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", loadable.name)
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segmentation.CreateDefaultDisplayNodes()
        for layer in seg.segments:
            segmentId = segmentation.GetSegmentation().AddEmptySegment(layer.name.replace(" ", "_"), layer.name,
                                                                        layer.color)
            segmentation.GetSegmentation().GetSegment(segmentId).SetTerminology(layer.terminology)
            slicer.util.updateSegmentBinaryLabelmapFromArray(layer.mask[None], segmentation, segmentId, volume)
        self.addSeriesInSubjectHierarchy(loadable, segmentation)
        return True

    @staticmethod
    def _radiograph(sopInstanceUid):
        """The referenced radiograph: the node already loaded from it, else loaded now from the database."""
        for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
            if (node.GetAttribute("DICOM.instanceUIDs") or "").split() == [sopInstanceUid]:
                return node
        path = slicer.dicomDatabase.fileForInstance(sopInstanceUid)
        if not path:
            raise RuntimeError(f"The radiograph this CertSeg SEG references ({sopInstanceUid}) is not in the "
                               f"DICOM database; import it first.")
        plugin = slicer.modules.dicomPlugins["DICOMScalarVolumePlugin"]()
        loadables = plugin.examineForImport([[path]])
        return plugin.load(loadables[0])


class CertSegDICOMPlugin:
    """The hook that makes Slicer find the plugin: a hidden module, as DICOMScalarVolumePlugin's."""

    def __init__(self, parent):
        parent.title = "CertSeg DICOM Plugin"
        parent.categories = ["Developer Tools.DICOM Plugins"]
        parent.contributors = ["CertSeg team"]
        parent.helpText = "Loads CertSeg's DICOM SEG files onto the radiograph they reference."
        parent.acknowledgementText = "Reads DICOM SEG with highdicom."
        parent.hidden = True
        try:
            slicer.modules.dicomPlugins
        except AttributeError:
            slicer.modules.dicomPlugins = {}
        slicer.modules.dicomPlugins["CertSegDICOMPlugin"] = CertSegDICOMPluginClass
