"""Limits on what is decoded, not only on what is received: a small object may say it is a huge one.

Two ways a few hundred kilobytes become gigabytes: a dataset in the Deflated transfer syntax (zlib
inflates 1,000:1 and more), and pixel data whose header declares more rows x columns x samples x
frames than the bytes sent (a codec allocates what the header declares).  The listener checks both
before pydicom decodes anything; `certify` checks both before it reads a file's header.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pydicom
from pydicom.uid import DeflatedExplicitVRLittleEndian

MAX_PIXELS = 12000 * 12000  # larger than any chest detector
MAX_INFLATED_BYTES = 512 * 2**20  # a Deflated radiograph of MAX_PIXELS at 16 bits is 288 MB
INFLATE_CHUNK = 2**20
MAX_HEADER_SCAN_BYTES = 1 << 20  # the frame header lies within the first fragment's first megabyte


def inflates_beyond(deflated: bytes | memoryview, limit: int) -> bool:
    """Whether a raw-deflate stream (PS3.5 A.5) inflates to more than `limit` bytes, found in bounded memory."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total, pending = 0, memoryview(deflated)
    try:
        while pending:
            total += len(inflater.decompress(pending, INFLATE_CHUNK))
            if total > limit:
                return True
            pending = memoryview(inflater.unconsumed_tail)
        return total + len(inflater.flush(limit + 1 - total)) > limit
    except zlib.error:
        return False  # not a bomb: a broken stream, which decoding reports as malformed


def file_inflates_beyond(path: Path, limit: int) -> bool:
    """A DICOM file in the Deflated transfer syntax whose dataset inflates beyond `limit` bytes."""
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
    except Exception:  # noqa: BLE001 - not DICOM or damaged: the reader says so later, without inflating
        return False
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return False
    with open(path, "rb") as stream:
        pydicom.filereader.read_preamble(stream, False)
        pydicom.filereader._read_file_meta_info(stream)  # noqa: SLF001 - positions the stream after the meta
        return inflates_beyond(stream.read(), limit)


def declared_pixel_bytes(dataset: pydicom.Dataset) -> int:
    """Bytes a decoder allocates for the pixel data the header describes (0 when it describes none)."""
    try:
        rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
        samples = int(dataset.get("SamplesPerPixel", 1) or 1)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        bits = int(dataset.get("BitsAllocated", 8) or 8)
    except (TypeError, ValueError):
        return 0
    return max(rows, 0) * max(columns, 0) * max(samples, 1) * max(frames, 1) * ((max(bits, 1) + 7) // 8)


# -- what the codec will allocate: the codestream's own size, read before decoding --------------------------
# A decoder sizes its output from the codestream, not from the DICOM header: a header saying 2048 x 2048 in
# front of a JPEG 2000 codestream saying 20000 x 20000 costs what the codestream says.  So before pixels are
# decoded, the first frame's codestream is parsed for its size (JPEG 2000 SIZ, JPEG SOF, JPEG-LS SOF55) and
# must agree with the header, whose size the limits above have already bounded.  RLE's decoder sizes its
# output from the header alone.

JPEG_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}  # F7: JPEG-LS
J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
MARKERS_WITHOUT_LENGTH = {0xD8, 0x01, *range(0xD0, 0xD8)}  # SOI, TEM, RSTn


def codestream_size(fragment: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) the codestream of a compressed frame declares; None: not one we parse."""
    if fragment.startswith(b"\xff\xd8"):
        return _jpeg_size(fragment)
    start = fragment.find(J2K_SOC_SIZ)  # a raw codestream, or one inside a JP2 box
    if start >= 0 and len(fragment) >= start + 42:
        x, y, x_offset, y_offset = struct.unpack(">4I", fragment[start + 8:start + 24])
        components = struct.unpack(">H", fragment[start + 40:start + 42])[0]
        return max(y - y_offset, 0), max(x - x_offset, 0), components
    return None


def _jpeg_size(fragment: bytes) -> tuple[int, int, int] | None:
    """Walk the JPEG (or JPEG-LS) marker segments up to the frame header."""
    position = 2
    while position + 4 <= len(fragment):
        if fragment[position] != 0xFF:
            return None
        marker = fragment[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in MARKERS_WITHOUT_LENGTH:
            position += 2
            continue
        length = struct.unpack(">H", fragment[position + 2:position + 4])[0]
        if marker in JPEG_SOF_MARKERS and position + 10 <= len(fragment):
            rows, columns = struct.unpack(">HH", fragment[position + 5:position + 9])
            return rows, columns, fragment[position + 9]
        if marker == 0xDA:  # start of scan before any frame header: not a JPEG we can size
            return None
        position += 2 + length
    return None


def codestream_problem(dataset: pydicom.Dataset, transfer_syntax: str | None = None) -> str | None:
    """Why the first frame's codestream does not match the header (None: it does, or is not compressed).

    `transfer_syntax`: the one the object came in (a C-STORE's context); default: the file meta's."""
    syntax = transfer_syntax or getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or not pydicom.uid.UID(syntax).is_encapsulated or "PixelData" not in dataset:
        return None
    from pydicom.encaps import generate_fragments

    try:  # the first item is the Basic Offset Table (PS3.5 A.4), the second begins the first frame
        items = generate_fragments(dataset.PixelData)
        next(items, b"")
        fragment = next(items, b"")
    except (ValueError, TypeError) as error:
        return f"encapsulated pixel data without a readable first fragment ({str(error)[:120]})"
    size = codestream_size(bytes(fragment[:MAX_HEADER_SCAN_BYTES]))
    if size is None:
        return None  # RLE, or a codestream we cannot size: its decoder's own checks and the header limits hold
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if (size[0], size[1]) != (rows, columns) or size[2] > samples:
        return (f"the codestream declares {size[0]} x {size[1]} pixels, {size[2]} component(s), where the header "
                f"says {rows} x {columns}, {samples}: refused before decoding")
    return None
