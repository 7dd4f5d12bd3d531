"""The certification pipeline, diffusers-style: load a model folder once, then certify image after image.

    pipeline = CertificationPipeline.from_folder(RunOptions())
    result = pipeline.certify(StoredImage(pixels, key="1.2.3"), CertificationRequest())

Every entry point takes this path: DICOM files and folders and image files (certseg.runner, used
by `certify`, `certify-array`, `pacs` and the listener) and the attack benchmark.  Stored pixel
values go in; certified labels on the source grid come out, with what the report needs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from certseg.core.input_map import ModelInputMap
from certseg.core.labels import ClassTable
from certseg.core.radius import radius_in_source_units
from certseg.core.devices import resolve_device
from certseg.core.parameters import fresh_seed, image_noise_seed
from certseg.core.smoothing import Certificate
from certseg.core.window import IntensityWindow
from certseg.errors import OOD_REFUSAL, OutOfDistributionError
from certseg.model.execution import Execution
from certseg.model.folder import LoadedModels, load_models
from certseg.model.segmenter import CertifiedSegmenter
from certseg.progress import Progress
from certseg.record import (ARRAY_VALUES, ExecutionRecord, IntensityWindowRecord, Noise, OodVerdict, Radius,
                            StoredValues, WindowOrigin)
from certseg.request import CertificationRequest, RunOptions


@dataclass(frozen=True)
class StoredImage:
    """One 2D image to certify, in stored pixel values (DICOM: the Modality LUT's output, MONOCHROME2)."""

    pixels: np.ndarray
    key: str  # tells this image's noise apart within a run: its SOPInstanceUID, a file name
    window: IntensityWindow | None = None  # fixed by the header (VOI); None: the model card's percentiles of it
    values: StoredValues = ARRAY_VALUES  # what the values are (units; for DICOM, raw values per stored value)


@dataclass
class CertificationResult:
    source_labels: np.ndarray  # (H, W) on the source grid, ABSTAIN where no certificate
    certificate: Certificate  # on the model grid
    input_map: ModelInputMap
    radius: Radius  # core.radius.radius_in_source_units
    ood: OodVerdict | None  # the out-of-distribution verdict, `forced` when overridden; None without detector
    window: IntensityWindowRecord  # the window the input map used and where it came from
    execution: ExecutionRecord  # how the base segmenter ran (precision, layout, compilation)
    noise: Noise  # where the noise came from: run seed, image key, fresh or given
    clean_labels: np.ndarray  # (H, W) the network's own labels on the noise-free image, source grid
    class_table: ClassTable  # which structures each class value of the label maps stands for


class CertificationPipeline:
    """A loaded model folder and the segmenter as it runs (device, precision, compiled code, fitted batch size)."""

    def __init__(self, models: LoadedModels, segmenter: CertifiedSegmenter, batch_size: int | None = None):
        self.models, self.segmenter, self.batch_size = models, segmenter, batch_size

    @classmethod
    def from_folder(cls, options: RunOptions = RunOptions()) -> CertificationPipeline:
        """Load and check the models `options` name (ModelError naming the file otherwise), once."""
        device = resolve_device(options.device)
        models = load_models(options.model_dir, with_denoiser=options.use_denoiser)
        execution = Execution.requested(options.precision, options.compile, device)
        segmenter = CertifiedSegmenter(models.network, models.num_classes, models.denoiser, device, execution,
                                       models.laterality)
        return cls(models, segmenter, options.batch_size)

    def certify(self, image: StoredImage, request: CertificationRequest,
                progress: Progress | None = None) -> CertificationResult:
        """Certify one image with the models' own input spec.

        Without a fixed window the models' percentiles of this image are used, and the stored-value
        radius then also bounds how far a perturbation can move them (much smaller).  An image the
        out-of-distribution detector rejects gets no certificate (CertSegError naming score and
        threshold) unless request.force, which the verdict records.
        """
        input_map = self.input_map(image)
        percentiles = self.models.segmenter_card.input.percentiles
        window_from = None if image.window is not None else (image.pixels, percentiles)
        window = IntensityWindowRecord(
            low=input_map.window.low, high=input_map.window.high,
            origin=WindowOrigin.DICOM_VOI if window_from is None else WindowOrigin.PERCENTILES,
            percentiles=None if window_from is None else tuple(percentiles))
        model_image = input_map(image.pixels)
        verdict = self._ood_verdict(model_image, request.force)
        run_seed = fresh_seed() if request.run_seed is None else int(request.run_seed)
        certificate = self.segmenter.certify(model_image, request, batch_size=self.batch_size, progress=progress,
                                             noise_seed=image_noise_seed(run_seed, image.key))
        return CertificationResult(
            source_labels=input_map.labels_to_source(certificate.labels),
            certificate=certificate,
            input_map=input_map,
            radius=radius_in_source_units(certificate.radius, input_map, window_from, image.values),
            ood=verdict,
            window=window,
            execution=ExecutionRecord(**dataclasses.asdict(self.segmenter.execution)),
            noise=_noise_record(run_seed, image.key, given=request.run_seed is not None),
            clean_labels=input_map.labels_to_source(self.segmenter.segment_clean(model_image)),
            class_table=self.models.class_table,
        )

    def input_map(self, image: StoredImage) -> ModelInputMap:
        """The map of `image` onto the model input: its fixed window, else the card's percentiles of it."""
        spec = self.models.segmenter_card.input
        window = image.window or IntensityWindow.from_percentiles(image.pixels, spec.percentiles)
        return ModelInputMap(tuple(image.pixels.shape), spec.size, window)

    def _ood_verdict(self, model_image: np.ndarray, force: bool) -> OodVerdict | None:
        detector = self.models.ood_detector
        if detector is None:
            return None
        verdict = detector.verdict(self.segmenter.network, model_image, self.models.anatomy_classes)
        if verdict.in_distribution:
            return verdict
        if not force:
            raise OutOfDistributionError(
                f"does not look like a frontal chest radiograph ({OOD_REFUSAL}{verdict.refusal_words()}); "
                f"use --force to certify anyway")
        return dataclasses.replace(verdict, forced=True)


def _noise_record(run_seed: int, image_key: str, *, given: bool) -> Noise:
    return Noise(run_seed=run_seed, image_key=image_key,
                 source="given (--seed): no guarantee against whoever knew it before the image was fixed" if given
                 else "os-entropy (unknown before the image existed)",
                 reproduce_with=f"--seed {run_seed}")
