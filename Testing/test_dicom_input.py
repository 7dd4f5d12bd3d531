"""Reading what a PACS exports: transfer syntaxes, photometry, geometry, and hostile files."""

import zipfile

import numpy as np
import pydicom
import pytest
from pydicom.fileset import FileSet

from certseg.dicom.reading import Radiograph, Skipped, candidate_files, read_radiograph
from certseg.errors import CertSegError
from support.dicom_files import hostile_files
from support.tools import run_tool

# (DCMTK command and options, lossless?)  Together: every transfer syntax CertSeg promises to read.
TRANSFER_SYNTAXES = {
    "implicit VR little endian": (["dcmconv", "+ti"], True),
    "explicit VR big endian": (["dcmconv", "+tb"], True),
    "deflated": (["dcmconv", "+td"], True),
    "RLE lossless": (["dcmcrle"], True),
    "JPEG baseline (8 bit)": (["dcmcjpeg", "+eb"], False),
    "JPEG extended (12 bit)": (["dcmcjpeg", "+ee"], False),
    "JPEG lossless (process 14)": (["dcmcjpeg", "+el"], True),
    "JPEG lossless SV1": (["dcmcjpeg", "+e1"], True),
    "JPEG-LS lossless": (["dcmcjpls", "+el"], True),
    "JPEG-LS near-lossless": (["dcmcjpls", "+en"], False),
}


@pytest.mark.parametrize("name", TRANSFER_SYNTAXES)
def test_every_transfer_syntax_decodes_to_the_stored_values(name, small_cr, tmp_path):
    (command, *options), lossless = TRANSFER_SYNTAXES[name]
    converted = tmp_path / "converted.dcm"
    run_tool(command, *options, small_cr, converted)
    original = read_radiograph(small_cr)
    result = read_radiograph(converted)
    assert isinstance(result, Radiograph), getattr(result, "reason", "")
    assert str(result.dataset.file_meta.TransferSyntaxUID) != str(original.dataset.file_meta.TransferSyntaxUID)
    if lossless:
        np.testing.assert_array_equal(result.pixels, original.pixels)
    else:  # lossy: same picture (baseline JPEG also rescales 12 bits to 8)
        correlation = np.corrcoef(result.pixels.ravel(), original.pixels.ravel())[0, 1]
        assert correlation > 0.98, f"{name}: correlation {correlation:.3f}"


@pytest.mark.parametrize("syntax", ["JPEG2000Lossless", "RLELossless"])
def test_pydicom_encoded_files_decode(syntax, small_cr, tmp_path):
    ds = pydicom.dcmread(small_cr)
    ds.compress(getattr(pydicom.uid, syntax))
    ds.save_as(tmp_path / "c.dcm")
    np.testing.assert_array_equal(read_radiograph(tmp_path / "c.dcm").pixels, read_radiograph(small_cr).pixels)


def test_monochrome1_is_inverted_within_the_header_range_and_modality_lut_applied(small_cr, tmp_path):
    ds = pydicom.dcmread(small_cr)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-1000"
    ds.WindowCenter, ds.WindowWidth = "3000", "2000"
    ds.save_as(tmp_path / "m1.dcm")
    stored = ds.pixel_array.astype(float) * 2 - 1000
    # 12 bits stored: the Modality LUT maps [0, 4095] to [-1000, 7190], so the mirror constant is 6190.
    radiograph = read_radiograph(tmp_path / "m1.dcm")
    np.testing.assert_allclose(radiograph.pixels, 6190 - stored)
    assert (radiograph.window.low, radiograph.window.high) == (6190 - 4000, 6190 - 2000)


def test_one_changed_pixel_changes_one_decoded_pixel(small_cr, tmp_path):
    """No image-wide constant may depend on the pixels: an attacker could shift every pixel at once."""
    ds = pydicom.dcmread(small_cr)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "before.dcm")
    pixels = ds.pixel_array.copy()
    pixels[0, 0] = 4095
    ds.PixelData = pixels.tobytes()
    ds.save_as(tmp_path / "after.dcm")
    difference = read_radiograph(tmp_path / "after.dcm").pixels - read_radiograph(tmp_path / "before.dcm").pixels
    assert np.count_nonzero(difference) == 1


def test_voi_window_is_used_and_unusable_ones_are_ignored(small_cr, tmp_path):
    ds = pydicom.dcmread(small_cr)
    ds.WindowCenter, ds.WindowWidth = ["1500", "2000"], ["1000", "3000"]
    ds.save_as(tmp_path / "voi.dcm")
    window = read_radiograph(tmp_path / "voi.dcm").window
    assert (window.low, window.high) == (1000, 2000)  # the first pair
    ds.WindowWidth = "0"
    ds.save_as(tmp_path / "bad.dcm")
    assert read_radiograph(tmp_path / "bad.dcm").window is None


