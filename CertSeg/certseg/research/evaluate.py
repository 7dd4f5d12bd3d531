"""`certseg evaluate`: the paper's protocol on held-out views (Laousy et al., MICCAI 2023).

For each image, structure c and configuration:
    clean Dice      Dice of the network's own labels on the noise-free image
    certified Dice  2|C_c & G_c| / (|C_c| + |G_c|), C_c = pixels CERTIFIED as c; an abstained
                    pixel is in no C_c, so it costs every structure it truly belongs to
                    (abstained pixels count as errors); 1 when both sets are empty
    abstention      fraction of the image's pixels that abstain
    wrong side      share of images where more than 1% of a reference lung is labelled (clean) or
                    certified as the other lung
Each figure is averaged over images (Dice of each whole structure per image, then the mean).

On a dataset that annotates the lungs only (COVID-QU-Ex), its lung masks cover the lung field under
the clavicles, which the SCR convention labels clavicle: there a predicted clavicle pixel counts as
the same side's lung (a clavicle outside the reference lung is then a false positive of the lung).

Configurations with "no laterality rule" run the network's labels as they are (model.laterality), to
measure what the rule changes.  On images with heart and lungs annotated, the cardiothoracic ratio of
the reference masks is compared with the clean value and each certified interval (ctr.csv, ctr.md,
ctr-bland-altman.png).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from certseg.core.labels import ABSTAIN, ClassTable
from certseg.core.measurements import RATIO_THRESHOLD, cardiothoracic_ratio, ratio_bounds, ratio_verdict
from certseg.core.devices import resolve_device
from certseg.core.parameters import fresh_seed, image_noise_seed
from certseg.dicom.codes import CLASS_TABLE, STRUCTURES
from certseg.model.execution import Execution
from certseg.model.folder import LoadedModels
from certseg.model.segmenter import CertifiedSegmenter
from certseg.record import RatioVerdict
from certseg.request import CertificationRequest, RunOptions
from certseg.research.data import Sample, to_model_space


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


# The label values of dicom.codes.STRUCTURES, the one list the data import writes masks in and the models learn.
_VALUE_OF = {s.name: s.value for s in STRUCTURES}
RIGHT_LUNG, LEFT_LUNG, HEART, RIGHT_CLAVICLE, LEFT_CLAVICLE = (
    _VALUE_OF[name] for name in ("right lung", "left lung", "heart", "right clavicle", "left clavicle"))
WRONG_SIDE_SHARE = 0.01  # more than 1% of a lung given to the other lung counts as a wrong-side image


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
    wrong_side_images: float | None = None  # lungs: share of images with > 1% of this lung on the other lung


def dice_per_structure(predicted: np.ndarray, truth: np.ndarray, table: ClassTable,
                       truth_table: ClassTable = CLASS_TABLE) -> np.ndarray:
    """Dice of each structure of `truth_table`, whole: a lung under a clavicle counts to both.

    `predicted` holds class values of `table` (the model's: an earlier release has one class per
    structure, and its lungs stop at the clavicles), `truth` those of `truth_table` (the datasets').
    ABSTAIN pixels belong to no structure (so they are errors); a structure absent from both maps
    scores 1."""
    scores = []
    for structure in truth_table.structures:
        mine, theirs = table.mask(predicted, structure), truth_table.mask(truth, structure)
        total = int(mine.sum()) + int(theirs.sum())
        scores.append(1.0 if total == 0 else 2 * int((mine & theirs).sum()) / total)
    return np.asarray(scores)


def wrong_side_shares(labels: np.ndarray, truth: np.ndarray, table: ClassTable,
                      truth_table: ClassTable = CLASS_TABLE) -> tuple[float, float]:
    """(right, left): the share of each reference lung that `labels` (classes of `table`) gives to the other lung."""
    shares = []
    for lung, other in ((RIGHT_LUNG, LEFT_LUNG), (LEFT_LUNG, RIGHT_LUNG)):
        reference = truth_table.mask(truth, lung)
        shares.append(float(table.mask(labels[reference], other).mean()) if reference.any() else 0.0)
    return shares[0], shares[1]


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
                                                        seed=task.seed)
    table = state.table
    lungs = tuple(sorted(set(table.classes_with(RIGHT_LUNG)) | set(table.classes_with(LEFT_LUNG))))
    return ImageFigures(dice_per_structure(cert.labels, task.labels, table),
                        float(np.mean(cert.labels == ABSTAIN)), float(cert.timings["total"]),
                        task.request.n0 + cert.estimation_samples, wrong_side_shares(cert.labels, task.labels, table),
                        ratio_bounds(cert.labels, table.classes_with(HEART), lungs))


def evaluate(samples: list[Sample], models: LoadedModels, requests: list[CertificationRequest],
             configurations: list[Configuration], options: RunOptions = RunOptions(),
             progress: bool = True, run_tasks=None) -> Evaluation:
    """Clean Dice, then certified Dice, abstention and cost per configuration and request (one per sigma).

    `run_tasks(tasks) -> [ImageFigures]` certifies the tasks elsewhere (a Ray pool, certseg.scale); by default here,
    one after another.  Each image's noise seed comes from the run seed and its name, so both give the same rows."""
    card = models.segmenter_card
    device = resolve_device(options.device)
    run_seed = fresh_seed() if requests[0].seed is None else requests[0].seed  # one run, one seed
    names = [label.name for label in card.structures]
    pairs = [to_model_space(s, card.input.size, card.input.percentiles) for s in samples]
    annotated = _annotated_mask(samples, len(names))
    all_rows: list[Row] = []
    clean, clean_ratios = {}, {}
    with_ratio = [HEART in s.annotated and RIGHT_LUNG in s.annotated for s in samples]
    references = [plain_ratio(y, CLASS_TABLE) if measured else None for (_, y), measured in zip(pairs, with_ratio)]
    for with_rule in dict.fromkeys(c.laterality_rule for c in configurations):
        plain = CertifiedSegmenter(models.network, models.num_classes, None, device,
                                   laterality=models.laterality if with_rule else None)
        labels = [plain.segment_clean(x) for x, _ in pairs]
        clean_ratios[with_rule] = [plain_ratio(l, models.class_table) if measured else None
                                   for l, measured in zip(labels, with_ratio)]
        per_image = [dice_per_structure(l, y, models.class_table) for l, (_, y) in zip(labels, pairs)]
        sides = _wrong_side_images([wrong_side_shares(l, y, models.class_table) for l, (_, y) in zip(labels, pairs)])
        configuration = "clean" if with_rule else "clean, no laterality rule"
        clean[with_rule] = _mean_over_annotated(per_image, annotated)
        all_rows += [Row(configuration, None, name, float(d), None, None, None, None, sides.get(name))
                     for name, d in zip(names, clean[with_rule]) if not np.isnan(d)]
    groups = [(configuration, request) for configuration in configurations for request in requests]
    tasks = [ImageTask(configuration, request, x, y, image_noise_seed(run_seed, sample.name))
             for configuration, request in groups for sample, (x, y) in zip(samples, pairs)]
    if run_tasks is None:
        state = evaluation_state(models, configurations, options)
        figures = [certify_task(state, task) for task in tqdm(tasks, desc="certifying", disable=not progress)]
    else:
        figures = run_tasks(tasks)
    ratios = []
    for number, (configuration, request) in enumerate(groups):
        group = figures[number * len(samples):(number + 1) * len(samples)]
        mean_dice = _mean_over_annotated([f.dice for f in group], annotated)
        sides = _wrong_side_images([f.wrong_side for f in group])
        all_rows += [
            Row(str(configuration), request.sigma, name, float(c), float(d), float(np.mean([f.abstention for f in group])),
                float(np.mean([f.seconds for f in group])), float(np.mean([f.samples for f in group])), sides.get(name))
            for name, c, d in zip(names, clean[configuration.laterality_rule], mean_dice) if not np.isnan(d)
        ]
        ratios += [RatioRecord(sample.name, str(configuration), request.sigma, reference, clean_ratio, *f.ratio)
                   for sample, reference, clean_ratio, f, measured
                   in zip(samples, references, clean_ratios[configuration.laterality_rule], group, with_ratio) if measured]
    return Evaluation(all_rows, ratios)


@dataclass(frozen=True)
class Evaluation:
    rows: list[Row]
    ratios: list[RatioRecord]  # images with heart and lungs annotated, per configuration and sigma


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


def plain_ratio(labels: np.ndarray, table: ClassTable) -> float | None:
    """The cardiothoracic ratio of a class map of `table`: reference masks, or the clean network's labels."""
    return cardiothoracic_ratio(table.mask(labels, HEART), table.mask(labels, RIGHT_LUNG) | table.mask(labels, LEFT_LUNG))


def _wrong_side_images(shares: list[tuple[float, float]]) -> dict[str, float]:
    values = np.asarray(shares, dtype=float).reshape(-1, 2)
    return {"right lung": float(np.mean(values[:, 0] > WRONG_SIDE_SHARE)),
            "left lung": float(np.mean(values[:, 1] > WRONG_SIDE_SHARE))}


def _annotated_mask(samples: list[Sample], num_structures: int) -> np.ndarray:
    """(images, structures) True where the image's dataset labels the structure."""
    return np.array([[value in s.annotated for value in range(1, num_structures + 1)] for s in samples])


def _mean_over_annotated(per_image: list[np.ndarray], annotated: np.ndarray) -> np.ndarray:
    """Mean Dice per structure over the images that label it (NaN where none does)."""
    values = np.where(annotated, np.asarray(per_image), np.nan)
    with np.errstate(invalid="ignore"):
        return np.nanmean(values, axis=0) if values.size else values


def write_outputs(evaluation: Evaluation, out: Path, tau: float) -> None:
    """evaluation.csv, evaluation.md and evaluation.png (certified Dice against the radius); with ratio records,
    ctr.csv, ctr.md and ctr-bland-altman.png."""
    rows = evaluation.rows
    fields = list(Row.__dataclass_fields__)
    with open(out / "evaluation.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=fields)
        writer.writeheader()
        writer.writerows(row.__dict__ for row in rows)
    (out / "evaluation.md").write_text(markdown_table(rows))
    _plot(rows, out / "evaluation.png", tau)
    if evaluation.ratios:
        write_ratio_outputs(evaluation.ratios, out)


def markdown_table(rows: list[Row]) -> str:
    def show(value, fmt):
        return "-" if value is None else format(value, fmt)

    lines = ["| configuration | sigma | structure | clean Dice | certified Dice | abstained | s / image | samples / image "
             "| wrong-side images |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row.configuration} | {show(row.sigma, 'g')} | {row.structure} | {row.clean_dice:.3f} | "
                     f"{show(row.certified_dice, '.3f')} | {show(row.abstention, '.1%')} | "
                     f"{show(row.seconds_per_image, '.1f')} | {show(row.samples_per_image, '.0f')} | "
                     f"{show(row.wrong_side_images, '.1%')} |")
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


@dataclass(frozen=True)
class RatioSummary:
    """One configuration's cardiothoracic ratios against the reference (NaN where nothing is counted)."""

    images: int  # with a reference ratio
    clean_mae: float  # the clean network's mean absolute error
    certified: float  # share with a certified interval
    contains_reference: float  # share whose certified interval contains the reference
    decides: float  # share whose interval lies on one side of 0.5
    decides_rightly: float  # of those, the share on the reference's side


def ratio_summary(records: list[RatioRecord]) -> RatioSummary:
    """Against the reference: the clean value's mean absolute error, and the shares of certified intervals that
    contain the reference, that decide the 0.5 question, and that decide it rightly."""
    usable = [r for r in records if r.reference is not None]
    decided = [r for r in usable if r.verdict in (RatioVerdict.BELOW, RatioVerdict.ABOVE)]
    right = [r for r in decided if (r.verdict is RatioVerdict.ABOVE) == (r.reference > RATIO_THRESHOLD)]
    clean = [abs(r.clean - r.reference) for r in usable if r.clean is not None]
    contains = [r.low is not None and r.low <= r.reference <= r.high for r in usable]
    nan = float("nan")
    return RatioSummary(images=len(usable), clean_mae=float(np.mean(clean)) if clean else nan,
                        certified=float(np.mean([r.low is not None for r in usable])) if usable else nan,
                        contains_reference=float(np.mean(contains)) if usable else nan,
                        decides=len(decided) / len(usable) if usable else nan,
                        decides_rightly=len(right) / len(decided) if decided else nan)


def write_ratio_outputs(records: list[RatioRecord], out: Path) -> None:
    with open(out / "ctr.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["image", "configuration", "sigma", "reference", "clean", "low", "high", "verdict"])
        writer.writerows([r.image, r.configuration, r.sigma, r.reference, r.clean, r.low, r.high, r.verdict]
                         for r in records)

    def share(value: float) -> str:
        return "-" if np.isnan(value) else f"{value:.1%}"

    lines = ["| configuration | sigma | images | clean MAE | interval certified | interval contains reference | "
             "decides 0.5 | decides rightly |", "|---|---|---|---|---|---|---|---|"]
    for key in dict.fromkeys((r.configuration, r.sigma) for r in records):
        summary = ratio_summary([r for r in records if (r.configuration, r.sigma) == key])
        lines.append(f"| {key[0]} | {key[1]:g} | {summary.images} | {summary.clean_mae:.3f} | "
                     f"{share(summary.certified)} | {share(summary.contains_reference)} | "
                     f"{share(summary.decides)} | {share(summary.decides_rightly)} |")
    (out / "ctr.md").write_text("\n".join(lines) + "\n")
    _bland_altman(records, out / "ctr-bland-altman.png")


def _bland_altman(records: list[RatioRecord], path: Path) -> None:
    """Clean network against reference (difference over mean), with the certified intervals as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = records[0].configuration, records[0].sigma
    chosen = [r for r in records if (r.configuration, r.sigma) == first and r.reference is not None and r.clean is not None]
    mean = np.array([(r.clean + r.reference) / 2 for r in chosen])
    difference = np.array([r.clean - r.reference for r in chosen])
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for r, m in zip(chosen, mean):
        if r.low is not None:
            axis.plot([m, m], [r.low - r.reference, r.high - r.reference], color="0.75", linewidth=1)
    axis.scatter(mean, difference, s=12, color="C0", label="clean network - reference", zorder=3)
    bias, spread = float(np.mean(difference)), float(np.std(difference, ddof=1)) if len(chosen) > 1 else 0.0
    for value, style in ((bias, "-"), (bias + 1.96 * spread, "--"), (bias - 1.96 * spread, "--")):
        axis.axhline(value, color="C3", linestyle=style, linewidth=1)
    axis.axvline(0.5, color="0.4", linestyle=":", linewidth=1)
    axis.set_xlabel("mean of network and reference cardiothoracic ratio")
    axis.set_ylabel("difference (network - reference)")
    axis.set_title(f"Bland-Altman, {len(chosen)} images; grey: certified interval - reference "
                   f"({first[0]}, sigma {first[1]:g})", fontsize=9)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
