"""The README's Python API runs as written: each ```python block of its "Python API" section, in order, on the
shipped sample with the shipped models (a README that drifted from the code fails here)."""

import re
from pathlib import Path

import numpy as np

from certseg.dicom.reading import read_radiograph
from certseg.record import RatioVerdict, Report
from support.dicom_files import SAMPLE_CR

README = Path(__file__).parents[1] / "README.md"


def python_api_blocks() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_the_readmes_python_api_runs_on_the_sample(certified_sample):
    from certseg import CertificationPipeline, RunOptions, StoredImage

    blocks = python_api_blocks()
    assert len(blocks) == 3
    pixels = read_radiograph(SAMPLE_CR).pixels
    image = CertificationPipeline.from_folder(RunOptions(use_denoiser=False)).input_map(StoredImage(pixels, "x"))(pixels)
    namespace = {"pixels": pixels, "image": image.astype(np.float32), "result_folder": certified_sample[2]}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    assert namespace["result"].source_labels.shape == pixels.shape
    assert namespace["result"].radius.model_space > 0
    certificate = namespace["certificate"]
    assert certificate.labels.shape == image.shape and (certificate.labels >= 0).any()
    assert isinstance(namespace["report"], Report)
    assert namespace["report"].measurements.cardiothoracic_ratio.verdict in tuple(RatioVerdict)
