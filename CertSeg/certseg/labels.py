"""The JSRT/SCR chest X-ray structure set the shipped models segment.

Anatomy is coded in SNOMED CT as DICOM SEG and Slicer terminologies expect:
category "Anatomical Structure", a type, and a laterality modifier where needed.
"""

from __future__ import annotations

ANATOMICAL_STRUCTURE = ("123037004", "SCT", "Anatomical Structure")
RIGHT = ("24028007", "SCT", "Right")
LEFT = ("7771000", "SCT", "Left")

STRUCTURES = [
    # value, name, SNOMED CT type, laterality modifier, display color (RGB 0-255)
    {"value": 1, "name": "right lung", "type": ("39607008", "SCT", "Lung"), "modifier": RIGHT, "color": (128, 174, 128)},
    {"value": 2, "name": "left lung", "type": ("39607008", "SCT", "Lung"), "modifier": LEFT, "color": (111, 184, 210)},
    {"value": 3, "name": "heart", "type": ("80891009", "SCT", "Heart"), "modifier": None, "color": (206, 110, 84)},
    {"value": 4, "name": "right clavicle", "type": ("51299004", "SCT", "Clavicle"), "modifier": RIGHT, "color": (241, 214, 145)},
    {"value": 5, "name": "left clavicle", "type": ("51299004", "SCT", "Clavicle"), "modifier": LEFT, "color": (216, 191, 216)},
]
NUM_CLASSES = len(STRUCTURES) + 1  # + background (value 0)


def label_card() -> list[dict]:
    """The label list as stored in a model card (JSON-ready)."""
    background = {"value": 0, "name": "background"}
    return [background] + [
        {**s, "type": list(s["type"]), "modifier": list(s["modifier"]) if s["modifier"] else None, "color": list(s["color"])}
        for s in STRUCTURES
    ]
