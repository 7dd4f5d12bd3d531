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

from certseg.record import Report
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


def loaded_result(scene, certified, variant="calibrated"):
    """The radiograph loaded as Slicer's DICOM import files it (volume under a study), its result loaded by
    CertSegLib.mrml as the module does."""
    from CertSegLib import mrml

    source, folder = certified[variant]
    volume = add_volume(scene, source, "radiograph")
    file_under_new_study(scene, [volume])
    report = Report.read(folder / "report.json")
    segmentation = mrml.load_result(scene, folder / "certseg.seg.nrrd", volume, None, report, "radiograph CertSeg")
    radius_map = mrml.load_radius_map(scene, folder / "pixel_radius.nrrd", volume, "radiograph CertSeg radius")
    return volume, segmentation, radius_map, report


def test_overlapping_structures_load_whole_in_slicers_segmentation(certified):
    """The sample's lungs run on under its clavicles: Slicer holds the overlapping segments (in layers), each
    with the report's certified pixel count, and the DICOM SEG's import gives the same masks."""
    from CertSegLib import mrml
    from CertSegLib.seg_reader import read_certseg_seg

    with slicer_scene() as scene:
        volume, segmentation, _, report = loaded_result(scene, certified, "sample")
        masks = {s.name: s.mask > 0 for s in mrml.slicer_segments(segmentation, volume)}
        from_seg = mrml.segmentation_from_seg(scene, read_certseg_seg(certified["sample"][1] / "seg.dcm"), volume,
                                              "CertSeg SEG")
        imported = {s.name: s.mask > 0 for s in mrml.slicer_segments(from_seg, volume)}
    assert {f"certified {s.name}": s.certified_pixels for s in report.structures if s.certified_pixels} == \
        {name: int(mask.sum()) for name, mask in masks.items() if name != "Abstained"}
    for side in ("right", "left"):
        assert (masks[f"certified {side} lung"] & masks[f"certified {side} clavicle"]).any(), side
    assert all(np.array_equal(imported[name], mask) for name, mask in masks.items())


def test_a_whole_study_run_after_a_result_is_in_the_study_certifies_only_radiographs(certified):
    """The result, its radius map and a table sit under the study beside a second radiograph; asking each child
    whether it can be certified used to raise on the segmentation (no GetImageData)."""
    from CertSegLib import mrml

    with slicer_scene() as scene:
        volume, segmentation, radius_map, _ = loaded_result(scene, certified)
        second = add_volume(scene, certified["imager-only"][0], "second radiograph")
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", "statistics")
        for node in (second, table):
            mrml.file_beside(scene, node, volume)
        assert mrml.study_of(scene, segmentation) == mrml.study_of(scene, volume) is not None
        assert [n.GetName() for n in mrml.study_radiographs(scene, volume)] == ["radiograph", "second radiograph"]
        assert "not an image volume" in mrml.node_input_problem(segmentation)
        assert mrml.node_input_problem(radius_map) is None  # a volume, excluded by its attribute only


def test_a_loaded_result_keeps_report_digests_geometry_and_forgets_the_run_folder(certified):
    from CertSegLib import mrml
    from CertSegLib.review import CERTIFIED_DIGESTS_ATTRIBUTE, MODEL_ATTRIBUTE, mask_digest

    with slicer_scene() as scene:
        volume, segmentation, radius_map, report = loaded_result(scene, certified)
        assert segmentation.GetName() == "radiograph CertSeg" and segmentation.GetStorageNode() is None
        assert Report.from_json(json.loads(segmentation.GetAttribute(mrml.REPORT_ATTRIBUTE))) == report
        assert json.loads(segmentation.GetAttribute(MODEL_ATTRIBUTE))["name"] == report.segmenter.name
        digests = json.loads(segmentation.GetAttribute(CERTIFIED_DIGESTS_ATTRIBUTE))
        segments = mrml.slicer_segments(segmentation, volume)
        assert digests == {s.name: mask_digest(s.mask) for s in segments} and "Abstained" in digests
        assert segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole()) is volume
        assert radius_map.GetAttribute(mrml.RADIUS_MAP_ATTRIBUTE) == volume.GetID()
        assert radius_map.GetStorageNode() is None
        import slicer

        assert slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(radius_map) is not None
        display = radius_map.GetDisplayNode()
        assert display.GetWindowLevelMax() == pytest.approx(radius_map.GetImageData().GetScalarRange()[1])


def test_a_segment_the_reader_edits_in_slicer_is_the_one_the_reviewed_seg_marks(certified, tmp_path):
    """Trim the right lung on the real segmentation node (Slicer's own array helpers), export as the plugin
    does: only that segment is 'edited, not certified'; the SEG reads back with the plugin's reader."""
    import slicer

    from certseg.dicom.reading import read_radiograph
    from certseg.dicom.seg import write_reviewed_seg
    from CertSegLib import mrml
    from CertSegLib.review import CERTIFIED_DIGESTS_ATTRIBUTE, reviewed_segments
    from CertSegLib.seg_reader import read_certseg_seg

    source = certified["calibrated"][0]
    with slicer_scene() as scene:
        volume, segmentation, _, report = loaded_result(scene, certified)
        segment_id = segmentation.GetSegmentation().GetSegmentIdBySegmentName("certified right lung")
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume)
        mask[:, : mask.shape[1] // 2] = 0
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, segment_id, volume)
        certified_digests = json.loads(segmentation.GetAttribute(CERTIFIED_DIGESTS_ATTRIBUTE))
        reviewed = reviewed_segments(mrml.slicer_segments(segmentation, volume), certified_digests)
    changed = [segment.name for segment, was_changed in reviewed if was_changed]
    assert changed == ["right lung (edited, not certified)"]
    write_reviewed_seg(tmp_path / "reviewed.dcm", read_radiograph(source, force=True), reviewed,
                       report.segmenter)
    back = read_certseg_seg(tmp_path / "reviewed.dcm")
    assert "right lung (edited, not certified)" in [s.name for s in back.segments]