def test_spacing_choice_and_pixel_units(small_cr, tmp_path):
    assert read_radiograph(small_cr).spacing_mm == pytest.approx((1.5 / 1.1, 1.5 / 1.1), rel=1e-5)
    ds = pydicom.dcmread(small_cr)
    del ds.PixelSpacing
    ds.save_as(tmp_path / "imager.dcm")
    imager = read_radiograph(tmp_path / "imager.dcm")
    assert imager.spacing_mm == (1.5, 1.5) and "ImagerPixelSpacing" in imager.notes[0]
    ds.ImagerPixelSpacing = [0, 0]
    ds.save_as(tmp_path / "zero.dcm")
    zero = read_radiograph(tmp_path / "zero.dcm")
    assert zero.spacing_mm is None and "pixel units" in zero.notes[0]


def test_hostile_files_get_one_reason_each(small_cr, tmp_path):
    folder = tmp_path / "hostile"
    folder.mkdir()
    for name, words in hostile_files(small_cr, folder).items():
        result = read_radiograph(folder / name)
        assert isinstance(result, Skipped), name
        assert words in result.reason, (name, result.reason)
        assert "\n" not in result.reason


def test_folders_zips_and_dicomdirs_are_searched(small_cr, tmp_path):
    nested = tmp_path / "export" / "a" / "b"
    nested.mkdir(parents=True)
    (nested / "IMG0001").write_bytes(small_cr.read_bytes())
    (tmp_path / "export" / "readme.txt").write_text("hello")
    with zipfile.ZipFile(tmp_path / "export.zip", "w") as archive:
        archive.write(nested / "IMG0001", "study/IMG0001")
    fileset = FileSet()
    fileset.add(pydicom.dcmread(small_cr))
    fileset.write(tmp_path / "media")
    for source, expected in [(tmp_path / "export", 2), (tmp_path / "export.zip", 1), (tmp_path / "media" / "DICOMDIR", 1)]:
        with candidate_files(source) as files:
            radiographs = [r for r in map(read_radiograph, files) if isinstance(r, Radiograph)]
            assert len(files) == expected and len(radiographs) == 1, source


def test_zip_slip_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as archive:
        archive.writestr("../../outside.dcm", b"x")
    with pytest.raises(CertSegError, match="outside the archive"):
        with candidate_files(tmp_path / "evil.zip"):
            pass
    assert not (tmp_path.parent / "outside.dcm").exists()


def test_a_dicomdir_cannot_point_outside_its_own_folder(small_cr, tmp_path):
    """A hostile DICOMDIR whose record names ../outside/IMG: refused, the outside file never read."""
    fileset = FileSet()
    fileset.add(pydicom.dcmread(small_cr))
    fileset.write(tmp_path / "media")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "IMG").write_bytes(small_cr.read_bytes())
    dicomdir = pydicom.dcmread(tmp_path / "media" / "DICOMDIR")
    for record in dicomdir.DirectoryRecordSequence:
        if "ReferencedFileID" in record:
            record.ReferencedFileID = ["..", "outside", "IMG"]
    dicomdir.save_as(tmp_path / "media" / "DICOMDIR")
    with pytest.raises(CertSegError, match="must be inside the DICOMDIR root"):  # pydicom's own check
        with candidate_files(tmp_path / "media" / "DICOMDIR"):
            pass
    for record in dicomdir.DirectoryRecordSequence:  # a symlink inside the media that leads out
        if "ReferencedFileID" in record:
            record.ReferencedFileID = ["LINK", "IMG"]
    dicomdir.save_as(tmp_path / "media" / "DICOMDIR")
    (tmp_path / "media" / "LINK").symlink_to(tmp_path / "outside")
    with pytest.raises(CertSegError, match="must be inside the DICOMDIR root"):
        with candidate_files(tmp_path / "media" / "DICOMDIR"):
            pass


def test_a_dicom_file_that_is_also_a_zip_is_read_as_dicom_and_never_unpacked(small_cr, tmp_path):
    import zipfile as zipmodule

    from support.dicom_files import with_zip_tail, zeros_zip

    path = with_zip_tail(small_cr, tmp_path / "tail.dcm", zeros_zip(64 * 2**20))
    assert zipmodule.is_zipfile(path) and pydicom.dcmread(path).Modality == "CR"
    with candidate_files(path) as files:
        assert files == [path]  # before: 64 MiB of zeros written to the temporary folder, and the CR lost
    assert isinstance(read_radiograph(path), Radiograph)


def test_received_files_are_never_unpacked_even_when_they_are_zips(tmp_path):
    from support.dicom_files import nested_zip

    received = tmp_path / "received"
    received.mkdir()
    (received / "object.dcm").write_bytes(nested_zip(3))
    with candidate_files(received, unpack_archives=False) as files:
        assert files == [received / "object.dcm"]


