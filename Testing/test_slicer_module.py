"""Everything of the Slicer module that runs without Slicer: process protocol, Cancel, panel, module shape."""

import ast
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

MODULE_DIR = Path(__file__).parents[1] / "CertSeg"

from certseg.commands import parser
from certseg.commands.options import certification_request
from certseg.core.measurements import ratio_verdict
from certseg.record import OodVerdict, RatioMeasurement, Report, SignalVerdict
from certseg.report import batch_detail, panel_summary
from certseg.request import CertificationRequest, RunOptions
from CertSegLib.batch import BatchQueue, ItemStatus, kept_result_folder
from CertSegLib.process import EXIT_CANCELLED, BackendProcess, Progress, parse_line
from CertSegLib.backend_call import (
    SELF_TEST_OPTIONS,
    SELF_TEST_REQUEST,
    backend_command,
    dicom_file_or_none,
    input_problem,
    ood_refusal,
    progress_text,
)
from support.cli import run_certseg
from support.dicom_files import SAMPLE_CR, chest_pixels


def run_to_end(process: BackendProcess, timeout: float = 120.0):
    events, deadline = [], time.monotonic() + timeout
    while not process.finished and time.monotonic() < deadline:
        events += process.poll()
        time.sleep(0.05)
    process.wait(5)
    time.sleep(0.2)
    return events + process.poll()


def test_progress_lines_parse_and_anything_else_is_log_text():
    assert parse_line('CERTSEG_PROGRESS {"done": 3, "total": 12}') == Progress(3, 12)
    assert parse_line("CERTSEG_PROGRESS {broken") == "CERTSEG_PROGRESS {broken"
    assert parse_line("loading models") == "loading models"
    assert Progress(3, 12).fraction == 0.25


def test_a_real_child_reports_progress_and_log_lines_in_order():
    script = ("import sys, time\n"
              "for i in range(1, 4):\n"
              "    print(f'CERTSEG_PROGRESS {{\"done\": {i}, \"total\": 3}}', flush=True); time.sleep(0.05)\n"
              "print('done', flush=True)\n")
    process = BackendProcess([sys.executable, "-c", script])
    process.start()
    events = run_to_end(process)
    assert events == [Progress(1, 3), Progress(2, 3), Progress(3, 3), "done"]
    assert process.returncode == 0


def test_undecodable_output_never_stalls_the_reader():
    """A byte that is not UTF-8, then more output than a pipe holds: every line arrives, the child ends."""
    script = ("import sys\n"
              "sys.stdout.buffer.write(b'bad \\xff\\xfe byte\\n')\n"
              "for i in range(20000): print(f'line {i}')\n")
    process = BackendProcess([sys.executable, "-c", script])
    process.start()
    events = run_to_end(process, timeout=60)
    assert process.returncode == 0
    assert events[0] == "bad \ufffd\ufffd byte" and events[-1] == "line 19999" and len(events) == 20001


@pytest.mark.parametrize("class_name, dimensions, components, words", [
    ("vtkMRMLScalarVolumeNode", (2048, 2048, 1), 1, None),
    ("vtkMRMLLabelMapVolumeNode", (256, 256, 1), 1, "not a LabelMapVolumeNode"),
    ("vtkMRMLScalarVolumeNode", (512, 512, 120), 1, "3D volume (512 x 512 x 120)"),
    ("vtkMRMLScalarVolumeNode", (640, 480, 1), 3, "3 components per pixel"),
])
def test_only_one_grayscale_radiograph_enables_apply_and_the_reason_is_said(class_name, dimensions, components, words):
    problem = input_problem(class_name, dimensions, components)
    assert problem is None if words is None else words in problem


def test_progress_text_estimates_what_remains_once_it_can():
    assert progress_text(0.0, 0.0) == "0% - 0 s elapsed"
    assert progress_text(0.25, 30.0) == "25% - 30 s elapsed, about 1 min 30 s left"
    assert progress_text(1.0, 125.0) == "100% - 2 min 05 s elapsed"


def test_cancel_ends_the_whole_process_tree():
    script = ("import subprocess, sys, time\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              "print(child.pid, flush=True)\n"
              "time.sleep(60)\n")
    process = BackendProcess([sys.executable, "-c", script])
    process.start()
    deadline = time.monotonic() + 20
    lines = []
    while not lines and time.monotonic() < deadline:
        lines = process.poll()
        time.sleep(0.05)
    grandchild = int(lines[0])
    process.cancel()
    assert process.returncode == EXIT_CANCELLED
    time.sleep(0.5)
    assert not _alive(grandchild) and not _alive(process.pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split()[2] == "Z")  # a zombie is dead