def test_the_dicom_plugins_seg_import_lays_the_backends_seg_on_the_radiograph(certified):
    """The plugin's load, minus the DICOM database: the backend's seg.dcm read with the plugin's reader and put
    on the radiograph by CertSegLib.mrml; every mask equals the .seg.nrrd's, names and terminology carried."""
    import slicer

    from CertSegLib import mrml
    from CertSegLib.review import CERTIFIED_DIGESTS_ATTRIBUTE
    from CertSegLib.seg_reader import read_certseg_seg

    source, folder = certified["calibrated"]
    seg = read_certseg_seg(folder / "seg.dcm")
    with slicer_scene() as scene:
        volume = add_volume(scene, source, "radiograph")
        from_seg = mrml.segmentation_from_seg(scene, seg, volume, "CertSeg SEG")
        from_nrrd = slicer.modules.segmentations.logic().LoadSegmentationFromFile(str(folder / "certseg.seg.nrrd"),
                                                                                  True)
        imported = {s.name: s for s in mrml.slicer_segments(from_seg, volume)}
        written = {s.name: s for s in mrml.slicer_segments(from_nrrd, volume)}
        assert imported.keys() == written.keys() and "Abstained" in imported
        for name, segment in imported.items():
            np.testing.assert_array_equal(segment.mask > 0, written[name].mask > 0, err_msg=name)
        assert "39607008" in imported["certified right lung"].terminology
        assert set(json.loads(from_seg.GetAttribute(CERTIFIED_DIGESTS_ATTRIBUTE))) == set(imported)


# The module's logic without its panel (CertSegLib.logic): what a script in Slicer's Python console runs.

def _headless():
    from certseg.request import RunOptions
    from CertSegLib.backend_call import SELF_TEST_REQUEST

    return SELF_TEST_REQUEST, RunOptions(device="cpu", use_denoiser=False)


def test_the_logic_certifies_the_sample_without_a_widget_and_reports_through_its_callbacks(tmp_path):
    from CertSegLib.batch import ItemStatus
    from CertSegLib.logic import CertificationLogic, Placement
    from CertSegLib.process import Progress

    request, options = _headless()
    with slicer_scene() as scene:
        volume = add_volume(scene, SAMPLE_CR, "sample")
        file_under_new_study(scene, [volume])
        progress, lines, finished = [], [], []
        run = CertificationLogic(scene).process(volume, request, options, Placement(resultRoot=tmp_path / "kept"),
                                                onProgress=progress.append, onLog=lines.append,
                                                onFinished=finished.append)
        outcome = run.outcome
        assert outcome.status == ItemStatus.CERTIFIED, outcome.error
        assert finished == [outcome] and isinstance(progress[-1], Progress) and progress[-1].fraction == 1.0
        report = outcome.report
        assert report.source.metadata_check.checked  # the volume's own DICOM file was gated
        assert Report.read(outcome.resultFolder / "report.json") == report  # kept where it was asked
        segmentation = outcome.segmentation
        names = {segmentation.GetSegmentation().GetNthSegment(i).GetName()
                 for i in range(segmentation.GetSegmentation().GetNumberOfSegments())}
        assert names == {"Abstained"} | {f"certified {s.name}" for s in report.structures if s.certified_pixels}
        assert outcome.radiusMap.GetImageData().GetDimensions()[:2] == volume.GetImageData().GetDimensions()[:2]
        assert not run.workDir.exists()  # the temporary input and result are gone


def test_a_headless_batch_goes_on_after_a_refusal_and_a_cancelled_run_leaves_nothing(tmp_path):
    import slicer.util

    from CertSegLib.batch import ItemStatus
    from CertSegLib.logic import CertificationLogic

    request, options = _headless()
    with slicer_scene() as scene:
        chest = add_volume(scene, SAMPLE_CR, "chest")
        noise = slicer.util.addVolumeFromArray(np.random.default_rng(5).integers(0, 4096, (1, 512, 512)).astype(
            np.uint16), name="noise")
        items, current = [], []
        logic = CertificationLogic(scene)
        batch = logic.processBatch(  # the module's panel reads logic.current from inside these callbacks
            [noise, chest], request, options, onItemStarted=lambda item: current.append(logic.current),
            onItemFinished=lambda item, outcome: items.append((item.name, outcome.status)))
        assert items == [("noise", ItemStatus.REFUSED), ("chest", ItemStatus.CERTIFIED)], batch.summary()
        assert current == [batch, batch]
        assert "refused by" in batch.outcomes[0].question and batch.finished

        logic = CertificationLogic(scene)
        run = logic.process(chest, request, options, wait=False)  # no Qt here: the caller polls
        assert logic.isRunning
        with pytest.raises(RuntimeError, match="already certifying"):
            logic.process(chest, request, options)
        run.cancel()
        assert run.outcome.status == ItemStatus.CANCELLED and not logic.isRunning
        assert not run.workDir.exists()
