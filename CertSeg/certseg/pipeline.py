"""One radiograph, stored pixel values in, certified labels on the source grid out."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import CertSegError
from .measurements import certified_measurements
from .models import LoadedModels
from .preprocess import IntensityWindow, ModelInputMap, radius_in_source_units
from .segmenter import CertifiedSegmenter
from .smoothing import ABSTAIN, Certificate, Progress, fresh_seed, image_noise_seed

DEFAULT_PARAMETERS = {"sigma": 0.25, "n0": 10, "n": 100, "alpha": 0.001, "tau": 0.75, "correction": "holm"}


@dataclass
class ImageResult:
    source_labels: np.ndarray  # (H, W) on the source grid, ABSTAIN where no certificate
    certificate: Certificate  # on the model grid
    input_map: ModelInputMap
    radii: dict[str, float]
    ood: dict[str, Any] | None = None  # the out-of-distribution verdict, with "forced" when overridden
    window_source: str = ""
    execution: dict[str, Any] | None = None  # how the base segmenter ran (precision, layout, compilation)
    noise: dict[str, Any] | None = None  # where the noise came from: run seed, image key, fresh or given
    clean_labels: np.ndarray | None = None  # (H, W) the network's own labels on the noise-free image, source grid

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
            "samples_drawn": {"selection": summary["parameters"]["n0"], "estimation": summary["estimation_samples"]},
            "denoiser": models.denoiser is not None,
            "execution": self.execution,
            "noise": self.noise,
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
            "intensity_window": {"low": self.input_map.window.low, "high": self.input_map.window.high,
                                 "source": self.window_source},
            "preprocessing_operator_norm": self.input_map.operator_norm(),
            "structures": structures,
            "measurements": certified_measurements(self.source_labels, self.clean_labels,
                                                   models.segmenter_card["labels"], pixel_area_mm2),
            "out_of_distribution": self.ood,
            "timings_s": summary["timings_s"],
        }


def certify_stored_image(
    stored: np.ndarray,
    models: LoadedModels,
    *,
    segmenter: CertifiedSegmenter | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    seed: int | None = None,
    image_key: str = "",
    progress: Progress | None = None,
    force: bool = False,
    window: IntensityWindow | None = None,
    **parameters: Any,
) -> ImageResult:
    """Certify one 2D image of stored pixel values with the models' own input spec.

    `window`: a fixed intensity window (a DICOM file's VOI tags); without one, the
    models' percentiles of this image are used, and the stored-value radius then also
    bounds how far a perturbation can move them (movable_window_radius; much smaller).
    Images the models' out-of-distribution detector rejects get no certificate
    (CertSegError naming score and threshold) unless `force`, which the verdict records.
    `segmenter`: the models as they run (precision, compilation); build it once for many
    images so compiled code and the fitted batch size are reused.  Default: `device`'s defaults.
    `seed`: None (the default) draws fresh OS entropy, which the guarantee needs; a given seed
    reproduces a run but voids the guarantee against anyone who knew it before the image was
    fixed.  The noise seed is derived from it and `image_key`, so images never share noise.
    """
    params = {**DEFAULT_PARAMETERS, **parameters}
    spec = models.segmenter_card["input"]
    window_source = "DICOM VOI (WindowCenter/WindowWidth): fixed by the header"
    window_from = None
    if window is None:
        percentiles = tuple(spec["percentiles"])
        window = IntensityWindow.from_percentiles(stored, percentiles)
        window_from = (stored, percentiles)
        window_source = (f"percentiles {list(percentiles)} of this image: the stored-value radius also covers "
                         f"how far a perturbation can move them")
    input_map = ModelInputMap(tuple(stored.shape), int(spec["size"]), window)
    model_image = input_map(stored)
    segmenter = segmenter or CertifiedSegmenter(models.network, models.num_classes, models.denoiser, device)
    verdict = _ood_verdict(models, segmenter, model_image, force)
    run_seed = fresh_seed() if seed is None else int(seed)
    noise = {"run_seed": run_seed, "image_key": image_key,
             "source": "os-entropy (unknown before the image existed)" if seed is None else
                       "given (--seed): no guarantee against whoever knew it before the image was fixed",
             "reproduce_with": f"--seed {run_seed}"}
    certificate = segmenter.certify(model_image, batch_size=batch_size, seed=image_noise_seed(run_seed, image_key),
                                    progress=progress, **params)
    return ImageResult(
        source_labels=input_map.labels_to_source(certificate.labels),
        certificate=certificate,
        input_map=input_map,
        radii=radius_in_source_units(certificate.radius, input_map, window_from),
        ood=verdict,
        window_source=window_source,
        execution=dataclasses.asdict(segmenter.execution),
        noise=noise,
        clean_labels=input_map.labels_to_source(segmenter.segment_clean(model_image)),
    )


def _ood_verdict(models: LoadedModels, segmenter: CertifiedSegmenter, model_image: np.ndarray,
                 force: bool) -> dict[str, Any] | None:
    detector = models.ood_detector
    if detector is None:
        return None
    verdict = {**detector.verdict(segmenter.network, model_image), "forced": False}
    if not verdict["in_distribution"]:
        if not force:
            raise CertSegError(
                f"does not look like a chest radiograph the models know (spectral OOD score "
                f"{verdict['score']:.1f} > threshold {verdict['threshold']:.1f}); use --force to certify anyway")
        verdict["forced"] = True
    return verdict
