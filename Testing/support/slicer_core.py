"""Slicer's own code without the application (the `slicer-core` package): a scene with its logics.

slicer-core has MRML, the Segmentations, Volumes and Colors logics, vtkITK's readers and Slicer's
`slicer/util.py`, but no `slicer.app`, no `slicer.modules` and no Qt.  `slicer_scene()` makes a scene
and the logics as Slicer's application does (vtkSlicerApplicationLogic, SetMRMLScene, SetModuleLogic)
and sets the two names Slicer's Python code reads: `slicer.mrmlScene` and `slicer.modules.<name>.logic()`.
That namespace is the only stand-in; everything else is Slicer's real code.
"""

import contextlib
import types
from pathlib import Path

import numpy as np
import pytest


def import_slicer():
    try:
        import vtk
    except ImportError:
        pytest.fail("slicer-core is not installed: Testing/setup-and-test.sh installs the test extra")
    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)
    import slicer

    return slicer


@contextlib.contextmanager
def slicer_scene():
    slicer = import_slicer()
    scene = slicer.vtkMRMLScene()
    application = slicer.vtkSlicerApplicationLogic()
    application.SetMRMLScene(scene)
    logics = {}
    for name, cls in (("colors", slicer.vtkSlicerColorLogic), ("volumes", slicer.vtkSlicerVolumesLogic),
                      ("segmentations", slicer.vtkSlicerSegmentationsModuleLogic)):
        module_logic = cls()
        module_logic.SetMRMLApplicationLogic(application)
        module_logic.SetMRMLScene(scene)
        application.SetModuleLogic(name.capitalize(), module_logic)
        logics[name] = module_logic
    previous = (getattr(slicer, "mrmlScene", None), getattr(slicer, "modules", None))
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(**{name: types.SimpleNamespace(logic=lambda lg=lg: lg)
                                              for name, lg in logics.items()})
    try:
        yield scene
    finally:
        slicer.mrmlScene, slicer.modules = previous
        scene.Clear(True)


def matrix(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(i, j) for j in range(4)] for i in range(4)])


def ijk_to_ras_as_slicers_dicom_import(path: Path) -> np.ndarray:
    """The IJK-to-RAS matrix of the volume Slicer 5.12's DICOMScalarVolumePlugin makes of one file: its
    loadFilesWithSeriesReader with the GDCM approach (the default, "GDCM with DCMTK fallback"), as written
    there: archetype reader, native scalar type and orientation, native origin, the reader's RAS-to-IJK."""
    slicer = import_slicer()
    reader = slicer.vtkITKArchetypeImageSeriesScalarReader()
    reader.SetArchetype(str(path))
    reader.AddFileName(str(path))
    reader.SetSingleFile(0)
    reader.SetOutputScalarTypeToNative()
    reader.SetDesiredCoordinateOrientationToNative()
    reader.SetUseNativeOriginOn()
    reader.SetDICOMImageIOApproachToGDCM()
    reader.Update()
    assert reader.GetErrorCode() == 0, f"Slicer's GDCM reader could not read {path}"
    return np.linalg.inv(matrix(reader.GetRasToIjkMatrix()))


def add_volume(scene, path: Path, name: str):
    """A scalar volume from a file, through the Volumes logic (what Add Data does)."""
    import slicer

    volume = slicer.modules.volumes.logic().AddArchetypeVolume(str(path), name, 0)
    assert volume is not None, path
    return volume


def file_under_new_study(scene, nodes, study_name="study"):
    """A patient and study in the subject hierarchy with `nodes` under the study (what the DICOM import does)."""
    import slicer

    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "patient")
    study = hierarchy.CreateStudyItem(patient, study_name)
    for node in nodes:  # slicer-core gives new nodes no item (Slicer's application does, through a Qt plugin)
        item = hierarchy.GetItemByDataNode(node)
        if item:
            hierarchy.SetItemParent(item, study)
        else:
            hierarchy.CreateItem(study, node)
    return study