@pytest.mark.slow
def test_the_self_test_parameters_certify_the_sample_lungs_through_the_module_command(tmp_path):
    """CertSegTest's backend call, minus Slicer: the exported sample volume with its DICOM as reference."""
    from certseg.dicom.reading import read_radiograph

    image = tmp_path / "exported.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(read_radiograph(SAMPLE_CR).pixels[None].astype(np.int16)), str(image))
    process = BackendProcess(backend_command(sys.executable, image, tmp_path / "out", SELF_TEST_REQUEST,
                                             SELF_TEST_OPTIONS, reference_dicom=SAMPLE_CR))
    process.start()
    events = run_to_end(process, timeout=300)
    assert process.returncode == 0, events
    report = Report.read(tmp_path / "out" / "report.json")
    lungs = [s for s in report.structures if s.name.endswith("lung")]
    assert len(lungs) == 2 and all(s.certified_pixels > 0 for s in lungs)


def test_the_module_command_runs_the_real_backend(tmp_path, random_models):
    image = tmp_path / "input.nrrd"
    volume = sitk.GetImageFromArray(chest_pixels()[None].astype(np.int16))
    volume.SetSpacing((0.7, 0.7, 1.0))
    volume.SetOrigin((-12.0, 30.0, 0.0))
    sitk.WriteImage(volume, str(image))
    request, options = CertificationRequest(n0=2, n=8), RunOptions(random_models, use_denoiser=False, device="cpu")
    process = BackendProcess(backend_command(sys.executable, image, tmp_path / "out", request, options))
    process.start()
    events = run_to_end(process)
    assert process.returncode == 0, events
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress[-1] == Progress(10, 10) and all(a.done < b.done for a, b in zip(progress, progress[1:]))
    report = Report.read(tmp_path / "out" / "report.json")
    text = panel_summary(report)
    assert "Abstained:" in text and "RMS change per pixel" in text and "right lung" in text
    assert "Area (cm²)" in text and "certified range" in text
    noted = replace(report, source=replace(report.source, notes=(
        "spacing from ImagerPixelSpacing (detector plane, not corrected for magnification)",)))
    assert panel_summary(noted).startswith("Note: spacing from ImagerPixelSpacing")
    assert f"cpu in {report.execution.precision}" in text
    assert report.out_of_distribution is None  # the untrained test model folder has no detector
    lateral = SignalVerdict("lungs side by side", 0.1, 0.5, None, passed=False)
    refused = OodVerdict(method="input check", score=30.0, threshold=38.0, false_rejection_rate=0.005,
                         in_distribution=False, forced=True, signals=(lateral,), refused_by=lateral.name)
    summary = panel_summary(replace(report, out_of_distribution=refused))
    assert "does NOT look like a frontal chest radiograph" in summary
    assert "refused by lungs side by side 0.1, accepted at least 0.5" in summary
    assert report.source.pixel_spacing_mm == (0.7, 0.7)


def test_a_file_loaded_volume_is_gated_through_its_storage_file_only_when_that_is_dicom(small_cr, tmp_path):
    assert dicom_file_or_none(str(small_cr)) == small_cr
    nrrd = tmp_path / "volume.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(chest_pixels()[None].astype(np.int16)), str(nrrd))
    (tmp_path / "truncated.dcm").write_bytes(small_cr.read_bytes()[:100])
    for path in (str(nrrd), str(tmp_path / "truncated.dcm"), str(tmp_path / "absent.dcm"), "", None):
        assert dicom_file_or_none(path) is None, path


