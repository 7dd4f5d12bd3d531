"""The coded vocabulary of CertSeg's DICOM objects: the JSRT/SCR structures, abstention, and the SR's concepts.

Anatomy is coded in SNOMED CT as DICOM SEG and Slicer terminologies expect: category
"Anatomical Structure", a type, and a laterality modifier where needed.  Abstention and the
cardiothoracic ratio have no standard code; they carry private codes in scheme 99CERTSEG
(documented in docs/reference.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.sr.coding import Code

from certseg.core.labels import ABSTAIN, ClassTable
from certseg.record import RatioVerdict

ANATOMICAL_STRUCTURE = Code("123037004", "SCT", "Anatomical Structure")
RIGHT = Code("24028007", "SCT", "Right")
LEFT = Code("7771000", "SCT", "Left")
LUNG = Code("39607008", "SCT", "Lung")
HEART = Code("80891009", "SCT", "Heart")
CLAVICLE = Code("51299004", "SCT", "Clavicle")

ABSTAINED_CATEGORY = Code("CERTOUTCOME", "99CERTSEG", "Certification outcome")
ABSTAINED_TYPE = Code("ABSTAINED", "99CERTSEG", "Certification abstained")
ABSTAINED_COLOR = (255, 0, 255)

CHEST_XRAY = Code("399208008", "SCT", "Plain chest X-ray")
CARDIOTHORACIC_RATIO = Code("CTR", "99CERTSEG", "Cardiothoracic ratio")  # no standard code found for the ratio
RATIO_VERDICT = Code("CTRVERDICT", "99CERTSEG", "Cardiothoracic ratio against 0.5 within the certified radius")
RATIO_VERDICT_VALUES = {
    RatioVerdict.BELOW: Code("CTRBELOW", "99CERTSEG", "Below 0.5 for every image within the radius"),
    RatioVerdict.ABOVE: Code("CTRABOVE", "99CERTSEG", "Above 0.5 for every image within the radius"),
    RatioVerdict.UNDECIDED: Code("CTRUNDECIDED", "99CERTSEG", "Undecided: the certified interval contains 0.5"),
    RatioVerdict.NOT_CERTIFIED: Code("CTRNOTCERT", "99CERTSEG", "Not certified: no certified heart or no certified lung"),
}


@dataclass(frozen=True)
class Structure:
    value: int  # the label value in the shipped models
    name: str
    type: Code
    modifier: Code | None  # laterality
    color: tuple[int, int, int]  # display colour, RGB 0-255


STRUCTURES = (
    Structure(1, "right lung", LUNG, RIGHT, (128, 174, 128)),
    Structure(2, "left lung", LUNG, LEFT, (111, 184, 210)),
    Structure(3, "heart", HEART, None, (206, 110, 84)),
    Structure(4, "right clavicle", CLAVICLE, RIGHT, (241, 214, 145)),
    Structure(5, "left clavicle", CLAVICLE, LEFT, (216, 191, 216)),
)
# The shipped models' classes: SCR's structures as its authors drew them.  Lungs and clavicles
# overlap (SCR's clavicle masks cross its lung masks), so a lung under its clavicle is a class of
# its own that stands for both; lungs and heart stay apart (SCR's lungs exclude the heart).
CLASS_TABLE = ClassTable(((), (1,), (2,), (3,), (4,), (5,), (1, 4), (2, 5)))
NUM_CLASSES = CLASS_TABLE.num_classes


@dataclass(frozen=True)
class Segment:
    """One segment of a result: a certified structure, or the abstained region."""

    name: str
    value: int
    mask: np.ndarray
    color: tuple[int, int, int]
    category: Code
    type: Code
    modifier: Code | None


def segments(labels: np.ndarray, table: ClassTable) -> list[Segment]:
    """What to draw and encode: each certified structure that has pixels, then Abstained (always).

    `labels` holds class values of `table`; a structure's mask is every pixel of a class standing for it,
    so masks overlap where structures do (a clavicle over a lung is in both)."""
    found = [Segment(f"certified {s.name}", s.value, table.mask(labels, s.value), s.color, ANATOMICAL_STRUCTURE,
                     s.type, s.modifier) for s in STRUCTURES]
    return [s for s in found if s.mask.any()] + [
        Segment("Abstained", ABSTAIN, labels == ABSTAIN, ABSTAINED_COLOR, ABSTAINED_CATEGORY,
                ABSTAINED_TYPE, None)]


def class_card(table: ClassTable = CLASS_TABLE) -> list[dict]:
    """The class table as stored in a model card and a dataset card (JSON-ready)."""
    return table.card()


def label_card() -> list[dict]:
    """The label list as stored in a model card (JSON-ready)."""
    def code(value: Code | None) -> list[str] | None:
        return None if value is None else [value.value, value.scheme_designator, value.meaning]

    return [{"value": 0, "name": "background"}] + [
        {"value": s.value, "name": s.name, "type": code(s.type), "modifier": code(s.modifier), "color": list(s.color)}
        for s in STRUCTURES]
