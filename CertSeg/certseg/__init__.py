"""CertSeg: certified chest X-ray segmentation by randomized smoothing.

The public API (docs/model-developer.md, "Python API"), imported lazily: `import certseg.request` or
`import certseg.report` loads neither torch nor the models, which the Slicer module relies on.  The
package's parts and the import rules between them are stated once, in docs/architecture.md (enforced by
Testing/test_layout.py).
"""

from __future__ import annotations

import importlib

__version__ = "0.7.0"  # this release: the input check refitted (head, skull and limb negatives), files without a DICOM header read, the denoiser stability objective

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