def test_the_metadata_gate_checks_an_exported_volume_through_its_dicom_file(tmp_path, random_models):
    """A volume loaded from a knee CR's file: refused in one line naming the body part; forced, the override,
    the tags checked and the spacing caveat reach the report and the panel. Without a DICOM file: 'not checked'."""
    from certseg.research.sample_cr import cr_dataset

    knee = cr_dataset(chest_pixels(), imager_spacing_mm=0.15, source_to_detector_mm=1800.0, magnification=1.1, seed=4)
    knee.BodyPartExamined = "KNEE"
    del knee.PixelSpacing
    knee.save_as(tmp_path / "knee.dcm", enforce_file_format=True)
    image = tmp_path / "knee.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(chest_pixels()[None].astype(np.int16)), str(image))
    common = ["--n0", 2, "--n", 8, "--no-denoiser", "--device", "cpu", "--model-dir", random_models]
    refused = run_certseg("certify-array", image, "--out", tmp_path / "a", "--reference-dicom", tmp_path / "knee.dcm",
                          *common)
    assert refused.returncode != 0 and not (tmp_path / "a").exists()
    assert refused.stderr.count("\n") == 1 and "knee.dcm" in refused.stderr and "body part KNEE" in refused.stderr
    forced = run_certseg("certify-array", image, "--out", tmp_path / "b", "--reference-dicom", tmp_path / "knee.dcm",
                         "--force", *common)
    assert forced.returncode == 0, forced.stderr
    report = Report.read(tmp_path / "b" / "report.json")
    check = report.source.metadata_check
    assert check.checked and check.refusal == "body part KNEE is not CHEST" and "modality CR" in check.found
    text = panel_summary(report)
    assert "DICOM metadata: modality CR, body part KNEE, view PA in knee.dcm: OVERRIDDEN" in text
    assert "Note: spacing from ImagerPixelSpacing" in text  # the file's caveat, not the image file's silence
    plain = run_certseg("certify-array", image, "--out", tmp_path / "c", *common)
    assert plain.returncode == 0, plain.stderr
    report = Report.read(tmp_path / "c" / "report.json")
    assert report.source.metadata_check.checked is False
    assert "DICOM metadata: not checked" in panel_summary(report)


@pytest.mark.slow
def test_an_out_of_distribution_refusal_becomes_a_question_and_the_override_is_recorded(tmp_path):
    """A texture, not a radiograph: the shipped detector refuses it; the panel asks; --force certifies and records."""
    image = tmp_path / "texture.nrrd"
    texture = np.random.default_rng(3).integers(0, 4096, (256, 256)).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(texture[None]), str(image))
    plain_cpu = RunOptions(use_denoiser=False, device="cpu")
    refused = BackendProcess(backend_command(sys.executable, image, tmp_path / "a", CertificationRequest(n0=2, n=8),
                                             plain_cpu))
    refused.start()
    events = run_to_end(refused)
    assert refused.returncode == 3  # EXIT_OUT_OF_DISTRIBUTION: the module asks on this code, never on the text
    question = ood_refusal(events[-1], refused.returncode)
    assert question.startswith("CertSeg refused this image: does not look like a frontal chest radiograph (refused by ")
    assert "--force" not in question and "Certify it anyway?" in question
    forced = BackendProcess(backend_command(sys.executable, image, tmp_path / "b",
                                            CertificationRequest(n0=2, n=8, force=True), plain_cpu))
    forced.start()
    assert run_to_end(forced) and forced.returncode == 0
    report = Report.read(tmp_path / "b" / "report.json")
    assert report.out_of_distribution.forced is True
    assert "certified because forced" in panel_summary(report)
    assert ood_refusal("certseg: error: in.nrrd: unreadable image", 2) is None
    assert ood_refusal(events[-1], 2) is None  # the words alone are not the signal


def test_backend_command_is_accepted_by_the_real_parser():
    request = CertificationRequest(sigma=0.5, n0=3, n=50, alpha=0.01, tau=0.9, looks=(10, 50), run_seed=7, force=True)
    options = RunOptions(Path("/models"), use_denoiser=False, device="cuda", batch_size=4)
    args = backend_command("python", Path("in.nrrd"), Path("out"), request, options, Path("x.dcm"))
    parsed = parser().parse_args(args[3:])
    assert certification_request(parsed) == request  # the command line asks for exactly this request
    assert RunOptions(parsed.model_dir, not parsed.no_denoiser, parsed.device, parsed.batch_size, parsed.precision,
                      parsed.compile) == options
    assert (parsed.sigma, parsed.n0, parsed.n, parsed.alpha, parsed.tau) == (0.5, 3, 50, 0.01, 0.9)
    assert parsed.no_denoiser and parsed.progress_lines and parsed.device == "cuda"
    assert parsed.model_dir == Path("/models") and parsed.reference_dicom == Path("x.dcm")


