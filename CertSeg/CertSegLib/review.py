"""What goes back to the PACS after a reader reviewed a CertSeg result in Slicer (the DICOM plugin's export).

The certificate covers the backend's own masks only; they stay in their own SEG series. When a result is
loaded, each segment's mask digest is stored on the segmentation node; at export every segment is compared
with it, and one that was edited or added is named and coded as such (certseg.dicom.seg.write_reviewed_seg).
No Slicer here: the plugin hands over plain masks, colours and terminology strings.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from pydicom.sr.coding import Code

from certseg.dicom.codes import Segment

CERTIFIED_DIGESTS_ATTRIBUTE = "CertSeg.certifiedDigests"  # JSON {segment name: mask digest}, set on load
MODEL_ATTRIBUTE = "CertSeg.model"  # JSON {"name", "version"} of the segmenter that certified the masks
# Slicer's default terminology for a segment nobody coded ("Tissue", Segmentation category and type list).
TISSUE = Code("85756007", "SCT", "Tissue")
SEGMENT_LABEL_LENGTH = 64  # Segment Label is LO


def mask_digest(mask: np.ndarray) -> str:
    """sha256 of a binary mask and its shape: equal exactly when the same pixels are set on the same grid."""
    binary = np.ascontiguousarray(np.asarray(mask) > 0)
    return hashlib.sha256(repr(binary.shape).encode() + np.packbits(binary).tobytes()).hexdigest()


@dataclass
class SlicerSegment:
    """One segment as Slicer holds it."""

    name: str
    mask: np.ndarray  # (rows, columns), nonzero inside
    color: tuple[float, float, float]  # RGB in [0, 1]
    terminology: str  # Slicer's serialized terminology entry; "" when none


def reviewed_segments(current: list[SlicerSegment], certified: dict[str, str]) -> list[tuple[Segment, bool]]:
    """Each segment coded for the reviewed SEG, with whether it changed since certification (edited or added)."""
    reviewed = []
    for number, segment in enumerate(current, start=1):
        changed = certified.get(segment.name) != mask_digest(segment.mask)
        name = segment.name
        if changed:
            status = "edited" if segment.name in certified else "added"
            suffix = f" ({status}, not certified)"
            name = segment.name.removeprefix("certified ")[: SEGMENT_LABEL_LENGTH - len(suffix)] + suffix
        category, kind, modifier = terminology_codes(segment.terminology)
        color = tuple(int(round(255 * channel)) for channel in segment.color)
        reviewed.append((Segment(name, number, np.asarray(segment.mask) > 0, color, category, kind, modifier),
                         changed))
    return reviewed


def terminology_codes(serialized: str) -> tuple[Code, Code, Code | None]:
    """Category, type and type modifier of a serialized Slicer terminology entry
    ("context~scheme^value^meaning~scheme^value^meaning~modifier~..."); Tissue when it names none."""
    fields = serialized.split("~") if serialized else []
    category, kind, modifier = (_code(fields[i]) if len(fields) > i else None for i in (1, 2, 3))
    if category is None or kind is None:
        return TISSUE, TISSUE, None
    return category, kind, modifier


def _code(field: str) -> Code | None:
    parts = field.split("^")
    if len(parts) < 3 or not parts[0] or not parts[1]:
        return None
    scheme, value, meaning = parts[0], parts[1], "^".join(parts[2:])
    return Code(value, scheme, meaning)
