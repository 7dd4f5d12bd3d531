"""The documentation's pictures of the secondary capture and of the report page, made from the shipped sample.

    .venv/bin/python docs/make_figures.py      (needs the test extra: pypdfium2 renders the page)

Certifies the sample with the README's defaults and a fixed seed (so the figures can be remade exactly), then
writes docs/images/SecondaryCapture.png (the capture.dcm's pixels, reduced to 1024 pixels) and
docs/images/ReportPage.png (report.pdf's page at 110 dpi).
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import pydicom

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "CertSeg" / "Resources" / "SampleData" / "sample_cr.dcm"


def main() -> None:
    import pypdfium2
    from PIL import Image

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out"
        subprocess.run([sys.executable, "-m", "certseg", "certify", str(SAMPLE), "--out", str(out), "--quiet",
                        "--seed", "20261201"], check=True)
        source = pydicom.dcmread(SAMPLE, stop_before_pixels=True)
        result = out / source.StudyInstanceUID / source.SeriesInstanceUID / source.SOPInstanceUID
        capture = Image.fromarray(pydicom.dcmread(result / "capture.dcm").pixel_array)
        capture.thumbnail((1024, 1024), Image.Resampling.LANCZOS)
        capture.save(ROOT / "docs" / "images" / "SecondaryCapture.png", optimize=True)
        document = pypdfium2.PdfDocument(result / "report.pdf")
        try:
            document[0].render(scale=110 / 72).to_pil().save(ROOT / "docs" / "images" / "ReportPage.png", optimize=True)
        finally:
            document.close()


if __name__ == "__main__":
    main()
