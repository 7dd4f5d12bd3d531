"""`certseg evaluate`: the paper's protocol on held-out views (Laousy et al., MICCAI 2023).

For each image, structure c and configuration:
    clean Dice      Dice of the network's own labels on the noise-free image
    certified Dice  2|C_c & G_c| / (|C_c| + |G_c|), C_c = pixels CERTIFIED as c; an abstained
                    pixel is in no C_c, so it costs every structure it truly belongs to
                    (abstained pixels count as errors); 1 when both sets are empty
    abstention      fraction of the image's pixels that abstain
Each figure is averaged over images (MONAI compute_dice per image, then the mean).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_dice
from tqdm import tqdm

from certseg.core.labels import ABSTAIN
from certseg.core.sampling import fresh_seed, image_noise_seed, resolve_device
from certseg.model.execution import Execution
from certseg.model.folder import LoadedModels
from certseg.model.segmenter import CertifiedSegmenter
from certseg.request import CertificationRequest, RunOptions
from certseg.research.data import Sample, to_model_space


class Configuration(StrEnum):
    SEGMENTER_ALONE = "segmenter alone"
    WITH_DENOISER = "denoiser + segmenter"


@dataclass
class Row:
    configuration: str
    sigma: float | None
    structure: str
    clean_dice: float
    certified_dice: float | None
    abstention: float | None
    seconds_per_image: float | None
    samples_per_image: float | None  # n0 + estimation samples drawn (fewer than n0 + n when sequential stops early)


def dice_per_structure(predicted: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice of classes 1..C-1; ABSTAIN pixels belong to no class (so they are errors)."""
    predicted_onehot = _onehot(predicted, num_classes)
    truth_onehot = _onehot(truth, num_classes)
    dice = compute_dice(predicted_onehot, truth_onehot, include_background=False, ignore_empty=False)[0]
    both_empty = (predicted_onehot.sum(dim=(2, 3)) + truth_onehot.sum(dim=(2, 3)))[0, 1:] == 0
    return torch.where(both_empty, torch.ones_like(dice), dice).numpy()


