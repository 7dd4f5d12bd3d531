"""`certseg certify` end to end on the shipped sample and on a hostile export, outputs read back."""

import json
import shutil
import subprocess
import sys

import highdicom as hd
import numpy as np
import pydicom
import pytest
import slicerio
import torch
from scipy import ndimage

from support.cli import run_certseg as certseg
from support.dicom_files import ODD_SPACINGS, SAMPLE_CR, hostile_files, write_cr_with_spacing
from support.seg_nrrd import segment_mask
from support.tools import require_tool

# n = 80: below about 63 unanimous votes no pixel of 256^2 can pass Holm at alpha = 0.001.
FAST = ["--n0", "2", "--n", "80", "--quiet"]


@pytest.fixture(scope="module")
def sample_result(certified_sample):
    return certified_sample


def test_sample_writes_every_output(sample_result):
    run, _, folder = sample_result
    assert sorted(p.name for p in folder.iterdir()) == [
        "capture.dcm", "certificate.npz", "certseg.seg.nrrd", "measurements.dcm", "overlay.png", "pixel_radius.nrrd",
        "report-pdf.dcm", "report.json", "report.pdf", "seg.dcm"]
    assert "certified" in run.stdout and "Traceback" not in run.stderr
    assert "input check: frontal chest radiograph" in run.stdout


def test_fresh_noise_and_every_array_states_its_guarantee(sample_result):
    _, source, folder = sample_result
    report = json.loads((folder / "report.json").read_text())
    noise = report["noise"]
    assert noise["source"].startswith("os-entropy") and noise["image_key"] == source.SOPInstanceUID
    assert noise["reproduce_with"] == f"--seed {noise['run_seed']}"
    # One seed in the report: the run seed --seed takes (the image's stream is derived from it and the image key)
    assert "seed" not in report["parameters"] and [k for k in noise if "seed" in k] == ["run_seed"]
    radius = report["radius"]
    slope = abs(float(source.get("RescaleSlope", 1)))
    assert "Modality LUT output" in radius["stored_values_units"]
    assert radius["raw_pixel_values_l2"] == pytest.approx(radius["stored_values_l2"] / slope)
    arrays = np.load(folder / "certificate.npz")
    guarantees = json.loads(str(arrays["guarantees"]))
    assert set(guarantees) >= {"model_labels", "candidates", "counts", "pixel_radius", "alpha"}
    certified = arrays["model_labels"] >= 0
    assert np.array_equal(arrays["candidates"][certified], arrays["model_labels"][certified])
    assert np.isnan(arrays["pixel_radius"][~certified]).all()
    per_pixel_stored = arrays["pixel_radius_stored_values"][certified]
    assert np.allclose(per_pixel_stored, arrays["pixel_radius"][certified] / report["preprocessing_operator_norm"])


def test_dicom_seg_reads_back_with_highdicom(sample_result):
    _, source, folder = sample_result
    seg = hd.seg.segread(folder / "seg.dcm")
    labels = [seg.get_segment_description(n).segment_label for n in seg.segment_numbers]
    assert labels[-1] == "Abstained" and "certified right lung" in labels and "certified left lung" in labels
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert seg.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], combine_segments=False)
    assert pixels.shape == (1, source.Rows, source.Columns, len(labels))
    masks = {label: pixels[0, :, :, index] > 0 for index, label in enumerate(labels)}
    abstained = masks.pop("Abstained")
    assert not any((abstained & mask).any() for mask in masks.values())  # abstained overlaps no structure
    # Each structure whole, as SCR draws it: the lungs run on under their clavicles; lungs and heart stay apart.
    for side in ("right", "left"):
        lung, clavicle = masks[f"certified {side} lung"], masks[f"certified {side} clavicle"]
        assert (lung & clavicle).sum() > 0.5 * clavicle.sum(), side
        assert not (lung & masks["certified heart"]).any()
    description = seg.get_segment_description(labels.index("certified right lung") + 1)
    assert description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Right"
    assert description.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName.startswith("CertSeg")


