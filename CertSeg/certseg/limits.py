"""Limits on what is decoded, not only on what is received: a small object may say it is a huge one.

Two ways a few hundred kilobytes become gigabytes: a dataset in the Deflated transfer syntax (zlib
inflates 1,000:1 and more), and pixel data whose header declares more rows x columns x samples x
frames than the bytes sent (a codec allocates what the header declares).  The listener checks both
before pydicom decodes anything; `certify` checks both before it reads a file's header.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import pydicom
from pydicom.uid import DeflatedExplicitVRLittleEndian

MAX_PIXELS = 12000 * 12000  # larger than any chest detector
MAX_INFLATED_BYTES = 512 * 2**20  # a Deflated radiograph of MAX_PIXELS at 16 bits is 288 MB
INFLATE_CHUNK = 2**20


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
