"""`certseg evaluate`'s outputs: evaluation.csv/.md/.png, and for the cardiothoracic ratio ctr.csv/.md and a
Bland-Altman plot, all from the protocol's typed rows (protocol.Row, protocol.RatioRecord)."""

from __future__ import annotations

import csv
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from certseg.core.measurements import RATIO_THRESHOLD
from certseg.record import RatioVerdict
from certseg.research.evaluation.protocol import Evaluation, RatioRecord, Row


def write_outputs(evaluation: Evaluation, out: Path, tau: float) -> None:
    """evaluation.csv, evaluation.md and evaluation.png (certified Dice against the radius); with ratio records,
    ctr.csv, ctr.md and ctr-bland-altman.png."""
    rows = evaluation.rows
    with open(out / "evaluation.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=[f.name for f in fields(Row)])
        writer.writeheader()
        writer.writerows(vars(row) for row in rows)
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