def test_the_alpha_range_is_what_the_spin_box_can_show():
    node = next(n for n in _module_tree().body if isinstance(n, ast.ClassDef) and n.name == "CertSegParameterNode")
    alpha = next(item for item in node.body if isinstance(item, ast.AnnAssign) and item.target.id == "alpha")
    low = ast.literal_eval(alpha.annotation.slice.elts[1].args[0])
    ui = ElementTree.parse(MODULE_DIR / "Resources" / "UI" / "CertSeg.ui")
    box = next(w for w in ui.iter("widget") if w.get("name") == "alphaSpinBox")
    properties = {p.get("name"): p[0].text for p in box.iter("property")}
    assert float(properties["minimum"]) == low and 10 ** -int(properties["decimals"]) <= low


def _module_tree():
    return ast.parse((MODULE_DIR / "CertSeg.py").read_text())


def test_module_defines_module_widget_logic_test_and_parameter_node():
    classes = {node.name: node for node in _module_tree().body if isinstance(node, ast.ClassDef)}
    for name in ("CertSeg", "CertSegParameterNode", "CertSegWidget", "CertSegLogic", "CertSegTest"):
        assert name in classes, name
    test_methods = {n.name for n in classes["CertSegTest"].body if isinstance(n, ast.FunctionDef)}
    assert {"runTest", "test_CertifySampleRadiograph", "test_CancelLeavesNothingBehind"} <= test_methods
    compile((MODULE_DIR / "CertSeg.py").read_text(), "CertSeg.py", "exec")


def test_every_bound_widget_names_a_parameter_and_every_parameter_is_bound():
    node = next(n for n in _module_tree().body if isinstance(n, ast.ClassDef) and n.name == "CertSegParameterNode")
    parameters = {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}
    ui = ElementTree.parse(MODULE_DIR / "Resources" / "UI" / "CertSeg.ui")
    bound = {p.find("string").text for p in ui.iter("property") if p.get("name") == "SlicerParameterName"}
    assert bound == parameters


@pytest.fixture
def random_models(tmp_path):
    """Untrained networks of the shipped architecture in a model folder (fast, for plumbing tests)."""
    from certseg.dicom.codes import class_card, label_card
    from certseg.model.cards import ClassEntry, InputSpec, LabelEntry, SegmenterCard, entries
    from certseg.model.networks import save_segmenter
    from certseg.research.architectures import DEFAULT_SEGMENTER_ARCHITECTURE, default_segmenter_network

    folder = tmp_path / "models"
    network, _ = default_segmenter_network()
    save_segmenter(network, SegmenterCard("untrained", "0", DEFAULT_SEGMENTER_ARCHITECTURE,
                                          entries(LabelEntry, label_card()), InputSpec(256),
                                          classes=entries(ClassEntry, class_card())), folder / "segmenter")
    return folder


def test_the_extension_build_ships_every_module_file():
    module = Path(__file__).parents[1] / "CertSeg"
    cmake = (module / "CMakeLists.txt").read_text()
    for path in [*module.glob("CertSegLib/*.py"), *module.glob("*.py")]:
        assert str(path.relative_to(module)).replace("${MODULE_NAME}", "CertSeg") in cmake.replace(
            "${MODULE_NAME}", "CertSeg"), path


@pytest.fixture(scope="module")
def backend_seg(tmp_path_factory):
    """A chest CR and the DICOM SEG `certify` wrote for it (shipped models)."""
    from support.dicom_files import write_cr_with_spacing

    folder = tmp_path_factory.mktemp("backend_seg")
    source = write_cr_with_spacing(folder / "cr.dcm", "calibrated", seed=51)
    run = run_certseg("certify", source, "--out", folder / "out", "--no-denoiser", "--n0", "2", "--n", "80", "--quiet",
                      "--force")
    assert run.returncode == 0, run.stderr
    return source, next((folder / "out").rglob("seg.dcm"))


def seg_as_earlier_versions_wrote_it(seg_path: Path, path: Path) -> Path:
    """The SEG in the layout CertSeg wrote before it placed its plane: no Frame of Reference, no plane position
    or orientation, one dimension (the segment number); such SEGs are in PACS archives."""
    import pydicom

    dataset = pydicom.dcmread(seg_path)
    for keyword in ("FrameOfReferenceUID", "PositionReferenceIndicator"):
        dataset.pop(keyword)
    del dataset.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence
    for frame in dataset.PerFrameFunctionalGroupsSequence:
        del frame.PlanePositionSequence
        frame.FrameContentSequence[0].DimensionIndexValues = frame.FrameContentSequence[0].DimensionIndexValues[0]
    dataset.DimensionIndexSequence = dataset.DimensionIndexSequence[:1]
    dataset.PatientOrientation = ""  # Type 2C without a plane, as those versions wrote it
    dataset.save_as(path)
    return path


