"""The secondary capture and the one-page report: what a PACS viewer without SEG support shows.

Built for the shipped sample by `certseg certify`; validated with dciodvfy, read back with highdicom and
pydicom, the PDF's text checked against report.json (pypdf) and its page rendered (pypdfium2)."""

import json
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest

from support.cli import run_certseg as certseg
from support.dicom_files import SAMPLE_CR
from support.tools import require_tool

FAST = ["--n0", "2", "--n", "80", "--quiet", "--no-denoiser"]


@pytest.fixture(scope="module")
def sample(certified_sample):
    _, source, folder = certified_sample
    return source, folder, json.loads((folder / "report.json").read_text())


@pytest.mark.parametrize("name", ["capture.dcm", "report-pdf.dcm"])
def test_both_objects_pass_dciodvfy(sample, name):
    _, folder, _ = sample
    check = subprocess.run([require_tool("dciodvfy"), str(folder / name)], capture_output=True, text=True)
    errors = [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
    assert not errors, errors


def test_the_secondary_capture_is_the_radiograph_with_the_certificate_burned_in(sample):
    source, folder, report = sample
    capture = hd.imread(folder / "capture.dcm")  # highdicom's reader of any image
    assert (capture.Rows, capture.Columns) == (source.Rows, source.Columns)  # its own resolution
    assert capture.PhotometricInterpretation == "RGB" and capture.Modality == "OT"
    assert capture.StudyInstanceUID == source.StudyInstanceUID and capture.SeriesInstanceUID != source.SeriesInstanceUID
    assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert capture.BurnedInAnnotation == "YES" and capture.PatientID == source.PatientID
    pixels = capture.pixel_array
    labels_in_color = np.abs(pixels[..., 0].astype(int) - pixels[..., 1]) + np.abs(pixels[..., 1].astype(int) - pixels[..., 2])
    assert (labels_in_color > 20).mean() > 0.1  # tinted structures, not a grey copy
    banner = pixels[: source.Rows // 25]
    assert ((banner[..., 0] > 200) & (banner[..., 2] < 80)).any()  # the yellow "research only" line
    assert (pixels[..., :][: source.Rows // 80] < 10).all(axis=-1).mean() > 0.5  # on black


def test_the_report_page_says_what_report_json_says(sample):
    from pypdf import PdfReader

    _, folder, report = sample
    reader = PdfReader(folder / "report.pdf")
    assert len(reader.pages) == 1
    text = " ".join(reader.pages[0].extract_text().split())
    assert "RESEARCH ONLY - NOT FOR CLINICAL USE" in text
    for structure in report["measurements"]["structures"]:
        area = structure["area_mm2"]
        assert f"{structure['name']} {area['low'] / 100:.1f} - {area['high'] / 100:.1f} {area['clean'] / 100:.1f}" in text
    ratio = report["measurements"]["cardiothoracic_ratio"]
    assert f"ratio {ratio['low']:.2f}-{ratio['high']:.2f}, {ratio['verdict_text']}" in text
    assert f"{report['source_grid']['abstain_fraction']:.1%} of the image" in text
    assert f"spectral score {report['out_of_distribution']['score']:.1f}" in text
    assert report["source"]["metadata_check"]["text"] in text
    segmenter = report["models"]["segmenter"]
    assert f"{segmenter['name']} {segmenter['version']} (sha256 {segmenter['sha256'][:12]})" in text
    assert f"definition digest {report['model_digest'][:12]}" in text
    assert f"with probability {1 - report['parameters']['alpha']:.1%}" in text and "Not covered" in text
    assert f"Patient ID: {report['source'].get('patient_id', pydicom.dcmread(SAMPLE_CR).PatientID)}" in text


def test_the_page_renders_as_one_a4_page_readable_in_grey(sample):
    import pypdfium2

    _, folder, _ = sample
    document = pypdfium2.PdfDocument(folder / "report.pdf")
    try:
        page = document[0]
        width, height = page.get_size()
        assert (round(width), round(height)) == (595, 842)  # A4 in points
        image = np.asarray(page.render(scale=1).to_pil().convert("L"), dtype=float)
    finally:
        document.close()
    assert abs(image.shape[0] - 842) <= 1 and abs(image.shape[1] - 595) <= 1
    picture = image[60:500, 40:550]
    assert picture.std() > 40  # the radiograph is there, with contrast
    assert (image > 250).mean() > 0.4  # mostly white paper: prints well


def test_the_encapsulated_pdf_holds_the_same_page_in_the_study(sample):
    source, folder, _ = sample
    document = pydicom.dcmread(folder / "report-pdf.dcm")
    assert document.SOPClassUID == pydicom.uid.EncapsulatedPDFStorage and document.Modality == "DOC"
    assert document.StudyInstanceUID == source.StudyInstanceUID
    assert document.SourceInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    pdf = (folder / "report.pdf").read_bytes()
    assert document.EncapsulatedDocument[: document.EncapsulatedDocumentLength] == pdf


def test_an_image_file_gets_the_page_but_no_dicom_objects(tmp_path, small_cr):
    import SimpleITK as sitk
    from pypdf import PdfReader

    image = sitk.GetImageFromArray(pydicom.dcmread(small_cr).pixel_array[None].astype(np.float32))
    sitk.WriteImage(image, str(tmp_path / "image.nrrd"))
    run = certseg("certify-array", tmp_path / "image.nrrd", "--out", tmp_path / "out", *FAST, "--force")
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "out" / "report.pdf").is_file() and not (tmp_path / "out" / "capture.dcm").exists()
    assert "image file (no DICOM identifiers)" in PdfReader(tmp_path / "out" / "report.pdf").pages[0].extract_text()


def test_a_clavicle_over_a_lung_reads_as_both_with_each_outline_whole(sample):
    """Tints blend where structures overlap, and every outline is drawn after every tint: the lung's edge runs
    on under the clavicle and the clavicle's edge across the lung, so grey print still shows both shapes."""
    from certseg.dicom.codes import CLASS_TABLE, STRUCTURES
    from certseg.record import Report
    from certseg.results.capture import render_capture

    _, folder, _ = sample
    report = Report.read(folder / "report.json")
    labels = np.zeros((300, 300), dtype=np.int64)
    labels[60:260, 40:140] = 1  # right lung
    labels[40:80, 20:160] = 4  # right clavicle alone where it leaves the lung
    labels[60:80, 40:140] = 6  # ... and over the lung
    window = report.intensity_window
    stored = np.full(labels.shape, (window.low + window.high) / 2)
    rgb = render_capture(stored, labels, CLASS_TABLE, report).astype(int)
    colours = {s.name: np.array(s.color) for s in STRUCTURES}
    lung_edge = (rgb == colours["right lung"]).all(axis=-1)
    clavicle_edge = (rgb == colours["right clavicle"]).all(axis=-1)
    assert lung_edge[62:78, 40].any() and lung_edge[62:78, 139].any()  # the lung's sides, under the clavicle
    assert clavicle_edge[79, 60:120].any()  # the clavicle's lower edge, across the lung
    both, lung_only, clavicle_only = rgb[70, 90], rgb[150, 90], rgb[50, 150]
    assert not np.array_equal(both, lung_only) and not np.array_equal(both, clavicle_only)
