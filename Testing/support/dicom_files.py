"""Small real DICOM files for the tests, written with pydicom: chest-like CRs, odd spacings, hostile files."""

import copy
from pathlib import Path

import numpy as np
import pydicom

from certseg.research.sample_cr import cr_dataset

SAMPLE_CR = Path(__file__).parents[2] / "CertSeg" / "Resources" / "SampleData" / "sample_cr.dcm"


def chest_pixels(rows: int = 240, columns: int = 200, seed: int = 0) -> np.ndarray:
    """A 12-bit image with chest-like structure: dark lungs either side of a bright mediastinum."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns] / np.array([rows, columns])[:, None, None]
    lungs = np.exp(-(((x - 0.3) / 0.13) ** 2 + ((y - 0.45) / 0.3) ** 2)) + np.exp(-(((x - 0.7) / 0.13) ** 2 + ((y - 0.45) / 0.3) ** 2))
    image = 3200 - 2200 * lungs + 120 * rng.standard_normal((rows, columns))
    return np.clip(image, 0, 4095).astype(np.uint16)


# Pixel spacings real chest exports carry: (PixelSpacing, ImagerPixelSpacing, PixelSpacingCalibrationType)
ODD_SPACINGS = {
    "zero": ([0, 0], [0.15, 0.15], None),
    "missing": (None, None, None),
    "imager-only": (None, [0.15, 0.15], None),
    "calibrated": ([0.139, 0.139], [0.15, 0.15], "GEOMETRY"),
}


def write_cr_with_spacing(path: Path, variant: str, seed: int = 7) -> Path:
    """A small chest CR whose spacing tags are those of ODD_SPACINGS[variant]."""
    pixel, imager, calibration = ODD_SPACINGS[variant]
    dataset = cr_dataset(chest_pixels(seed=seed), imager_spacing_mm=1.5, source_to_detector_mm=1800.0,
                         magnification=1.1, seed=seed)
    for keyword, value in (("PixelSpacing", pixel), ("ImagerPixelSpacing", imager),
                           ("PixelSpacingCalibrationType", calibration)):
        if value is None:
            dataset.pop(keyword, None)
        else:
            setattr(dataset, keyword, value)
    dataset.save_as(path, enforce_file_format=True)
    return path


def hostile_files(small_cr, folder):
    """Each bad file and the words its reason must contain (Dataset.copy is shallow: deep copies)."""
    good = pydicom.dcmread(small_cr)
    cases = {}
    data = small_cr.read_bytes()
    (folder / "truncated.dcm").write_bytes(data[: len(data) // 2])
    cases["truncated.dcm"] = "cannot decode"
    (folder / "notes.txt").write_text("not an image\n")
    cases["notes.txt"] = "not a DICOM file"
    no_pixels = copy.deepcopy(good)
    del no_pixels.PixelData
    no_pixels.save_as(folder / "nopixels.dcm")
    cases["nopixels.dcm"] = "no pixel data"
    for modality in ("CT", "MR"):
        other = copy.deepcopy(good)
        other.Modality = modality
        other.save_as(folder / f"{modality}.dcm")
        cases[f"{modality}.dcm"] = f"modality {modality}"
    knee = copy.deepcopy(good)
    knee.BodyPartExamined = "KNEE"
    knee.save_as(folder / "knee.dcm")
    cases["knee.dcm"] = "body part KNEE"
    rgb = copy.deepcopy(good)
    rgb.PhotometricInterpretation, rgb.SamplesPerPixel, rgb.PlanarConfiguration = "RGB", 3, 0
    rgb.BitsAllocated = rgb.BitsStored = 8
    rgb.HighBit = 7
    rgb.PixelData = np.zeros((240, 200, 3), np.uint8).tobytes()
    rgb["PixelData"].VR = "OB"
    rgb.save_as(folder / "rgb.dcm")
    cases["rgb.dcm"] = "not grayscale"
    frames = copy.deepcopy(good)
    frames.NumberOfFrames = 2
    frames.PixelData = good.PixelData * 2
    frames["PixelData"].VR = "OW"
    frames.save_as(folder / "multiframe.dcm")
    cases["multiframe.dcm"] = "multi-frame"
    huge = copy.deepcopy(good)
    huge.Rows = huge.Columns = 40000
    huge.save_as(folder / "huge.dcm")
    cases["huge.dcm"] = "larger than any chest detector"
    return cases


def traversal_uids(escape_to: Path) -> dict[str, str]:
    """UIDs a hostile peer or file may carry to move a result folder: relative, absolute, odd but harmless-looking."""
    return {"relative": "../../../../../../" + str(escape_to).lstrip("/"), "absolute": str(escape_to),
            "dot-dot": "..", "leading-zero": "1.2.03", "empty-component": "1.2..3", "too-long": "1." * 40 + "1"}


def write_with_uid(source: Path, path: Path, keyword: str, value: str) -> Path:
    """`source` with one of its UIDs replaced by `value` (file meta kept consistent), written unchecked."""
    dataset = pydicom.dcmread(source)
    setattr(dataset, keyword, value)
    if keyword == "SOPInstanceUID":
        dataset.file_meta.MediaStorageSOPInstanceUID = value
    with pydicom.config.disable_value_validation():
        dataset.save_as(path, enforce_file_format=True)
    return path


def write_deflate_bomb(source: Path, path: Path, inflated_bytes: int) -> Path:
    """`source` in the Deflated transfer syntax with a private OB element of `inflated_bytes` zeros after the
    pixel data: a file of a few hundred kilobytes that inflates to `inflated_bytes`.  Streamed: never in memory."""
    import struct
    import zlib

    from pydicom.filewriter import write_dataset, write_file_meta_info

    dataset = pydicom.dcmread(source)
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    encoded = pydicom.filebase.DicomBytesIO()
    encoded.is_little_endian, encoded.is_implicit_VR = True, False
    write_dataset(encoded, dataset)
    creator = b"CERTSEG TEST"
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(path, "wb") as stream:
        meta = pydicom.filebase.DicomBytesIO()
        meta.is_little_endian, meta.is_implicit_VR = True, False
        write_file_meta_info(meta, dataset.file_meta, enforce_standard=True)
        stream.write(b"\x00" * 128 + b"DICM" + meta.getvalue())
        stream.write(deflater.compress(encoded.getvalue()))
        stream.write(deflater.compress(struct.pack("<HH2sH", 0x7FE1, 0x0010, b"LO", len(creator)) + creator))
        stream.write(deflater.compress(struct.pack("<HH2sHI", 0x7FE1, 0x1010, b"OB", 0, inflated_bytes)))
        zeros, left = bytes(2**22), inflated_bytes
        while left:
            chunk = min(left, len(zeros))
            stream.write(deflater.compress(zeros[:chunk]))
            left -= chunk
        stream.write(deflater.flush())
    return path


def declared_pixel_bomb(source: Path, rows: int = 60000, columns: int = 60000) -> pydicom.Dataset:
    """`source` as RLE Lossless whose header declares rows x columns 16-bit pixels, with one tiny fragment."""
    from pydicom.encaps import encapsulate

    dataset = pydicom.dcmread(source)
    dataset.Rows, dataset.Columns = rows, columns
    dataset.PixelData = encapsulate([bytes(64)])
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.RLELossless
    return dataset


def nested_zip(depth: int, innermost: bytes = b"not dicom\n") -> bytes:
    """A zip holding a zip holding ... `depth` levels deep, each level a few hundred bytes."""
    import io
    import zipfile

    data, name = innermost, "note.txt"
    for level in range(depth):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr(name, data)
        data, name = buffer.getvalue(), f"level{level}.zip"
    return data


def zeros_zip(inflated_bytes: int, name: str = "zeros.dcm") -> bytes:
    """A zip of one member of `inflated_bytes` zeros: about a thousand times smaller than it inflates."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open(name, "w", force_zip64=True) as member:
            chunk = bytes(2**20)
            for _ in range(inflated_bytes // len(chunk)):
                member.write(chunk)
    return buffer.getvalue()


def with_zip_tail(source: Path, path: Path, archive: bytes) -> Path:
    """A valid DICOM file whose last element (private, after the pixel data) holds a zip: so the file is a zip too."""
    dataset = pydicom.dcmread(source)
    block = dataset.private_block(0x7FE1, "CERTSEG TEST", create=True)
    block.add_new(0x00, "OB", archive)
    dataset.save_as(path, enforce_file_format=True)
    return path


def lying_codestream(compressed: Path, path: Path, rows: int, columns: int) -> Path:
    """A copy of a compressed (JPEG, JPEG-LS or JPEG 2000) file whose codestream declares rows x columns while its
    header keeps the true size: what a decoder allocates follows the codestream."""
    import struct

    from pydicom.encaps import encapsulate, generate_fragments

    dataset = pydicom.dcmread(compressed)
    items = generate_fragments(dataset.PixelData)
    next(items)  # the Basic Offset Table
    frame = bytearray(b"".join(bytes(item) for item in items))
    siz = frame.find(b"\xff\x4f\xff\x51")
    if siz >= 0:  # JPEG 2000: Xsiz, Ysiz with zero offsets
        frame[siz + 8:siz + 24] = struct.pack(">4I", columns, rows, 0, 0)
    else:  # JPEG or JPEG-LS: the frame header's lines and samples per line
        position = 2
        while frame[position + 1] not in (0xC0, 0xC1, 0xC3, 0xF7):
            position += 2 + struct.unpack(">H", frame[position + 2:position + 4])[0]
        frame[position + 5:position + 9] = struct.pack(">HH", rows, columns)
    dataset.PixelData = encapsulate([bytes(frame)])
    dataset.save_as(path, enforce_file_format=True)
    return path