@pytest.mark.parametrize("layout", ["current", "earlier"])
def test_the_dicom_plugin_reads_segs_of_every_version_the_same(backend_seg, layout, tmp_path):
    from CertSegLib.seg_reader import read_certseg_seg

    _, seg_path = backend_seg
    path = seg_path if layout == "current" else seg_as_earlier_versions_wrote_it(seg_path, tmp_path / "earlier.dcm")
    if layout == "earlier":
        from support.tools import require_tool

        check = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True)
        assert not [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
    read, current = read_certseg_seg(path), read_certseg_seg(seg_path)
    assert [layer.name for layer in read.segments] == [layer.name for layer in current.segments]
    for layer, reference in zip(read.segments, current.segments):
        np.testing.assert_array_equal(layer.mask, reference.mask)
    assert read.referenced_sop_instance_uid == current.referenced_sop_instance_uid


def test_the_dicom_plugin_reads_back_the_seg_the_backend_wrote(backend_seg, tmp_path):
    """The plugin's reading half, outside Slicer: every segment's mask, colour and terminology, and the
    radiograph it lies on, from a SEG `certseg certify` wrote."""
    import ast as ast_module

    import pydicom
    import slicerio

    from CertSegLib.seg_reader import read_certseg_seg, referenced_instance_uid
    from support.seg_nrrd import segment_mask

    source, seg_path = backend_seg
    seg = read_certseg_seg(seg_path)
    assert seg.referenced_sop_instance_uid == referenced_instance_uid(seg_path) == pydicom.dcmread(source).SOPInstanceUID
    assert all(layer.certified for layer in seg.segments) and seg.model.name == "certseg-cxr-unet"
    nrrd = slicerio.read_segmentation(str(seg_path.parent / "certseg.seg.nrrd"))
    by_name = {s["name"]: s for s in nrrd["segments"]}
    assert [layer.name for layer in seg.segments] == [s["name"] for s in nrrd["segments"]]
    for layer in seg.segments:
        np.testing.assert_array_equal(layer.mask, segment_mask(nrrd, layer.name).T)  # (rows, columns)
        np.testing.assert_allclose(layer.color, by_name[layer.name]["color"], atol=0.02)
    lung = next(layer for layer in seg.segments if layer.name == "certified right lung")
    assert lung.terminology == ("Segmentation category and type - DICOM master list~SCT^91723000^Anatomical Structure"
                                "~SCT^39607008^Lung~SCT^24028007^Right~Anatomic codes - DICOM master list~^^~^^")
    dataset = pydicom.dcmread(seg_path)
    dataset.Manufacturer = "Someone else"
    dataset.save_as(tmp_path / "other.dcm")
    with pytest.raises(ValueError, match="not a DICOM SEG written by CertSeg"):
        read_certseg_seg(tmp_path / "other.dcm")
    plugin = ast_module.parse((Path(__file__).parents[1] / "CertSeg" / "CertSegDICOMPlugin.py").read_text())
    assert {"CertSegDICOMPluginClass", "CertSegDICOMPlugin"} <= {n.name for n in plugin.body
                                                                 if isinstance(n, ast_module.ClassDef)}


def test_a_reviewed_segmentation_goes_back_as_seg_that_marks_what_the_reader_changed(backend_seg, tmp_path):
    """The plugin's export half, outside Slicer: the backend's SEG as Slicer would hold it, one lung trimmed and a
    segment added by the reader; the reviewed SEG keeps the untouched segments certified and names the others."""
    import pydicom

    from certseg.dicom.reading import read_radiograph
    from certseg.dicom.seg import write_reviewed_seg
    from CertSegLib.review import SlicerSegment, mask_digest, reviewed_segments
    from CertSegLib.seg_reader import read_certseg_seg
    from support.tools import require_tool

    source, seg_path = backend_seg
    seg = read_certseg_seg(seg_path)
    certified = {layer.name: mask_digest(layer.mask) for layer in seg.segments}
    current = [SlicerSegment(layer.name, layer.mask.copy(), layer.color, layer.terminology) for layer in seg.segments]
    lung = next(segment for segment in current if segment.name == "certified right lung")
    rows = np.flatnonzero(lung.mask.any(axis=1))
    lung.mask[: (rows[0] + rows[-1]) // 2] = 0  # the reader trims the lung's upper half
    nodule = np.zeros_like(lung.mask)
    nodule[100:110, 80:90] = 1
    current.append(SlicerSegment("nodule", nodule, (1.0, 0.0, 0.0), ""))
    write_reviewed_seg(tmp_path / "reviewed.dcm", read_radiograph(source, force=True),
                       reviewed_segments(current, certified), seg.model)

    back = read_certseg_seg(tmp_path / "reviewed.dcm")
    by_name = {layer.name: layer for layer in back.segments}
    assert set(by_name) == {name for name in certified if name != "certified right lung"} | {
        "right lung (edited, not certified)", "nodule (added, not certified)"}
    assert [layer.name for layer in back.segments if not layer.certified] == [
        "right lung (edited, not certified)", "nodule (added, not certified)"]
    for segment in current:
        name = segment.name if segment.name in by_name else next(n for n in by_name if n.startswith(
            segment.name.removeprefix("certified ")))
        np.testing.assert_array_equal(by_name[name].mask, segment.mask > 0)
    assert "~SCT^39607008^Lung~SCT^24028007^Right~" in by_name["right lung (edited, not certified)"].terminology
    assert "~SCT^85756007^Tissue~SCT^85756007^Tissue~" in by_name["nodule (added, not certified)"].terminology
    assert back.model == seg.model and back.series_description == "CertSeg segmentation, reviewed"
    dataset = pydicom.dcmread(tmp_path / "reviewed.dcm")
    assert dataset.StudyInstanceUID == pydicom.dcmread(source).StudyInstanceUID
    assert dataset.SeriesInstanceUID != pydicom.dcmread(seg_path).SeriesInstanceUID  # the certified SEG stays
    check = subprocess.run([require_tool("dciodvfy"), str(tmp_path / "reviewed.dcm")], capture_output=True, text=True)
    errors = [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
    assert not errors, errors


def test_mask_digests_tell_every_changed_pixel_and_terminology_parses_as_slicer_writes_it():
    from CertSegLib.review import TISSUE, mask_digest, terminology_codes

    mask = np.zeros((6, 5), bool)
    mask[2:4, 1:3] = True
    assert mask_digest(mask) == mask_digest(mask.astype(np.uint8))  # the pixels, not the dtype
    moved = mask.copy()
    moved[0, 0] = True
    assert mask_digest(moved) != mask_digest(mask)
    assert mask_digest(np.zeros((6, 5))) != mask_digest(np.zeros((5, 6)))  # the grid counts
    category, kind, modifier = terminology_codes(
        "Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure~SCT^51299004^Clavicle"
        "~SCT^7771000^Left~Anatomic codes - DICOM master list~^^~^^")
    assert (category.value, kind.value, kind.meaning, modifier.value) == (
        "123037004", "51299004", "Clavicle", "7771000")
    assert terminology_codes("") == (TISSUE, TISSUE, None)
    assert terminology_codes("ctx~^^~^^~^^")[0] == TISSUE


def test_the_plugin_offers_to_certify_what_the_backend_gate_takes():
    from certseg.dicom.reading import chest_radiograph_refusal

    def offered(modality, body_part, view):
        return chest_radiograph_refusal({"Modality": modality, "BodyPartExamined": body_part,
                                         "ViewPosition": view}) is None

    assert offered("CR", "CHEST", "PA") and offered("DX", "", "AP") and offered("CR", "", "")
    assert not offered("CT", "CHEST", "") and not offered("CR", "KNEE", "AP") and not offered("DX", "CHEST", "LL")


def test_the_pip_constraints_pin_what_slicer_ships_and_pip_then_refuses_to_replace_it(tmp_path):
    """Real pip, no index: pinned, a request for another numpy is a resolution conflict (refused); unpinned it
    would only be 'not found' here, and fetched from PyPI on a user's machine."""
    import subprocess

    from CertSegLib.dependencies import PROTECTED_PACKAGES, installed_version, protected_constraints

    text = protected_constraints(installed_version)
    pinned = dict(line.split("==") for line in text.split())
    assert {"torch", "numpy", "pydicom"} <= set(pinned) <= set(PROTECTED_PACKAGES)
    assert pinned["numpy"] == np.__version__
    assert protected_constraints(lambda name: None) == "\n"
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(text)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    attempt = lambda *extra: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--isolated", *extra,
         f"numpy!={np.__version__}"], capture_output=True, text=True, env=env)
    assert "ResolutionImpossible" in attempt("-c", str(constraints)).stderr
    assert "ResolutionImpossible" not in attempt().stderr


def test_a_batch_certifies_one_at_a_time_goes_on_after_a_refusal_and_cancel_drops_the_rest():
    queue = BatchQueue()
    first, second, third = object(), object(), object()
    assert queue.add(first, "CR 1") and queue.add(second, "CR 2") and queue.add(third, "CR 3")
    assert not queue.add(first, "CR 1")  # already waiting
    assert queue.start_next().node is first and queue.start_next() is None  # one at a time
    queue.finish(ItemStatus.CERTIFIED, "abstained 2.5%")
    assert queue.start_next().node is second
    queue.finish(ItemStatus.REFUSED, "does not look like a chest radiograph")
    assert queue.start_next().node is third and not queue.done
    queue.cancel()
    assert queue.done and queue.start_next() is None
    assert queue.summary().splitlines() == [
        "CR 1: certified - abstained 2.5%", "CR 2: refused - does not look like a chest radiograph",
        "CR 3: cancelled", "3 radiographs: 1 certified, 1 refused, 1 cancelled"]
    with pytest.raises(RuntimeError):
        queue.finish(ItemStatus.CERTIFIED)
    queue.clear_finished()
    assert queue.items == [] and queue.add(first, "CR 1")  # a finished radiograph may be certified again


def test_kept_results_go_to_a_new_folder_named_after_the_volume_and_never_overwrite(tmp_path):
    when = datetime(2026, 11, 24, 9, 30, 5)
    folder = kept_result_folder(tmp_path, "Pat: Doe/CR 1", when)
    assert folder == tmp_path / "Pat_Doe_CR_1-20261124-093005" and not folder.exists()
    folder.mkdir()
    assert kept_result_folder(tmp_path, "Pat: Doe/CR 1", when) == tmp_path / "Pat_Doe_CR_1-20261124-093005-2"
    assert kept_result_folder(tmp_path, "../..", when).parent == tmp_path


def test_a_batch_line_gives_abstention_and_the_ratio_interval(certified_sample):
    report = Report.read(certified_sample[2] / "report.json")
    report = replace(report, source_grid=replace(report.source_grid, abstain_fraction=0.025))

    def with_ratio(low, high):
        verdict = ratio_verdict(low, high)
        ratio = RatioMeasurement(low, high, 0.45, verdict, verdict.words, "definition")
        return replace(report, measurements=replace(report.measurements, cardiothoracic_ratio=ratio))

    assert batch_detail(with_ratio(0.41, 0.47)) == ("abstained 2.5%, cardiothoracic ratio 0.41-0.47, below 0.5 for "
                                                    "every image within the radius")
    assert batch_detail(with_ratio(None, None)) == ("abstained 2.5%, cardiothoracic ratio not certified (no certified "
                                                    "heart or no certified lung)")
    no_ratio = replace(report, measurements=replace(report.measurements, cardiothoracic_ratio=None))
    assert batch_detail(no_ratio) == "abstained 2.5%"


def test_reload_forgets_certseglib_and_the_backend_so_edits_are_picked_up(tmp_path):
    """In a fresh interpreter: import both, edit a copy of a CertSegLib module, forget, import again: the edit shows."""
    import shutil

    library = tmp_path / "CertSeg"
    shutil.copytree(Path(__file__).parents[1] / "CertSeg" / "CertSegLib", library / "CertSegLib")
    code = f"""
import sys
sys.path.insert(0, {str(library)!r})
import certseg.report, CertSegLib.batch
from CertSegLib.reload import forget_own_modules
open({str(library / 'CertSegLib' / 'batch.py')!r}, 'a').write('\\nEDITED = True\\n')
forgotten = forget_own_modules()
assert 'certseg.report' in forgotten and 'CertSegLib.batch' in forgotten, forgotten
import CertSegLib.batch
print(CertSegLib.batch.EDITED)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr
