"""The backend's Slicer files and the module's MRML logic on Slicer's own code (slicer-core 5.12, headless).

Geometry: every .seg.nrrd and pixel_radius.nrrd must lie exactly on the grid Slicer's DICOM import gives
the source file (built as DICOMScalarVolumePlugin.loadFilesWithSeriesReader does in Slicer 5.12), for
every spacing a chest export carries; segments, names, colours, terminology, tags and voxel counts must
match report.json.  Logic: CertSegLib.mrml on real MRML nodes, as the module and the DICOM plugin call it."""

import json

import numpy as np
import vtk
import pydicom
import pytest

from support.cli import run_certseg as certseg
from support.dicom_files import SAMPLE_CR, write_cr_with_spacing
from support.slicer_core import (
    add_volume,
    file_under_new_study,
    ijk_to_ras_as_slicers_dicom_import,
    matrix,
    slicer_scene,
)

FAST = ["--n0", "2", "--n", "80", "--quiet", "--no-denoiser", "--force"]
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SPACINGS = ["calibrated", "imager-only", "zero", "missing", "pixel-only"]


@pytest.fixture(scope="module")
def certified(tmp_path_factory):
    """One certify run over a CR of every spacing variant and the shipped sample: {variant: (source, folder)}."""
    from support.dicom_files import ODD_SPACINGS

    folder = tmp_path_factory.mktemp("slicer-geometry")
    export = folder / "export"
    export.mkdir()
    variants = {**ODD_SPACINGS, "pixel-only": ([0.139, 0.139], None, None)}
    sources = {}
    for seed, variant in enumerate(SPACINGS, start=70):
        ODD_SPACINGS.setdefault(variant, variants[variant])
        sources[variant] = write_cr_with_spacing(export / f"{variant}.dcm", variant, seed=seed)
    sources["sample"] = export / "sample.dcm"
    sources["sample"].write_bytes(SAMPLE_CR.read_bytes())
    run = certseg("certify", export, "--out", folder / "out", *FAST)
    assert run.returncode == 0, run.stderr
    results = {}
    for variant, source in sources.items():
        dataset = pydicom.dcmread(source, stop_before_pixels=True)
        results[variant] = (source, folder / "out" / dataset.StudyInstanceUID / dataset.SeriesInstanceUID
                            / dataset.SOPInstanceUID)
    return results


@pytest.mark.parametrize("variant", [*SPACINGS, "sample"])
def test_the_slicer_files_lie_on_the_radiograph_as_slicers_dicom_import_loads_it(certified, variant):
    source, folder = certified[variant]
    expected = ijk_to_ras_as_slicers_dicom_import(source)
    with slicer_scene() as scene:
        import slicer

        segmentation = slicer.modules.segmentations.logic().LoadSegmentationFromFile(
            str(folder / "certseg.seg.nrrd"), True)
        assert segmentation is not None
        segments = segmentation.GetSegmentation()
        labelmap = segments.GetSegment(segments.GetNthSegmentID(0)).GetRepresentation("Binary labelmap")
        geometry = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(geometry)
        np.testing.assert_allclose(matrix(geometry), expected, atol=1e-6)
        radius = add_volume(scene, folder / "pixel_radius.nrrd", "radius")
        radius_geometry = vtk.vtkMatrix4x4()
        radius.GetIJKToRASMatrix(radius_geometry)
        np.testing.assert_allclose(matrix(radius_geometry), expected, atol=1e-6)
    report = json.loads((folder / "report.json").read_text())
    spacing = np.linalg.norm(expected[:3, :2], axis=0)
    np.testing.assert_allclose(report["source"]["slicer_grid"]["spacing_mm"][::-1], spacing)


@pytest.mark.parametrize("variant", ["calibrated", "sample"])
def test_segments_names_colours_terminology_tags_and_voxel_counts_match_the_report(certified, variant):
    _, folder = certified[variant]
    report = json.loads((folder / "report.json").read_text())
    with slicer_scene() as scene:
        import slicer

        segmentation = slicer.modules.segmentations.logic().LoadSegmentationFromFile(
            str(folder / "certseg.seg.nrrd"), True)
        reference = add_volume(scene, folder / "pixel_radius.nrrd", "grid")
        segments = segmentation.GetSegmentation()
        found = {}
        for index in range(segments.GetNumberOfSegments()):
            segment_id = segments.GetNthSegmentID(index)
            segment = segments.GetSegment(segment_id)
            voxels = int(slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, reference).sum())
            found[segment.GetName()] = (voxels, segment, segment_id)
    expected = {f"certified {s['name']}": s["certified_pixels"] for s in report["structures"] if s["certified_pixels"]}
    assert {name: found[name][0] for name in expected} == expected
    grid = report["source_grid"]
    abstained = round(grid["abstain_fraction"] * grid["shape"][0] * grid["shape"][1])
    assert abs(found["Abstained"][0] - abstained) <= 1
    lung = found["certified left lung"][1]
    entry = tag(lung, "TerminologyEntry")
    assert "39607008" in entry and "7771000" in entry  # Lung, Left (SNOMED CT)
    assert tag(lung, "CertSeg.sigma") == str(report["parameters"]["sigma"])
    assert tag(lung, "CertSeg.seed") == str(report["noise"]["run_seed"])
    assert all(0 <= c <= 1 for c in lung.GetColor()) and lung.GetColor() != (0.5, 0.5, 0.5)


def tag(segment, key: str) -> str:
    value = vtk.reference("")
    assert segment.GetTag(key, value), key
    return str(value)


def test_an_image_files_results_lie_on_the_image_as_slicer_loads_it(tmp_path, small_cr):
    import SimpleITK as sitk

    pixels = pydicom.dcmread(small_cr).pixel_array.astype(np.float32)
    image = sitk.GetImageFromArray(pixels[None])
    image.SetSpacing((0.3, 0.25, 1.0))
    image.SetOrigin((12.0, -7.5, 3.0))
    sitk.WriteImage(image, str(tmp_path / "image.nrrd"))
    run = certseg("certify-array", tmp_path / "image.nrrd", "--out", tmp_path / "out", *FAST)
    assert run.returncode == 0, run.stderr
    with slicer_scene() as scene:
        import slicer

        volume = add_volume(scene, tmp_path / "image.nrrd", "image")
        expected = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(expected)
        segmentation = slicer.modules.segmentations.logic().LoadSegmentationFromFile(
            str(tmp_path / "out" / "certseg.seg.nrrd"), True)
        segments = segmentation.GetSegmentation()
        geometry = vtk.vtkMatrix4x4()
        segments.GetSegment(segments.GetNthSegmentID(0)).GetRepresentation("Binary labelmap").GetImageToWorldMatrix(
            geometry)
        np.testing.assert_allclose(matrix(geometry), matrix(expected), atol=1e-6)
