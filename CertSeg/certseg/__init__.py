"""CertSeg: certified chest X-ray segmentation by randomized smoothing.

The public API; see README.md for its use.
"""

from .acceleration import Execution
from .denoiser import DiffusionDenoiser, timestep_for_sigma
from .models import DEFAULT_MODEL_DIR, LoadedModels, ModelError, load_models
from .preprocess import IntensityWindow, ModelInputMap, radius_in_source_units
from .segmenter import CertifiedSegmenter
from .smoothing import (
    ABSTAIN,
    Certificate,
    SmoothingParameters,
    certify_segmentation,
    doubling_looks,
    predict_segmentation,
    resolve_device,
)

__version__ = "0.2.0"

__all__ = [
    "ABSTAIN",
    "Certificate",
    "CertifiedSegmenter",
    "DEFAULT_MODEL_DIR",
    "DiffusionDenoiser",
    "Execution",
    "IntensityWindow",
    "LoadedModels",
    "ModelError",
    "ModelInputMap",
    "SmoothingParameters",
    "certify_segmentation",
    "doubling_looks",
    "load_models",
    "predict_segmentation",
    "radius_in_source_units",
    "resolve_device",
    "timestep_for_sigma",
]