def _onehot(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    values = torch.as_tensor(labels, dtype=torch.int64)
    onehot = torch.stack([values == c for c in range(num_classes)]).float()  # ABSTAIN matches no class
    return onehot[None]


@dataclass(frozen=True)
class ImageTask:
    """One certification of the protocol: an image in model space, its labels, a configuration and a request."""

    configuration: Configuration
    request: CertificationRequest
    image: np.ndarray
    labels: np.ndarray
    seed: int


@dataclass(frozen=True)
class ImageFigures:
    dice: np.ndarray  # per structure
    abstention: float
    seconds: float
    samples: int  # n0 + the estimation samples drawn


@dataclass
class EvaluationState:
    """What certifies the tasks: one CertifiedSegmenter per configuration (the models loaded once)."""

    segmenters: dict[Configuration, CertifiedSegmenter]
    num_classes: int
    batch_size: int | None


def evaluation_state(models: LoadedModels, configurations: list[Configuration], options: RunOptions) -> EvaluationState:
    device = resolve_device(options.device)
    execution = Execution.requested(options.precision, options.compile, device)
    segmenters = {configuration: CertifiedSegmenter(
        models.network, models.num_classes, models.denoiser if configuration == Configuration.WITH_DENOISER else None,
        device, execution) for configuration in configurations}
    return EvaluationState(segmenters, models.num_classes, options.batch_size)


def evaluation_state_from_folder(options: RunOptions, configurations: list[Configuration]) -> EvaluationState:
    """The same, loading the models here (a Ray worker's state)."""
    from certseg.model.folder import load_models

    models = load_models(options.model_dir, with_denoiser=Configuration.WITH_DENOISER in configurations)
    return evaluation_state(models, configurations, options)


def certify_task(state: EvaluationState, task: ImageTask) -> ImageFigures:
    cert = state.segmenters[task.configuration].certify(task.image, **task.request.smoothing_arguments(),
                                                        batch_size=state.batch_size, seed=task.seed)
    return ImageFigures(dice_per_structure(cert.labels, task.labels, state.num_classes),
                        float(np.mean(cert.labels == ABSTAIN)), float(cert.timings["total"]),
                        task.request.n0 + cert.estimation_samples)


def evaluate(samples: list[Sample], models: LoadedModels, requests: list[CertificationRequest],
             configurations: list[Configuration], options: RunOptions = RunOptions(),
             progress: bool = True, run_tasks=None) -> list[Row]:
    """Clean Dice, then certified Dice, abstention and cost per configuration and request (one per sigma).

    `run_tasks(tasks) -> [ImageFigures]` certifies the tasks elsewhere (a Ray pool, certseg.scale); by default here,
    one after another.  Each image's noise seed comes from the run seed and its name, so both give the same rows."""
    card = models.segmenter_card
    device = resolve_device(options.device)
    run_seed = fresh_seed() if requests[0].seed is None else requests[0].seed  # one run, one seed
    names = [label.name for label in card.structures]
    pairs = [to_model_space(s, card.input.size, card.input.percentiles) for s in samples]
    plain = CertifiedSegmenter(models.network, models.num_classes, None, device)
    annotated = _annotated_mask(samples, len(names))
    clean = _mean_over_annotated(
        [dice_per_structure(plain.segment_clean(x), y, models.num_classes) for x, y in pairs], annotated)
    rows = [Row("clean", None, name, float(d), None, None, None, None) for name, d in zip(names, clean) if not np.isnan(d)]
    groups = [(configuration, request) for configuration in configurations for request in requests]
    tasks = [ImageTask(configuration, request, x, y, image_noise_seed(run_seed, sample.name))
             for configuration, request in groups for sample, (x, y) in zip(samples, pairs)]
    if run_tasks is None:
        state = evaluation_state(models, configurations, options)
        figures = [certify_task(state, task) for task in tqdm(tasks, desc="certifying", disable=not progress)]
    else:
        figures = run_tasks(tasks)
    for number, (configuration, request) in enumerate(groups):
        group = figures[number * len(samples):(number + 1) * len(samples)]
        mean_dice = _mean_over_annotated([f.dice for f in group], annotated)
        rows += [
            Row(str(configuration), request.sigma, name, float(c), float(d), float(np.mean([f.abstention for f in group])),
                float(np.mean([f.seconds for f in group])), float(np.mean([f.samples for f in group])))
            for name, c, d in zip(names, clean, mean_dice) if not np.isnan(d)
        ]
    return rows


def _annotated_mask(samples: list[Sample], num_structures: int) -> np.ndarray:
    """(images, structures) True where the image's dataset labels the structure."""
    return np.array([[value in s.annotated for value in range(1, num_structures + 1)] for s in samples])


def _mean_over_annotated(per_image: list[np.ndarray], annotated: np.ndarray) -> np.ndarray:
    """Mean Dice per structure over the images that label it (NaN where none does)."""
    values = np.where(annotated, np.asarray(per_image), np.nan)
    with np.errstate(invalid="ignore"):
        return np.nanmean(values, axis=0) if values.size else values


def write_outputs(rows: list[Row], out: Path, tau: float) -> None:
    """evaluation.csv, evaluation.md and evaluation.png (certified Dice against the radius)."""
    fields = list(Row.__dataclass_fields__)
    with open(out / "evaluation.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=fields)
        writer.writeheader()
        writer.writerows(row.__dict__ for row in rows)
    (out / "evaluation.md").write_text(markdown_table(rows))
    _plot(rows, out / "evaluation.png", tau)


def markdown_table(rows: list[Row]) -> str:
    def show(value, fmt):
        return "-" if value is None else format(value, fmt)

    lines = ["| configuration | sigma | structure | clean Dice | certified Dice | abstained | s / image | samples / image |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row.configuration} | {show(row.sigma, 'g')} | {row.structure} | {row.clean_dice:.3f} | "
                     f"{show(row.certified_dice, '.3f')} | {show(row.abstention, '.1%')} | "
                     f"{show(row.seconds_per_image, '.1f')} | {show(row.samples_per_image, '.0f')} |")
    return "\n".join(lines) + "\n"


def _plot(rows: list[Row], path: Path, tau: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from certseg.core.stats import radius_from_probability

    figure, axis = plt.subplots(figsize=(7, 4.5))
    certified = [r for r in rows if r.sigma is not None]
    structures = list(dict.fromkeys(r.structure for r in certified))
    for configuration in dict.fromkeys(r.configuration for r in certified):
        for index, structure in enumerate(structures):
            points = sorted((r.sigma, r.certified_dice) for r in certified
                            if r.configuration == configuration and r.structure == structure)
            if points:
                sigmas, dice = zip(*points)
                style = "-" if configuration.startswith("denoiser") else "--"
                axis.plot([float(radius_from_probability(s, tau)) for s in sigmas], dice, style, marker="o",
                          color=f"C{index}", label=f"{structure} ({configuration})")
    axis.set_xlabel(f"certified L2 radius (model space, tau = {tau})")
    axis.set_ylabel("certified Dice (abstained = error)")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
