"""The module's and the DICOM plugin's MRML work, on Slicer's logics only (no Qt, no application object).

Everything here imports only `slicer` and `vtk` and goes through the Segmentations, Volumes and Colors
logics (`LoadSegmentationFromFile`, `AddArchetypeVolume`, `AddDefaultColorLegendDisplayNode`) rather than
`slicer.util.loadSegmentation`/`loadVolume`, which need the application: so it runs in Slicer and on
slicer-core in the tests alike (Testing/test_slicer_core.py).  CertSeg.py and CertSegDICOMPlugin.py both
use it; neither imports the other.
"""

import json
from pathlib import Path
from typing import Optional

import slicer
import vtk

from certseg.record import ModelIdentity, Report
from CertSegLib.review import CERTIFIED_DIGESTS_ATTRIBUTE, MODEL_ATTRIBUTE, SlicerSegment, mask_digest
from CertSegLib.backend_call import input_problem

RADIUS_MAP_ATTRIBUTE = "CertSeg.radiusMapOf"  # on a radius map: the ID of the radiograph it belongs to
REPORT_ATTRIBUTE = "CertSeg.report"  # on a result segmentation: report.json as text
FORCED_ATTRIBUTE = "CertSeg.forced"
VIRIDIS = "vtkMRMLColorTableNodeFileViridis.txt"  # Slicer's colour node ID for ColorFiles/Viridis.txt


def logic(module: str):
    """A module's logic: `slicer.modules.<module>.logic()` (in Slicer; the tests provide the same on slicer-core)."""
    return getattr(slicer.modules, module).logic()


def node_input_problem(node) -> Optional[str]:
    """Why a node cannot be certified (None: it can). Any node may be asked: a study holds segmentations, tables..."""
    if node is None:
        return "Select an input volume"
    if not node.IsA("vtkMRMLScalarVolumeNode"):
        return f"{node.GetName()} is a {node.GetClassName()}, not an image volume"
    image = node.GetImageData()
    if image is None:
        return "The input volume has no image data"
    return input_problem(node.GetClassName(), image.GetDimensions(), image.GetNumberOfScalarComponents())


def write_volume(volume, path: Path) -> None:
    """`volume` to a NRRD file through a storage node of our own: the volume's own storage node keeps pointing
    where it did (Slicer's saveNode would repoint it at our temporary file)."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)
    if not storage.WriteData(volume) or not Path(path).is_file():
        raise RuntimeError(f"Could not write {volume.GetName()} to {path}")


def study_of(scene, node) -> Optional[int]:
    """The subject-hierarchy item of the study `node` is filed under (None: it is in no study)."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    parent = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node))
    if hierarchy.GetItemLevel(parent) != slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy():
        return None
    return parent


def study_radiographs(scene, volume) -> list:
    """Every radiograph CertSeg can certify in `volume`'s study (CertSeg's own results and radius maps aside);
    only `volume` when it is in no study (loaded from a file)."""
    study = study_of(scene, volume)
    if study is None:
        return [volume]
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    children = vtk.vtkIdList()
    hierarchy.GetItemChildren(study, children, True)
    nodes = [hierarchy.GetItemDataNode(children.GetId(i)) for i in range(children.GetNumberOfIds())]
    return [node for node in nodes if node is not None and node_input_problem(node) is None
            and not node.GetAttribute(RADIUS_MAP_ATTRIBUTE)]


def file_beside(scene, node, volume) -> None:
    """File `node` under `volume`'s parent in the subject hierarchy (its study, when it has one).

    Slicer's application gives every new data node an item (a Qt-side plugin); without one, the item is made here."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    parent = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(volume)) or hierarchy.GetSceneItemID()
    item = hierarchy.GetItemByDataNode(node)
    if item:
        hierarchy.SetItemParent(item, parent)
    else:
        hierarchy.CreateItem(parent, node)


def forget_storage(scene, node) -> None:
    """A loaded result's storage node points at the run's folder (temporary, or kept results that Save must not
    overwrite): without it, Save proposes a new file."""
    storage = node.GetStorageNode()
    if storage is not None:
        scene.RemoveNode(storage)


def load_result(scene, seg_nrrd: Path, volume, segmentation, report: Report, name: str):
    """The backend's .seg.nrrd as `segmentation` (None: a new node called `name`), tied to `volume`, with the
    report, the certified masks' digests and the model on the node, filed beside the volume."""
    loaded = logic("segmentations").LoadSegmentationFromFile(str(seg_nrrd), True)
    if loaded is None:
        raise RuntimeError(f"Slicer could not read {seg_nrrd}")
    if segmentation is None:
        segmentation = loaded
        segmentation.SetName(scene.GenerateUniqueName(name))
        forget_storage(scene, segmentation)
    else:
        segmentation.GetSegmentation().RemoveAllSegments()
        segmentation.GetSegmentation().DeepCopy(loaded.GetSegmentation())
        scene.RemoveNode(loaded)
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetAttribute(REPORT_ATTRIBUTE, json.dumps(report.to_json()))
    record_certified_segments(segmentation, volume, report.segmenter)
    if report.out_of_distribution is not None and report.out_of_distribution.forced:
        segmentation.SetAttribute(FORCED_ATTRIBUTE, "out-of-distribution check overridden by the user")
    file_beside(scene, segmentation, volume)
    return segmentation


