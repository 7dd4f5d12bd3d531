"""CertSeg: certified chest X-ray segmentation by randomized smoothing.

The public API (README.md, "Python API"), imported lazily: `import certseg.request` or
`import certseg.report` loads neither torch nor the models, which the Slicer module relies on.

Layout (import rules in README.md, "Layout", enforced by Testing/test_layout.py):
    core/       the certification maths: smoothing, sampling, statistics, input map, radius, measurements
    model/      networks, denoiser, execution, model cards, the OOD detector
    dicom/      reading radiographs, writing SEG and SR, the coded vocabulary (no torch)
    results/    the result folder's other files: .seg.nrrd, radius map, preview
    pacs/       DICOMweb and DIMSE clients, the listener, the Orthanc plugin
    research/   datasets, DRRs, training, evaluation, bench, attacks (never on the runtime path)
    commands/   the `certseg` command line, thin
    request, pipeline, runner, report: what a certification asks for, does, writes and says
"""

from __future__ import annotations

import importlib

__version__ = "0.4.1"  # this release: the input check (frontal chest radiographs only), clinical augmentation

_API = {
    "ABSTAIN": "certseg.core.labels",
    "Certificate": "certseg.core.smoothing",
    "CertificationPipeline": "certseg.pipeline",
    "CertificationRequest": "certseg.request",
    "CertificationResult": "certseg.pipeline",
    "CertifiedSegmenter": "certseg.model.segmenter",
    "DEFAULT_MODEL_DIR": "certseg.model.cards",
    "DiffusionDenoiser": "certseg.model.denoiser",
    "Execution": "certseg.model.execution",
    "IntensityWindow": "certseg.core.window",
    "LoadedModels": "certseg.model.folder",
    "ModelError": "certseg.errors",
    "ModelInputMap": "certseg.core.input_map",
    "RatioVerdict": "certseg.record",
    "Report": "certseg.record",
    "ReportError": "certseg.record",
    "RunOptions": "certseg.request",
    "SmoothingParameters": "certseg.core.smoothing",
    "StoredImage": "certseg.pipeline",
    "certify_segmentation": "certseg.core.smoothing",
    "doubling_looks": "certseg.core.smoothing",
    "load_models": "certseg.model.folder",
    "predict_segmentation": "certseg.core.smoothing",
    "radius_in_source_units": "certseg.core.radius",
    "resolve_device": "certseg.core.sampling",
    "timestep_for_sigma": "certseg.model.denoiser",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'certseg' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