def test_dicom_seg_passes_dciodvfy(sample_result):
    _, _, folder = sample_result
    check = subprocess.run([require_tool("dciodvfy"), str(folder / "seg.dcm")], capture_output=True, text=True)
    errors = [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
    assert not errors, errors
    # laterality sits inside the type's item, where the standard puts it
    assert "Segmented Property Type Modifier" not in check.stdout + check.stderr


@pytest.mark.parametrize("variant", list(ODD_SPACINGS))
def test_seg_states_only_valid_spacing_whatever_the_source_carries(variant, tmp_path):
    """Zero, missing, detector-only or calibrated spacing: the SEG passes dciodvfy and states the report's spacing."""
    source = write_cr_with_spacing(tmp_path / f"{variant}.dcm", variant)
    run = certseg("certify", source, "--out", tmp_path / "out", "--no-denoiser", "--force", *FAST)
    assert run.returncode == 0, run.stderr
    seg_path = next((tmp_path / "out").rglob("seg.dcm"))
    check = subprocess.run([require_tool("dciodvfy"), str(seg_path)], capture_output=True, text=True)
    assert not [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
    report = json.loads((seg_path.parent / "report.json").read_text())
    measures = pydicom.dcmread(seg_path).SharedFunctionalGroupsSequence[0].get("PixelMeasuresSequence")
    stated = None if measures is None else [float(v) for v in measures[0].PixelSpacing]
    assert stated == report["source"]["pixel_spacing_mm"]
    assert (stated is None) == (variant in ("zero", "missing"))


@pytest.mark.parametrize("placed", [False, True], ids=["unplaced-cr", "dx-with-plane-and-frame"])
def test_seg_places_its_plane_where_viewers_place_the_radiograph(placed, tmp_path):
    """Web viewers draw a SEG only through its plane orientation, which the standard allows only with a
    Frame of Reference: the SEG has one, its one plane is the radiograph's own (identity at the origin when
    the radiograph states none), and its pixels still map onto the radiograph's through Derivation Image."""
    source_path = write_cr_with_spacing(tmp_path / "source.dcm", "calibrated")
    source = pydicom.dcmread(source_path)
    if placed:
        source.FrameOfReferenceUID, source.PositionReferenceIndicator = hd.UID(), ""
        source.ImageOrientationPatient, source.ImagePositionPatient = [0, 1, 0, 0, 0, -1], [10, 20, 30]
        source.save_as(source_path)
    run = certseg("certify", source_path, "--out", tmp_path / "out", "--no-denoiser", "--force", *FAST)
    assert run.returncode == 0, run.stderr
    seg_path = next((tmp_path / "out").rglob("seg.dcm"))
    seg = pydicom.dcmread(seg_path)
    assert seg.FrameOfReferenceUID != "" and (seg.FrameOfReferenceUID == source.get("FrameOfReferenceUID")) == placed
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    assert orientation == ([0, 1, 0, 0, 0, -1] if placed else [1, 0, 0, 0, 1, 0])
    positions = {tuple(float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient)
                 for frame in seg.PerFrameFunctionalGroupsSequence}
    assert positions == {(10.0, 20.0, 30.0) if placed else (0.0, 0.0, 0.0)}  # one plane, every segment in it
    assert {frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            for frame in seg.PerFrameFunctionalGroupsSequence} == {source.SOPInstanceUID}
    check = subprocess.run([require_tool("dciodvfy"), str(seg_path)], capture_output=True, text=True)
    assert not [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
    read = hd.seg.segread(seg_path)
    by_source = read.get_pixels_by_source_instance([source.SOPInstanceUID], combine_segments=False)
    assert by_source.shape == (1, source.Rows, source.Columns, len(read.segment_numbers))


def test_measurement_sr_validates_and_states_the_reports_intervals_against_the_segs_segments(sample_result):
    _, source, folder = sample_result
    check = subprocess.run([require_tool("dciodvfy"), str(folder / "measurements.dcm")], capture_output=True, text=True)
    assert not [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
    report = json.loads((folder / "report.json").read_text())
    sr = hd.sr.srread(folder / "measurements.dcm")
    seg = pydicom.dcmread(folder / "seg.dcm")
    labels = {int(d.SegmentNumber): d.SegmentLabel for d in seg.SegmentSequence}
    expected = {f"certified {m['name']}": m["area_mm2"] for m in report["measurements"]["structures"]}
    groups = sr.content.get_planar_roi_measurement_groups()
    by_segment = [g for g in groups if g.referenced_segmentation_frame is not None]
    by_region = {g.tracking_uid: g for g in groups if g.roi is not None}
    assert len(by_segment) == sum(label in expected for label in labels.values())
    for group in by_segment:
        reference = group.referenced_segmentation_frame
        assert reference.referenced_sop_instance_uid == seg.SOPInstanceUID
        interval = expected[labels[int(reference.referenced_segment_numbers[0])]]
        values = {m.derivation.meaning: m.value for m in group.get_measurements()}
        assert values == pytest.approx({"Minimum": interval["low"], "Maximum": interval["high"]})
        # the same finding (tracking UID) has an image region, which viewers such as OHIF draw
        assert by_region[group.tracking_uid].tracking_identifier == group.tracking_identifier
        assert not by_region[group.tracking_uid].get_measurements()  # each value is stated once
    (ratio_group,) = [g for g in by_region.values() if g.tracking_identifier == "cardiothoracic ratio"]
    assert len(by_region) == len(by_segment) + 1  # every group a viewer lists has a region to draw
    for group in by_region.values():
        assert group.roi.graphic_type.value == "POLYLINE"
        assert group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    # the ratio is drawn on the heart's largest certified region: the pixel centres inside its polygon are that
    # region's pixels, with any hole filled (one polyline outlines the outer boundary; checked with matplotlib's
    # point-in-polygon, not the code that traced it)
    heart_number = next(n for n, label in labels.items() if label == "certified heart")
    heart = hd.seg.segread(folder / "seg.dcm").get_pixels_by_source_instance(
        [source.SOPInstanceUID], segment_numbers=[heart_number])[0, :, :, 0] > 0
    assert np.array_equal(pixels_inside(ratio_group.roi.value, heart.shape), ndimage.binary_fill_holes(largest_region(heart)))
    certified = report["measurements"]["cardiothoracic_ratio"]
    values = {m.derivation.meaning: m.value for m in ratio_group.get_measurements()}
    assert values == pytest.approx({"Minimum": certified["low"], "Maximum": certified["high"]})
    (verdict,) = ratio_group.get_qualitative_evaluations()
    assert verdict.value.meaning.lower().startswith(certified["verdict"])  # "Below 0.5 ..." for "below"
    assert not sr.content.get_image_measurement_groups()  # a group without a region breaks OHIF's SR viewport
    assert sr.StudyInstanceUID == source.StudyInstanceUID


def test_an_sr_with_nothing_certified_states_the_ratio_not_certified_on_the_whole_image(small_cr, tmp_path):
    """n = 4 certifies no pixel: the SR still says why there is no ratio, in a group a viewer can draw."""
    run = certseg("certify", small_cr, "--out", tmp_path / "out", "--n0", "1", "--n", "4", "--no-denoiser",
                  "--quiet", "--force")
    assert run.returncode == 0, run.stderr
    sr_path = next((tmp_path / "out").rglob("measurements.dcm"))
    report = json.loads((sr_path.parent / "report.json").read_text())
    assert report["measurements"]["cardiothoracic_ratio"]["verdict"] == "not certified"
    check = subprocess.run([require_tool("dciodvfy"), str(sr_path)], capture_output=True, text=True)
    assert not [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
    (group,) = hd.sr.srread(sr_path).content.get_planar_roi_measurement_groups()
    assert group.tracking_identifier == "cardiothoracic ratio" and not group.get_measurements()
    (verdict,) = group.get_qualitative_evaluations()
    assert verdict.value.meaning.startswith("Not certified")
    source = pydicom.dcmread(small_cr)
    corners = {tuple(point) for point in group.roi.value.tolist()}
    assert corners == {(0, 0), (source.Columns, 0), (source.Columns, source.Rows), (0, source.Rows)}


def pixels_inside(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centres (column + 0.5, row + 0.5 in DICOM image coordinates) lie inside the polygon."""
    from matplotlib.path import Path as PolygonPath

    row, column = np.mgrid[0:shape[0], 0:shape[1]]
    centres = np.column_stack([column.ravel() + 0.5, row.ravel() + 0.5])
    return PolygonPath(polygon).contains_points(centres).reshape(shape)


def largest_region(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    regions, _ = ndimage.label(mask)
    return regions == 1 + int(np.argmax(np.bincount(regions.ravel())[1:]))


def test_seg_nrrd_reads_back_with_slicerio_on_the_source_geometry(sample_result):
    _, source, folder = sample_result
    segmentation = slicerio.read_segmentation(str(folder / "certseg.seg.nrrd"))
    names = [s["name"] for s in segmentation["segments"]]
    assert "Abstained" in names and "certified left lung" in names
    spacing = [float(v) for v in source.ImagerPixelSpacing]  # (row, column): Slicer's grid for a CR (GDCM)
    geometry = segmentation["ijkToLPS"]
    np.testing.assert_allclose(np.linalg.norm(geometry[:3, :2], axis=0), [spacing[1], spacing[0]], rtol=1e-5)
    np.testing.assert_allclose(geometry[:3, 3], 0.0)
    assert segmentation["voxels"].shape[-3:-1] == (source.Columns, source.Rows)  # (layers,) I, J, K
    lung = next(s for s in segmentation["segments"] if s["name"] == "certified left lung")
    assert lung["terminology"]["type"][1] == "39607008" and lung["terminology"]["typeModifier"][2] == "Left"
    assert float(lung["tags"]["CertSeg.sigma"]) == 0.25


def test_radius_map_lies_on_the_source_geometry_and_is_positive_exactly_where_certified(sample_result):
    import SimpleITK as sitk

    _, source, folder = sample_result
    radius_map = sitk.ReadImage(str(folder / "pixel_radius.nrrd"))
    segmentation = slicerio.read_segmentation(str(folder / "certseg.seg.nrrd"))
    np.testing.assert_allclose(radius_map.GetSpacing()[:2], np.linalg.norm(segmentation["ijkToLPS"][:3, :2], axis=0))
    np.testing.assert_allclose(radius_map.GetOrigin(), segmentation["ijkToLPS"][:3, 3])
    values = sitk.GetArrayFromImage(radius_map)[0]
    assert values.shape == (source.Rows, source.Columns)
    abstained_mask = segment_mask(segmentation, "Abstained").T
    assert (values[abstained_mask] == 0).all() and (values[~abstained_mask] > 0).all()
    assert "second event" in radius_map.GetMetaData("CertSeg.meaning")


def test_report_states_parameters_models_areas_and_radii(sample_result):
    _, source, folder = sample_result
    report = json.loads((folder / "report.json").read_text())
    assert report["source"]["sop_instance_uid"] == source.SOPInstanceUID
    assert report["parameters"]["n"] == 80 and report["denoiser"] is True
    assert len(report["models"]["segmenter"]["sha256"]) == 64
    # The digests name everything that defines what ran: the shipped cards' digests, as a fresh load computes them.
    from certseg.model.cards import DEFAULT_MODEL_DIR, ModelCard
    from certseg.record import combined_digest

    cards = {kind: ModelCard.read(DEFAULT_MODEL_DIR / kind, segmenter=kind == "segmenter").identity()
             for kind in ("segmenter", "denoiser")}
    assert {kind: m["digest"] for kind, m in report["models"].items()} == {k: c.digest for k, c in cards.items()}
    assert report["model_digest"] == combined_digest(cards) and len(report["model_digest"]) == 64
    lungs = [s for s in report["structures"] if s["name"].endswith("lung")]
    area = float(source.PixelSpacing[0]) * float(source.PixelSpacing[1])
    assert all(s["certified_area_mm2"] == pytest.approx(s["certified_pixels"] * area) for s in lungs)
    intervals = {m["name"]: m for m in report["measurements"]["structures"]}
    for structure in report["structures"]:
        bounds = intervals[structure["name"]]["area_pixels"]
        assert bounds["low"] == structure["certified_pixels"] <= bounds["high"]
    ratio = report["measurements"]["cardiothoracic_ratio"]
    assert 0.3 < ratio["low"] <= ratio["clean"] <= ratio["high"] <= 1  # a normal heart (abstentions widen "high")
    assert ratio["verdict"] in ("below", "undecided") and report["laterality_rule"].startswith("midline")
    assert report["intensity_window"]["origin"] == "DICOM VOI" and report["intensity_window"]["percentiles"] is None
    assert (report["intensity_window"]["low"], report["intensity_window"]["high"]) == (0.0, 4096.0)
    radius = report["radius"]
    assert radius["model_space"] == pytest.approx(0.25 * 0.6744897501960817)
    assert radius["rms_per_source_pixel"] == pytest.approx(radius["stored_values_l2"] / np.sqrt(source.Rows * source.Columns))


@pytest.mark.slow
def test_sequential_certification_records_its_looks_and_the_samples_it_drew(tmp_path):
    run = certseg("certify", SAMPLE_CR, "--out", tmp_path, "--n0", "2", "--n", "400", "--sequential",
                  "--no-denoiser", "--quiet")
    assert run.returncode == 0, run.stderr
    report = json.loads(next(tmp_path.rglob("report.json")).read_text())
    assert report["parameters"]["looks"] == [100, 200, 400]
    assert report["parameters"]["stop_tolerance"] > 0
    assert report["samples_drawn"]["estimation"] in (100, 200, 400)
    assert sum(s["certified_pixels"] for s in report["structures"]) > 0


def test_existing_results_are_kept_unless_overwrite(sample_result, tmp_path):
    _, _, folder = sample_result
    out = folder.parents[2]
    before = (folder / "report.json").read_bytes()
    again = certseg("certify", SAMPLE_CR, "--out", out, *FAST, "--seed", "5")
    assert again.returncode == 0 and "kept" in again.stdout
    assert (folder / "report.json").read_bytes() == before


def test_hostile_export_processes_the_good_image_and_lists_each_bad_file(small_cr, tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    cases = hostile_files(small_cr, export)
    shutil.copy(SAMPLE_CR, export / "good.dcm")
    run = certseg("certify", export, "--out", tmp_path / "out", "--n0", "1", "--n", "4", "--quiet", "--no-denoiser")
    assert run.returncode == 1, run.stderr  # some images failed
    assert "Traceback" not in run.stderr + run.stdout
    for name, words in cases.items():
        lines = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith(str(export / name))]
        assert len(lines) == 1 and words in lines[0], (name, lines)
    assert len(list((tmp_path / "out").rglob("report.json"))) == 1
    assert not list((tmp_path / "out").rglob("*.partial"))


@pytest.mark.parametrize("args, words", [
    (["--sigma", "0"], "sigma must be > 0"),
    (["--tau", "0.4"], "tau must lie in"),
    (["--alpha", "2"], "alpha must lie in"),
    (["--looks", "50", "90"], "looks must increase and end at n = 100"),
    (["--sequential", "--stop-tolerance", "-1"], "stop_tolerance must be >= 0"),
    (["--precision", "int8"], "invalid choice: 'int8'"),
    (["--n", "0"], "must be >= 1"),
] + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "no CUDA GPU")]))
def test_bad_parameters_fail_fast_in_one_line(args, words, tmp_path):
    run = certseg("certify", SAMPLE_CR, "--out", tmp_path / "out", *args)
    assert run.returncode == 2 and words in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_nothing_to_certify_is_a_clear_error(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    run = certseg("certify", tmp_path, "--out", tmp_path / "out")
    assert run.returncode == 2 and "no chest radiograph" in run.stderr and "a.txt" in run.stderr


def test_no_uid_in_a_file_becomes_a_path_outside_the_output_folder(small_cr, tmp_path):
    """Each UID that names a result folder, relative and absolute traversal: refused, named, nothing written."""
    from support.dicom_files import traversal_uids, write_with_uid

    export, escaped = tmp_path / "export", tmp_path / "escaped"
    export.mkdir()
    bad = {}
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        for case in ("relative", "absolute"):
            name = f"{keyword}-{case}.dcm"
            write_with_uid(small_cr, export / name, keyword, traversal_uids(escaped)[case])
            bad[name] = keyword
    shutil.copy(small_cr, export / "good.dcm")
    run = certseg("certify", export, "--out", tmp_path / "out", "--n0", "1", "--n", "4", "--quiet", "--no-denoiser",
                  "--force")
    assert run.returncode == 1, run.stderr
    for name, keyword in bad.items():
        lines = [line for line in run.stderr.splitlines() if line.startswith(str(export / name))]
        assert len(lines) == 1 and f"{keyword} " in lines[0] and "is not a DICOM UID" in lines[0], (name, lines)
    assert not escaped.exists() and not list(tmp_path.glob("escaped*"))
    assert len(list((tmp_path / "out").rglob("report.json"))) == 1


def test_a_deflate_bomb_is_refused_before_it_is_inflated(small_cr, tmp_path):
    from support.dicom_files import write_deflate_bomb

    bomb = write_deflate_bomb(small_cr, tmp_path / "bomb.dcm", 600 * 2**20)  # under 1 MB, 600 MiB inflated
    run = certseg("certify", bomb, "--out", tmp_path / "out", *FAST)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "inflates to more than 512 MiB" in run.stderr
    assert not (tmp_path / "out").exists()


def test_every_option_of_every_command_says_what_it_does_and_its_default():
    import argparse

    from certseg.commands import _all_parsers, parser

    silent = [(command.prog, action.option_strings[0]) for command in _all_parsers(parser())
              for action in command._actions
              if action.option_strings and not action.help and not isinstance(action, argparse._HelpAction)]
    assert silent == []
    def help_of(prog):
        return " ".join(next(p for p in _all_parsers(parser()) if p.prog == prog).format_help().split())

    listen_help = help_of("certseg listen")
    assert "(default: 127.0.0.1" in listen_help and "(default: 11112)" in listen_help
    certify_help = help_of("certseg certify")
    assert "(default: holm)" in certify_help and "(default: auto)" in certify_help


def test_a_text_file_named_dcm_gets_no_hint_of_an_option_certseg_does_not_have(tmp_path):
    (tmp_path / "notes.dcm").write_text("not an image\n")
    run = certseg("certify", tmp_path / "notes.dcm", "--out", tmp_path / "out")
    assert run.returncode == 2 and "not a DICOM file" in run.stderr
    assert "force=True" not in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_a_bug_is_not_dressed_up_as_bad_input(tmp_path):
    """An exception that is not CertSeg's own (injected here) is exit 70 with one line and the traceback in a file;
    a parameter out of range stays the user's error (exit 2, a ParameterError that is also a ValueError)."""
    import subprocess
    import sys

    from certseg.errors import ParameterError
    from certseg.request import CertificationRequest

    code = ("import sys, runpy, certseg.runner; certseg.runner.select_radiographs = lambda *a, **k: 1 / 0; "
            f"sys.argv = ['certseg', 'certify', {str(SAMPLE_CR)!r}, '--out', {str(tmp_path / 'out')!r}]; "
            "runpy.run_module('certseg', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 70 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "internal error (ZeroDivisionError" in done.stderr and "this is a bug in CertSeg" in done.stderr
    report = done.stderr.strip().rsplit(" ", 1)[1]
    assert "ZeroDivisionError" in open(report).read() and "Traceback" not in done.stderr
    with pytest.raises(ParameterError):
        CertificationRequest(sigma=-1.0).validate()
    assert issubclass(ParameterError, ValueError)


@pytest.mark.parametrize("case", ["--help", "--version", "bad sigma", "missing path", "text file", "pacs config",
                                  "no model folder", "out is a file", "image file missing", "image file unreadable",
                                  "no dataset", "listen port"])
def test_answers_that_need_no_model_never_import_torch(case, tmp_path):
    """--help, --version and every parameter or input refusal come before torch, MONAI and diffusers load
    (their import is what made a typo cost a minute; Testing/benchmarks/cli_startup.py times it)."""
    (tmp_path / "x.dcm").write_text("hello")
    argv = {"--help": ["certify", "--help"], "--version": ["--version"],
            "bad sigma": ["certify", str(SAMPLE_CR), "--out", str(tmp_path / "o"), "--sigma", "-1"],
            "missing path": ["certify", str(tmp_path / "nothing.dcm"), "--out", str(tmp_path / "o")],
            "text file": ["certify", str(tmp_path / "x.dcm"), "--out", str(tmp_path / "o")],
            "pacs config": ["pacs", "--server", "x", "--config", str(tmp_path / "none.json"), "--study", "1.2", "--out",
                            str(tmp_path / "o")],
            "no model folder": ["certify", str(SAMPLE_CR), "--out", str(tmp_path / "o"), "--model-dir", str(tmp_path)],
            "out is a file": ["certify", str(SAMPLE_CR), "--out", str(tmp_path / "x.dcm" / "o")],
            "image file missing": ["certify-array", str(tmp_path / "none.png"), "--out", str(tmp_path / "o")],
            "image file unreadable": ["certify-array", str(tmp_path / "x.dcm"), "--out", str(tmp_path / "o")],
            "no dataset": ["evaluate", "--data", str(tmp_path), "--out", str(tmp_path / "o")],
            "listen port": ["listen", "--port", "70000", "--send-to", "sender", "--spool", str(tmp_path / "o")],
            }[case]
    code = ("import sys\nfrom certseg.commands import main\ntry:\n    code = main(%r)\nexcept SystemExit as exit:\n"
            "    code = exit.code\nheavy = sorted({'torch', 'monai', 'diffusers'} & set(sys.modules))\n"
            "print('HEAVY', heavy, 'CODE', code)") % (argv,)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY [] CODE" in done.stdout, done.stdout[-500:] + done.stderr[-500:]
    assert not (tmp_path / "o").exists()


def test_a_wrong_model_folder_is_the_users_error_not_a_bug(tmp_path):
    """The finding: `--model-dir` naming a folder without a model was reported as an internal error (exit 70)."""
    (tmp_path / "empty").mkdir()
    run = certseg("certify", SAMPLE_CR, "--out", tmp_path / "out", "--model-dir", tmp_path / "empty")
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert str(tmp_path / "empty") in run.stderr and "not a CertSeg model folder" in run.stderr
    assert "internal error" not in run.stderr and not (tmp_path / "out").exists()


def test_an_out_that_is_a_file_is_refused_at_once_and_the_file_kept(tmp_path):
    """The finding: `--out` naming a file certified the whole image first, then failed with NotADirectoryError
    (exit 1, after 10 s); `certify-array --overwrite` onto a file would have replaced the user's file."""
    mine = tmp_path / "notes.txt"
    mine.write_text("the user's own file\n")
    for argv in (["certify", SAMPLE_CR, "--out", mine], ["certify", SAMPLE_CR, "--out", mine / "results"],
                 ["certify-array", SAMPLE_CR, "--out", mine, "--overwrite"]):
        run = certseg(*argv)
        assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
        assert f"{mine} is a file, not a folder" in run.stderr
    assert mine.read_text() == "the user's own file\n" and sorted(tmp_path.iterdir()) == [mine]


def test_the_run_options_are_valid_by_construction():
    from certseg.errors import ParameterError
    from certseg.request import RunOptions

    for bad in ({"device": "tpu"}, {"precision": "fp8"}, {"compile": "always"}, {"batch_size": 0}):
        with pytest.raises(ParameterError):
            RunOptions(**bad)
    assert RunOptions(device="cpu", batch_size=4).batch_size == 4


def test_a_result_is_kept_only_for_the_pixels_it_certified(small_cr, tmp_path):
    """certify used to keep a result by its folder name alone: other pixels under the same UIDs got the old one."""
    from certseg.dicom.reading import read_radiograph
    from certseg.record import Report

    out = tmp_path / "out"
    first = certseg("certify", small_cr, "--out", out, *FAST, "--no-denoiser", "--force")
    assert first.returncode == 0, first.stderr
    report_path = next(out.rglob("report.json"))
    assert Report.read(report_path).source.pixel_sha256 == read_radiograph(small_cr).pixel_sha256
    again = certseg("certify", small_cr, "--out", out, *FAST, "--no-denoiser", "--force")
    assert again.returncode == 0 and "result kept" in again.stdout
    changed = pydicom.dcmread(small_cr)
    pixels = changed.pixel_array.copy()
    pixels[:10] = 0
    changed.PixelData = pixels.tobytes()
    changed.save_as(tmp_path / "changed.dcm", enforce_file_format=True)
    before = report_path.read_bytes()
    refused = certseg("certify", tmp_path / "changed.dcm", "--out", out, *FAST, "--no-denoiser", "--force")
    assert refused.returncode == 1 and "certified other pixels under the same UIDs" in refused.stderr
    assert "--overwrite" in refused.stderr and report_path.read_bytes() == before
    replaced = certseg("certify", tmp_path / "changed.dcm", "--out", out, "--overwrite", *FAST, "--no-denoiser", "--force")
    assert replaced.returncode == 0
    assert Report.read(report_path).source.pixel_sha256 == read_radiograph(tmp_path / "changed.dcm").pixel_sha256


@pytest.mark.parametrize("keyword", ["Modality", "BodyPartExamined", "PhotometricInterpretation"])
def test_a_file_cannot_forge_lines_or_escape_sequences_in_certseg_output(small_cr, tmp_path, keyword):
    dataset = pydicom.dcmread(small_cr)
    forged = "X\r\ncertseg: 1 certified\x1b[2J\x9b31m"
    setattr(dataset, keyword, forged)
    dataset.save_as(tmp_path / "forged.dcm", enforce_file_format=True)
    done = certseg("certify", tmp_path / "forged.dcm", "--out", tmp_path / "out", *FAST)
    output = done.stdout + done.stderr
    assert done.returncode in (1, 2) and not {"\x1b", "\r", "\x9b"} & set(output)
    assert not any(line.startswith("certseg: 1 certified") for line in output.splitlines())
    assert "\\x1b[2J" in output  # shown, escaped


def test_a_secondary_capture_claiming_modality_cr_is_not_certified(small_cr, tmp_path):
    from pydicom.uid import SecondaryCaptureImageStorage

    dataset = pydicom.dcmread(small_cr)
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    dataset.save_as(tmp_path / "capture.dcm", enforce_file_format=True)
    done = certseg("certify", tmp_path / "capture.dcm", "--out", tmp_path / "out", *FAST)
    assert done.returncode == 2 and "Secondary Capture Image Storage is not a CR or DX image" in done.stderr
    assert not (tmp_path / "out").exists()


def _bare_dataset_file(path, source, implicit: bool):
    """The dataset alone, as older systems and ACR-NEMA-era archives wrote it: no preamble, no file meta."""
    import pydicom
    from pydicom.filewriter import write_dataset

    dataset = pydicom.dcmread(source)
    del dataset.file_meta
    with path.open("wb") as handle:
        fp = pydicom.filebase.DicomFileLike(handle)
        fp.is_little_endian, fp.is_implicit_VR = True, implicit
        write_dataset(fp, dataset)
    return dataset


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit VR", "explicit VR"])
def test_a_chest_cr_stored_without_a_file_header_is_certified_and_says_so(tmp_path, small_cr, implicit):
    """A bare dataset (a real 1990s chest CR is stored so) is DICOM data all the same: read, not refused."""
    import pydicom

    dataset = _bare_dataset_file(tmp_path / "bare.dcm", small_cr, implicit)
    assert (tmp_path / "bare.dcm").read_bytes()[128:132] != b"DICM"
    run = certseg("certify", tmp_path / "bare.dcm", "--out", tmp_path / "out", "--n0", "1", "--n", "4",
                  "--no-denoiser", "--quiet", "--force")
    assert run.returncode == 0, run.stderr
    (report,) = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("report.json")]
    assert any("no DICOM file header" in note for note in report["source"]["notes"]), report["source"]["notes"]
    (seg,) = (tmp_path / "out").rglob("seg.dcm")
    assert pydicom.dcmread(seg).ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID \
        == dataset.SOPInstanceUID


def test_a_file_that_only_starts_like_a_bare_dataset_is_refused_in_one_line(tmp_path):
    (tmp_path / "junk.dcm").write_bytes(b"\x08\x00\x16\x00" + bytes(range(256)) * 8)
    run = certseg("certify", tmp_path / "junk.dcm", "--out", tmp_path / "out")
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "junk.dcm" in run.stderr and "Traceback" not in run.stderr