def load_radius_map(scene, path: Path, volume, name: str):
    """pixel_radius.nrrd as a hidden volume with a Viridis colour table (when the scene has it) and a colour
    legend, marked as a radius map (never a radiograph to certify) and filed beside the volume."""
    radius_map = logic("volumes").AddArchetypeVolume(str(path), scene.GenerateUniqueName(name), 0)
    if radius_map is None:
        raise RuntimeError(f"Slicer could not read {path}")
    radius_map.SetAttribute(RADIUS_MAP_ATTRIBUTE, volume.GetID())
    forget_storage(scene, radius_map)
    radius_map.CreateDefaultDisplayNodes()
    display = radius_map.GetDisplayNode()
    if scene.GetNodeByID(VIRIDIS) is not None:
        display.SetAndObserveColorNodeID(VIRIDIS)
    display.AutoWindowLevelOff()
    largest = radius_map.GetImageData().GetScalarRange()[1]
    display.SetWindowLevelMinMax(0.0, float(largest) or 1.0)
    logic("colors").AddDefaultColorLegendDisplayNode(radius_map)
    file_beside(scene, radius_map, volume)
    return radius_map


def slicer_segments(segmentation, volume) -> list:
    """Every segment's name, mask on the radiograph's grid, colour and terminology."""
    segments = segmentation.GetSegmentation()
    found = []
    for index in range(segments.GetNumberOfSegments()):
        segment_id = segments.GetNthSegmentID(index)
        segment = segments.GetSegment(segment_id)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume)[0]
        found.append(SlicerSegment(segment.GetName(), mask, tuple(segment.GetColor()), segment.GetTerminology()))
    return found


def record_certified_segments(segmentation, volume, model: ModelIdentity, certified_names=None) -> None:
    """Store the certified segments' mask digests and the model on the node: export tells edited segments by them.

    `certified_names`: the segments that hold the backend's masks (None: all, as on a fresh result)."""
    digests = {segment.name: mask_digest(segment.mask) for segment in slicer_segments(segmentation, volume)
               if certified_names is None or segment.name in certified_names}
    segmentation.SetAttribute(CERTIFIED_DIGESTS_ATTRIBUTE, json.dumps(digests))
    segmentation.SetAttribute(MODEL_ATTRIBUTE, json.dumps({"name": model.name, "version": model.version}))


def segmentation_from_seg(scene, seg, volume, name: str):
    """A CertSeg DICOM SEG (CertSegLib.seg_reader.CertSegSeg) as a segmentation on `volume`: names, colours,
    terminology, masks; the certified segments' digests recorded, so a later export tells what was edited."""
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segmentation.CreateDefaultDisplayNodes()
    for layer in seg.segments:
        segment_id = segmentation.GetSegmentation().AddEmptySegment(layer.name.replace(" ", "_"), layer.name,
                                                                    layer.color)
        segmentation.GetSegmentation().GetSegment(segment_id).SetTerminology(layer.terminology)
        slicer.util.updateSegmentBinaryLabelmapFromArray(layer.mask[None], segmentation, segment_id, volume)
    record_certified_segments(segmentation, volume, seg.model, {layer.name for layer in seg.segments if layer.certified})
    return segmentation


def database_file(volume, database) -> Optional[Path]:
    """The DICOM database's file for the single instance a volume was loaded from (None: not loaded from it)."""
    uids = (volume.GetAttribute("DICOM.instanceUIDs") or "").split()
    if len(uids) != 1 or not database:
        return None
    path = database.fileForInstance(uids[0])
    return Path(path) if path else None
