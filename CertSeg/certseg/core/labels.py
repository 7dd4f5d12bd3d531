"""A segmenter's classes as the certificate and the measurements see them: a value and a name."""

from __future__ import annotations

from dataclasses import dataclass

BACKGROUND = 0
ABSTAIN = -1
"""Label of pixels on which the smoothed segmenter abstains."""


@dataclass(frozen=True)
class Label:
    value: int
    name: str
