"""overlay.png: the image with certified structures tinted and abstained pixels magenta, for a quick look."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from certseg.core.labels import ABSTAIN
from certseg.dicom.codes import segments


def write_overlay(path: Path, stored: np.ndarray, labels: np.ndarray, max_side: int = 1024) -> None:
    """A PNG for a quick look: the image, certified structures tinted, abstained pixels magenta."""
    from PIL import Image

    low, high = np.percentile(stored, [0.5, 99.5])
    gray = np.clip((stored - low) / max(high - low, 1e-9), 0, 1)
    rgb = np.repeat(gray[..., None] * 255, 3, axis=-1)
    for segment in segments(labels):
        alpha = 0.55 if segment.value == ABSTAIN else 0.35
        rgb[segment.mask] = (1 - alpha) * rgb[segment.mask] + alpha * np.array(segment.color, dtype=float)
    image = Image.fromarray(rgb.astype(np.uint8))
    image.thumbnail((max_side, max_side))
    image.save(path)
