"""report.pdf: one A4 page a radiologist can read on screen or printed in black and white.

The overlay (each structure outlined and named on the image, so grey print still tells them apart), per
structure the certified area interval and the clean network's value, the cardiothoracic ratio's interval and
its verdict on 0.5, the abstained share, the guarantee in words, the out-of-distribution verdict, the metadata
gate's finding, models and versions, parameters and the date.  fpdf2 (LGPL-3.0, used as a library) writes it;
only its core fonts, so the text is Latin-1.
"""

from __future__ import annotations

import datetime
import io
import numpy as np

from certseg.core.labels import ABSTAIN, ClassTable
from certseg.dicom.codes import segments
from certseg.record import Report
from certseg.report import area_table, input_check
from certseg.results.capture import RESEARCH_ONLY, grayscale, guarantee_words, outline, ratio_verdict

PAGE_IMAGE_SIDE = 1000  # pixels of the page's picture (about 300 dpi at its printed size)


def page_picture(stored: np.ndarray, labels: np.ndarray, table: ClassTable, report: Report) -> bytes:
    """PNG of the radiograph, certified structures outlined and named at their centre, abstained hatched."""
    from PIL import Image, ImageDraw, ImageFont

    scale = PAGE_IMAGE_SIDE / max(labels.shape)
    size = (max(1, round(labels.shape[1] * scale)), max(1, round(labels.shape[0] * scale)))
    gray = Image.fromarray(grayscale(stored, report).astype(np.uint8)).resize(size, Image.Resampling.LANCZOS)
    rgb = np.repeat(np.asarray(gray)[..., None], 3, axis=-1).astype(float)
    small = np.asarray(Image.fromarray(labels.astype(np.int16)).resize(size, Image.Resampling.NEAREST))
    rows, columns = np.indices(small.shape)
    names = []
    for segment in segments(small, table):
        if segment.value == ABSTAIN:  # diagonal hatching: visible in grey print, not only as colour
            hatch = segment.mask & ((rows + columns) % 8 < 2)
            rgb[hatch] = segment.color
            continue
        rgb[outline(segment.mask, 2)] = segment.color
        y, x = np.argwhere(segment.mask).mean(axis=0)
        names.append((x, y, segment.name.removeprefix("certified ")))
    image = Image.fromarray(rgb.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=22)
    for x, y, name in names:
        width = draw.textlength(name, font=font)
        draw.rectangle((x - width / 2 - 3, y - 13, x + width / 2 + 3, y + 13), fill=(255, 255, 255))
        draw.text((x - width / 2, y - 11), name, fill=(0, 0, 0), font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def area_rows(report: Report) -> tuple[str, list[tuple[str, str, str]]]:
    """The unit and, per structure, (name, certified interval, clean value) as the page prints them."""
    unit, areas = area_table(report)
    digits = 0 if unit == "pixels" else 1
    return unit, [(name, f"{a.low:.{digits}f} - {a.high:.{digits}f}", f"{a.clean:.{digits}f}") for name, a in areas]


def facts(report: Report) -> list[tuple[str, str]]:
    """(label, value) lines under the table: everything a reader must know to judge the result."""
    params, radius = report.parameters, report.radius
    models = "; ".join(f"{kind} {m.name} {m.version} (sha256 {m.sha256[:12]})" for kind, m in report.models.items())
    return [
        ("Abstained", f"{report.source_grid.abstain_fraction:.1%} of the image"),
        ("Input check", input_check(report.out_of_distribution)),
        ("DICOM metadata", report.source.metadata_check.text),
        ("Models", f"{models}; definition digest {report.model_digest[:12] or 'not recorded'}"),
        ("Parameters", f"sigma {params.sigma}, n0 {params.n0}, n {params.n}, alpha {params.alpha}, "
                       f"tau {params.tau}, {params.correction}, denoiser {'on' if report.denoiser else 'off'}"),
        ("Radius", f"{radius.model_space:.3f} (model input), {radius.stored_values_l2:.4g} "
                   f"(stored values, L2), {radius.rms_per_source_pixel:.3g} stored values per pixel (RMS)"),
        ("Noise seed", f"{report.noise.run_seed} ({report.noise.source.split(':')[0]})"),
        ("Software", f"CertSeg {report.certseg_version}"),
    ]


def write_report_page(stored: np.ndarray, labels: np.ndarray, table: ClassTable, report: Report, identity: dict[str, str],
                      when: datetime.datetime | None = None) -> bytes:
    """The PDF's bytes.  `identity`: patient and study lines to print (empty for an image file)."""
    from fpdf import FPDF

    when = when or datetime.datetime.now(datetime.timezone.utc)
    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(False)
    pdf.set_margins(12, 10, 12)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 14)
    pdf.cell(0, 7, "CertSeg certified chest X-ray segmentation", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "B", 10)
    pdf.cell(0, 5, RESEARCH_ONLY, new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 8)
    ids = "   ".join(f"{k}: {v}" for k, v in identity.items() if v) or "image file (no DICOM identifiers)"
    pdf.multi_cell(0, 4, _latin1(f"{ids}   Report: {when:%Y-%m-%d %H:%M} UTC"), new_x="LMARGIN", new_y="NEXT")
    top = pdf.get_y() + 1
    pdf.image(io.BytesIO(page_picture(stored, labels, table, report)), x=12, y=top, h=118)
    pdf.set_xy(12, top + 120)
    pdf.set_font("Helvetica", "B", 9)
    unit, rows = area_rows(report)
    widths = (50, 50, 30)
    for width, text in zip(widths, (f"Structure (area, {unit})", "certified range", "clean network")):
        pdf.cell(width, 5, text, border="B")
    pdf.ln(5)
    pdf.set_font("Helvetica", "", 9)
    for row in rows:
        for width, text in zip(widths, row):
            pdf.cell(width, 5, _latin1(text))
        pdf.ln(5)
    ratio = report.measurements.cardiothoracic_ratio
    clean = "" if ratio is None or ratio.clean is None else f" (clean network {ratio.clean:.2f})"
    pdf.set_font("Helvetica", "B", 9)
    pdf.multi_cell(0, 5, _latin1(ratio_verdict(ratio).capitalize() + clean), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(1)
    pdf.set_font("Helvetica", "", 8)
    for label, value in facts(report):
        pdf.set_font("Helvetica", "B", 8)
        pdf.cell(28, 4, label)
        pdf.set_font("Helvetica", "", 8)
        pdf.multi_cell(0, 4, _latin1(value), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(1)
    pdf.set_font("Helvetica", "B", 8)
    pdf.cell(0, 4, "What is guaranteed", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 8)
    for sentence in guarantee_words(report):
        pdf.multi_cell(0, 4, _latin1(sentence), new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def _latin1(text: str) -> str:
    """fpdf2's core fonts are Latin-1: anything else (a patient's name in another script) becomes '?'."""
    return text.encode("latin-1", "replace").decode("latin-1")
