"""What a PACS viewer that shows no DICOM SEG can still show: the radiograph with the certificate burned in.

`render_capture` draws, on the radiograph at its own resolution, each certified structure tinted and outlined,
the abstained region in magenta, a legend, the radius in plain words and "research only".  `guarantee_words`
says what is certified in a radiologist's words; the one-page report (certseg.results.report_page) uses both.
"""

from __future__ import annotations

import numpy as np

from certseg.core.labels import ABSTAIN, ClassTable
from certseg.dicom.codes import ABSTAINED_COLOR, Segment, segments
from certseg.record import RatioMeasurement, Report
from certseg.report import ratio_words

RESEARCH_ONLY = "RESEARCH ONLY - NOT FOR CLINICAL USE"
TINT, ABSTAINED_TINT = 0.30, 0.45


def grayscale(stored: np.ndarray, report: Report) -> np.ndarray:
    """The radiograph in [0, 255] through the intensity window the models saw (report.intensity_window)."""
    low, high = report.intensity_window.low, report.intensity_window.high
    return np.clip((stored - low) / max(high - low, 1e-9), 0.0, 1.0) * 255.0


def outline(mask: np.ndarray, width: int) -> np.ndarray:
    """The pixels of `mask` within `width` pixels of its edge."""
    from scipy.ndimage import binary_erosion

    return mask & ~binary_erosion(mask, iterations=width, border_value=0)


def guarantee_words(report: Report) -> list[str]:
    """The certificate in a radiologist's words: what is certified, against what, with which probability, what not."""
    radius = report.radius
    return [
        f"Each coloured structure is certified pixel by pixel: with probability {report.parameters.confidence:.1%} "
        f"over CertSeg's own random noise, no change of this image smaller than {radius.stored_values_l2:.4g} in "
        f"stored pixel values (L2 over the whole image, about {radius.rms_per_source_pixel:.3g} per pixel on "
        f"average) can change those labels.",
        "Magenta pixels are abstained: no label is certified there.",
        "Not covered: larger changes, changes of the DICOM header or geometry, and whether the labels are right "
        "(the certificate is about stability, not correctness).",
    ]


def ratio_verdict(ratio: RatioMeasurement | None) -> str:
    """The cardiothoracic ratio's certified interval and its verdict on 0.5, in words."""
    return ratio_words(ratio) or "cardiothoracic ratio: not measured by this model"


def render_capture(stored: np.ndarray, labels: np.ndarray, table: ClassTable, report: Report) -> np.ndarray:
    """RGB uint8 of the radiograph's own size with the certificate burned in.

    Every tint is laid before any outline, so where structures overlap (a clavicle over a lung) the
    pixels carry both tints and both outlines stay whole: the lung's edge runs on under the clavicle."""
    gray = grayscale(stored, report)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    width = max(1, round(max(labels.shape) / 600))
    drawn = segments(labels, table)
    for segment in drawn:
        tint = ABSTAINED_TINT if segment.value == ABSTAIN else TINT
        rgb[segment.mask] = (1 - tint) * rgb[segment.mask] + tint * np.array(segment.color, dtype=float)
    for segment in drawn:
        if segment.value != ABSTAIN:
            rgb[outline(segment.mask, width)] = segment.color
    return _burn_in_text(rgb.astype(np.uint8), drawn, report)


def _burn_in_text(rgb: np.ndarray, drawn: list[Segment], report: Report) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    side = min(rgb.shape[:2])
    size = max(10, side // 45)
    font = ImageFont.load_default(size=size)
    margin = size // 2
    draw.rectangle((0, 0, rgb.shape[1], size + 2 * margin), fill=(0, 0, 0))
    draw.text((margin, margin), f"CertSeg  {RESEARCH_ONLY}", fill=(255, 255, 0), font=font)
    legend = [(tuple(s.color), f"{s.name}") for s in drawn if s.value != ABSTAIN]
    legend.append((ABSTAINED_COLOR, "abstained (not certified)"))
    radius = report.radius
    footer = [f"Certified against any change below {radius.stored_values_l2:.4g} (L2, stored values; "
              f"~{radius.rms_per_source_pixel:.3g} per pixel), probability {report.parameters.confidence:.1%}",
              ratio_verdict(report.measurements.cardiothoracic_ratio)]
    line = size + margin
    top = size + 3 * margin
    box_width = max(draw.textlength(text, font=font) for _, text in legend) + 2 * size + 2 * margin
    draw.rectangle((0, top, box_width, top + line * len(legend) + margin), fill=(0, 0, 0))
    for row, (color, text) in enumerate(legend):
        y = top + margin + row * line
        draw.rectangle((margin, y, margin + size, y + size), fill=color)
        draw.text((2 * margin + size, y), text, fill=(255, 255, 255), font=font)
    bottom = rgb.shape[0] - line * len(footer) - 2 * margin
    draw.rectangle((0, bottom, rgb.shape[1], rgb.shape[0]), fill=(0, 0, 0))
    for row, text in enumerate(footer):
        draw.text((margin, bottom + margin + row * line), text, fill=(255, 255, 255), font=font)
    return np.asarray(image)