@pytest.mark.parametrize("case, words", [
    ("nested", "zip nested deeper than 3 archives"),
    ("bomb", "inflates more than 200 times its stored size"),
    ("slip", "points outside the archive"),
])
def test_hostile_zips_given_to_certify_are_one_line_and_exit_2(case, words, tmp_path):
    """A zip nested 600 deep raised RecursionError (exit 70) and a bomb filled the temporary folder."""
    from support.cli import run_certseg
    from support.dicom_files import nested_zip, zeros_zip

    archive = tmp_path / f"{case}.zip"
    if case == "nested":
        archive.write_bytes(nested_zip(600))
    elif case == "bomb":
        archive.write_bytes(zeros_zip(300 * 2**20))
    else:
        with zipfile.ZipFile(archive, "w") as opened:
            opened.writestr("../../escaped\x1b[31m.dcm", b"x")
    done = run_certseg("certify", str(archive), "--out", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and str(archive) in lines[0], done.stderr
    assert "\x1b" not in done.stderr and not (tmp_path / "out").exists()


def test_archive_limits_count_what_is_written_not_what_the_zip_declares(tmp_path):
    from certseg.dicom.archives import ArchiveLimits, UnpackBudget, unpack
    from support.dicom_files import zeros_zip

    archive = tmp_path / "a.zip"
    archive.write_bytes(zeros_zip(3 * 2**20))
    budget = UnpackBudget(ArchiveLimits(max_total_bytes=5 * 2**20, max_ratio=10_000))
    unpack(archive, tmp_path / "one", budget, depth=1)
    with pytest.raises(CertSegError, match="unpack to more than"):
        unpack(archive, tmp_path / "two", budget, depth=1)
    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as opened:
        opened.writestr("a.dcm", b"a")
        opened.writestr("b.dcm", b"b")
    with pytest.raises(CertSegError, match="more than 1 files"):
        unpack(two, tmp_path / "three", UnpackBudget(ArchiveLimits(max_members=1)), depth=1)


@pytest.mark.parametrize("encoder", [["dcmcjpls", "+el"], ["dcmcjpeg", "+el"], "JPEG2000Lossless"])
def test_a_codestream_larger_than_its_header_is_refused_before_decoding(small_cr, tmp_path, encoder):
    """The decode limits read the header; the codec allocates what the codestream says (a 104 KB JPEG 2000 whose
    codestream said 20000 x 20000 took the listener from 1.0 to 3.4 GB)."""
    compressed = tmp_path / "compressed.dcm"
    if isinstance(encoder, str):
        dataset = pydicom.dcmread(small_cr)
        dataset.compress(getattr(pydicom.uid, encoder))
        dataset.save_as(compressed, enforce_file_format=True)
    else:
        run_tool(*encoder, small_cr, compressed)
    assert isinstance(read_radiograph(compressed), Radiograph)  # the honest file still reads
    from support.dicom_files import lying_codestream

    lying = lying_codestream(compressed, tmp_path / "lying.dcm", 3000, 4000)
    skipped = read_radiograph(lying)
    assert isinstance(skipped, Skipped) and skipped.failed
    assert "the codestream declares 3000 x 4000 pixels" in skipped.reason and "refused before decoding" in skipped.reason


def test_a_radiograph_is_parsed_once_and_judged_once_and_carries_its_facts(small_cr, monkeypatch):
    """One pydicom parse and one metadata-gate verdict per read; the report and the result files take the gate's
    verdict, the units and the Slicer grid from the Radiograph instead of computing them again."""
    import certseg.dicom.reading as reading

    parses, verdicts = [], []
    parse, judge = reading.pydicom.dcmread, reading.chest_radiograph_refusal
    monkeypatch.setattr(reading.pydicom, "dcmread", lambda *a, **k: parses.append(a) or parse(*a, **k))
    monkeypatch.setattr(reading, "chest_radiograph_refusal", lambda header: verdicts.append(1) or judge(header))
    radiograph = read_radiograph(small_cr)
    assert isinstance(radiograph, Radiograph) and len(parses) == 1 and len(verdicts) == 1
    assert radiograph.metadata.checked and radiograph.metadata.refusal is None
    assert radiograph.values.units.startswith("DICOM Modality LUT output") and radiograph.values.raw_per_stored
    dataset = pydicom.dcmread(small_cr)
    assert radiograph.slicer_grid.spacing_mm == tuple(float(v) for v in dataset.ImagerPixelSpacing)
    assert np.allclose(np.diag(radiograph.slicer_ijk_to_lps)[:2], radiograph.slicer_grid.spacing_mm[::-1])
