"""`certseg evaluate`'s protocol on held-out images (Laousy et al., MICCAI 2023): what is certified, and which rows.

For each image, structure and configuration: the clean Dice of the network's own labels on the noise-free
image, the certified Dice (metrics.dice_per_structure: abstained pixels count as errors), the abstention,
the cost, and the wrong-side share (metrics).  Each figure is averaged over the images that annotate the
structure (Dice of each whole structure per image, then the mean).

On a dataset that annotates the lungs only (COVID-QU-Ex), its lung masks cover the lung field under the
clavicles, which the class table reads as lung and clavicle together: a lung under its clavicle is still
that lung.  Configurations with "no laterality rule" run the network's labels as they are (model.laterality),
to measure what the rule changes.  On images with heart and lungs annotated, the cardiothoracic ratio of the
reference masks is compared with the clean value and each certified interval (RatioRecord).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from tqdm import tqdm

from certseg.core.devices import resolve_device
from certseg.core.labels import ABSTAIN, ClassTable
from certseg.core.measurements import ratio_bounds, ratio_verdict
from certseg.core.parameters import fresh_seed, image_noise_seed
from certseg.dicom.codes import CLASS_TABLE
from certseg.model.execution import Execution
from certseg.model.folder import LoadedModels
from certseg.model.segmenter import CertifiedSegmenter
from certseg.record import RatioVerdict
from certseg.request import CertificationRequest, RunOptions
from certseg.research.data import Sample, to_model_space
from certseg.research.evaluation.metrics import (HEART, LEFT_LUNG, RIGHT_LUNG, dice_per_structure, mean_over_annotated,
                                                 plain_ratio, wrong_side_images, wrong_side_shares)


class Configuration(StrEnum):
    SEGMENTER_ALONE = "segmenter alone"
    WITH_DENOISER = "denoiser + segmenter"
    SEGMENTER_NO_RULE = "segmenter alone, no laterality rule"
    DENOISER_NO_RULE = "denoiser + segmenter, no laterality rule"

    @property
    def denoised(self) -> bool:
        return self in (Configuration.WITH_DENOISER, Configuration.DENOISER_NO_RULE)

    @property
    def laterality_rule(self) -> bool:
        return self in (Configuration.SEGMENTER_ALONE, Configuration.WITH_DENOISER)


@dataclass
class Row:
    """One line of evaluation.md: a configuration (or the clean network), a sigma, a structure."""

    configuration: str
    sigma: float | None
    structure: str
    clean_dice: float
    certified_dice: float | None
    abstention: float | None
    seconds_per_image: float | None
    samples_per_image: float | None  # n0 + estimation samples drawn (fewer than n0 + n when sequential stops early)
    wrong_side_images: float | None = None  # lungs: share of images with > 1% of this lung on the other lung


@dataclass(frozen=True)
class RatioRecord:
    """One image's cardiothoracic ratio: from the reference masks, the clean network, the certified interval."""

    image: str
    configuration: str
    sigma: float
    reference: float | None
    clean: float | None
    low: float | None
    high: float | None

    @property
    def verdict(self) -> RatioVerdict:
        return ratio_verdict(self.low, self.high)


@dataclass(frozen=True)
class Evaluation:
    rows: list[Row]
    ratios: list[RatioRecord]  # images with heart and lungs annotated, per configuration and sigma


@dataclass(frozen=True)
class Case:
    """One image of the protocol, mapped to the model grid once, with what its dataset annotates."""

    name: str
    image: np.ndarray  # model input
    labels: np.ndarray  # reference classes of dicom.codes.CLASS_TABLE on the model grid
    annotated: np.ndarray  # per structure (values 1, 2, ...): does the dataset label it?
    reference_ratio: float | None  # None unless heart and lungs are annotated

    @classmethod
    def of(cls, sample: Sample, size: int, percentiles: tuple[float, float], structures: int) -> Case:
        image, labels = to_model_space(sample, size, percentiles)
        with_ratio = HEART in sample.annotated and RIGHT_LUNG in sample.annotated
        return cls(sample.name, image, labels,
                   np.array([value in sample.annotated for value in range(1, structures + 1)]),
                   plain_ratio(labels, CLASS_TABLE) if with_ratio else None)

    @property
    def measures_ratio(self) -> bool:
        return self.reference_ratio is not None


@dataclass(frozen=True)
class ImageTask:
    """One certification of the protocol: an image in model space, its labels, a configuration and a request."""

    configuration: Configuration
    request: CertificationRequest
    image: np.ndarray
    labels: np.ndarray
    noise_seed: int


@dataclass(frozen=True)
class ImageFigures:
    dice: np.ndarray  # per structure
    abstention: float
    seconds: float
    samples: int  # n0 + the estimation samples drawn
    wrong_side: tuple[float, float] = (0.0, 0.0)  # share of each reference lung certified as the other lung
    ratio: tuple[float | None, float | None] = (None, None)  # the certified cardiothoracic ratio interval


@dataclass
class EvaluationState:
    """What certifies the tasks: one CertifiedSegmenter per configuration (the models loaded once)."""

    segmenters: dict[Configuration, CertifiedSegmenter]
    table: ClassTable  # the model's classes
    batch_size: int | None


def evaluation_state(models: LoadedModels, configurations: list[Configuration], options: RunOptions) -> EvaluationState:
    device = resolve_device(options.device)
    execution = Execution.requested(options.precision, options.compile, device)
    segmenters = {configuration: CertifiedSegmenter(
        models.network, models.num_classes, models.denoiser if configuration.denoised else None,
        device, execution, models.laterality if configuration.laterality_rule else None)
        for configuration in configurations}
    return EvaluationState(segmenters, models.class_table, options.batch_size)


