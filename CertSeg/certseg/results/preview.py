"""overlay.png: a quick look at the result, the secondary capture's picture (legend and radius burned in)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_overlay(path: Path, capture: np.ndarray, max_side: int = 1024) -> None:
    """The capture (certseg.results.capture.render_capture) as a PNG of at most `max_side` pixels."""
    from PIL import Image

    image = Image.fromarray(capture)
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    image.save(path)
