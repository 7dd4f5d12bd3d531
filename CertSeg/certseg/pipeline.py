"""One radiograph, stored pixel values in, certified labels on the source grid out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .models import LoadedModels
from .preprocess import IntensityWindow, ModelInputMap, radius_in_source_units
from .segmenter import CertifiedSegmenter
from .smoothing import ABSTAIN, Certificate, Progress

DEFAULT_PARAMETERS = {"sigma": 0.25, "n0": 10, "n": 100, "alpha": 0.001, "tau": 0.75, "correction": "holm"}


@dataclass
class ImageResult:
    source_labels: np.ndarray  # (H, W) on the source grid, ABSTAIN where no certificate
    certificate: Certificate  # on the model grid
    input_map: ModelInputMap
    radii: dict[str, float]

    def report(self, models: LoadedModels, pixel_area_mm2: float | None = None) -> dict[str, Any]:
        """The JSON-ready report of this image (schema in README.md)."""
        summary = self.certificate.summary()
        structures = []
        for label in models.segmenter_card["labels"][1:]:
            pixels = int(np.sum(self.source_labels == label["value"]))
            structures.append({
                "name": label["name"],
                "value": label["value"],
                "certified_pixels": pixels,
                "certified_area_mm2": None if pixel_area_mm2 is None else pixels * pixel_area_mm2,
            })
        return {
            "parameters": summary["parameters"],
            "denoiser": models.denoiser is not None,
            "models": {
                kind: {k: card.get(k) for k in ("name", "version", "sha256")}
                for kind, card in (("segmenter", models.segmenter_card), ("denoiser", models.denoiser_card))
                if card is not None
            },
            "radius": self.radii,
            "model_grid": {"size": self.input_map.model_size, "abstain_fraction": summary["abstain_fraction"]},
            "source_grid": {
                "shape": list(self.input_map.source_shape),
                "abstain_fraction": float(np.mean(self.source_labels == ABSTAIN)),
            },
            "intensity_window": {"low": self.input_map.window.low, "high": self.input_map.window.high},
            "preprocessing_operator_norm": self.input_map.operator_norm(),
            "structures": structures,
            "timings_s": summary["timings_s"],
        }


def certify_stored_image(
    stored: np.ndarray,
    models: LoadedModels,
    *,
    device: str = "auto",
    batch_size: int = 16,
    seed: int | None = 0,
    progress: Progress | None = None,
    **parameters: Any,
) -> ImageResult:
    """Certify one 2D image of stored pixel values with the models' own input spec."""
    params = {**DEFAULT_PARAMETERS, **parameters}
    spec = models.segmenter_card["input"]
    window = IntensityWindow.from_percentiles(stored, tuple(spec["percentiles"]))
    input_map = ModelInputMap(tuple(stored.shape), int(spec["size"]), window)
    segmenter = CertifiedSegmenter(models.network, models.num_classes, models.denoiser, device)
    certificate = segmenter.certify(input_map(stored), batch_size=batch_size, seed=seed, progress=progress, **params)
    return ImageResult(
        source_labels=input_map.labels_to_source(certificate.labels),
        certificate=certificate,
        input_map=input_map,
        radii=radius_in_source_units(certificate.radius, input_map),
    )