def evaluation_state_from_folder(options: RunOptions, configurations: list[Configuration]) -> EvaluationState:
    """The same, loading the models here (a Ray worker's state)."""
    from certseg.model.folder import load_models

    models = load_models(options.model_dir, with_denoiser=any(c.denoised for c in configurations))
    return evaluation_state(models, configurations, options)


def certify_task(state: EvaluationState, task: ImageTask) -> ImageFigures:
    cert = state.segmenters[task.configuration].certify(task.image, task.request, batch_size=state.batch_size,
                                                        noise_seed=task.noise_seed)
    table = state.table
    lungs = tuple(sorted(set(table.classes_with(RIGHT_LUNG)) | set(table.classes_with(LEFT_LUNG))))
    return ImageFigures(dice_per_structure(cert.labels, task.labels, table),
                        float(np.mean(cert.labels == ABSTAIN)), float(cert.timings["total"]),
                        task.request.n0 + cert.estimation_samples, wrong_side_shares(cert.labels, task.labels, table),
                        ratio_bounds(cert.labels, table.classes_with(HEART), lungs))


@dataclass(frozen=True)
class CleanPass:
    """The network's own labels on the noise-free images, with or without the laterality rule."""

    dice: np.ndarray  # mean per structure over the images that annotate it
    ratios: dict[str, float | None]  # per image name, where the ratio is measured
    rows: list[Row]


def clean_pass(models: LoadedModels, cases: list[Case], names: list[str], with_rule: bool, device) -> CleanPass:
    plain = CertifiedSegmenter(models.network, models.num_classes, None, device,
                               laterality=models.laterality if with_rule else None)
    table = models.class_table
    labels = {case.name: plain.segment_clean(case.image) for case in cases}
    dice = mean_over_annotated([dice_per_structure(labels[c.name], c.labels, table) for c in cases],
                               np.array([c.annotated for c in cases]))
    sides = wrong_side_images([wrong_side_shares(labels[c.name], c.labels, table) for c in cases])
    configuration = "clean" if with_rule else "clean, no laterality rule"
    rows = [Row(configuration, None, name, float(d), None, None, None, None, sides.get(name))
            for name, d in zip(names, dice) if not np.isnan(d)]
    ratios = {c.name: plain_ratio(labels[c.name], table) for c in cases if c.measures_ratio}
    return CleanPass(dice, ratios, rows)


def certified_rows(configuration: Configuration, request: CertificationRequest, names: list[str],
                   results: list[tuple[Case, ImageFigures]], clean: CleanPass) -> list[Row]:
    """One row per structure annotated somewhere: certified Dice, abstention and cost, beside the clean Dice."""
    figures = [f for _, f in results]
    dice = mean_over_annotated([f.dice for f in figures], np.array([c.annotated for c, _ in results]))
    sides = wrong_side_images([f.wrong_side for f in figures])
    abstention, seconds = float(np.mean([f.abstention for f in figures])), float(np.mean([f.seconds for f in figures]))
    samples = float(np.mean([f.samples for f in figures]))
    return [Row(str(configuration), request.sigma, name, float(c), float(d), abstention, seconds, samples,
                sides.get(name)) for name, c, d in zip(names, clean.dice, dice) if not np.isnan(d)]


def ratio_records(configuration: Configuration, request: CertificationRequest,
                  results: list[tuple[Case, ImageFigures]], clean: CleanPass) -> list[RatioRecord]:
    return [RatioRecord(case.name, str(configuration), request.sigma, case.reference_ratio, clean.ratios[case.name],
                        *figures.ratio) for case, figures in results if case.measures_ratio]


def evaluate(samples: list[Sample], models: LoadedModels, requests: list[CertificationRequest],
             configurations: list[Configuration], options: RunOptions = RunOptions(),
             progress: bool = True, run_tasks=None) -> Evaluation:
    """Clean Dice, then certified Dice, abstention and cost per configuration and request (one per sigma).

    `run_tasks(tasks) -> [ImageFigures]` certifies the tasks elsewhere (a Ray pool, certseg.scale); by default here,
    one after another.  Each image's noise seed comes from the run seed and its name, so both give the same rows."""
    card = models.segmenter_card
    run_seed = fresh_seed() if requests[0].run_seed is None else requests[0].run_seed  # one run, one seed
    names = [label.name for label in card.structures]
    cases = [Case.of(s, card.input.size, card.input.percentiles, len(names)) for s in samples]
    device = resolve_device(options.device)
    clean = {rule: clean_pass(models, cases, names, rule, device)
             for rule in dict.fromkeys(c.laterality_rule for c in configurations)}
    planned = [(configuration, number, case) for configuration in configurations for number in range(len(requests))
               for case in cases]
    tasks = [ImageTask(configuration, requests[number], case.image, case.labels, image_noise_seed(run_seed, case.name))
             for configuration, number, case in planned]
    if run_tasks is None:
        state = evaluation_state(models, configurations, options)
        figures = [certify_task(state, task) for task in tqdm(tasks, desc="certifying", disable=not progress)]
    else:
        figures = run_tasks(tasks)
    grouped: dict[tuple[Configuration, int], list[tuple[Case, ImageFigures]]] = defaultdict(list)
    for (configuration, number, case), result in zip(planned, figures, strict=True):
        grouped[configuration, number].append((case, result))
    rows = [row for passed in clean.values() for row in passed.rows]
    ratios: list[RatioRecord] = []
    for (configuration, number), results in grouped.items():
        rows += certified_rows(configuration, requests[number], names, results, clean[configuration.laterality_rule])
        ratios += ratio_records(configuration, requests[number], results, clean[configuration.laterality_rule])
    return Evaluation(rows, ratios)
