"""The laterality rule: each lung (and clavicle) label only on its own side of the thorax's midline.

A certificate says a label is stable, not that it is right, and a stable wrong side is the error a
radiologist forgives least: a network can give part of the left lung to the right lung with full
confidence.  The rule is applied inside the base function f, after the network's labels:

1. the lungs are every pixel the network labels as either lung;
2. on each row, the mediastinum is the widest gap between two lung pixels; its centre is a point of
   the midline;
3. the midline is the line x = a + b y through those points, fitted by least squares after dropping
   rows more than a tenth of the width from their median (a hole in one lung is not the mediastinum),
   with its slope bounded (a chest is never tilted by more than about 14 degrees on a film); with too
   few rows it is the vertical through the centre of the lungs' extent;
4. every pixel of a lateral pair of classes (right lung / left lung, right clavicle / left clavicle,
   right lung under right clavicle / left lung under left clavicle) takes the pair's patient's-right
   class on the viewer's left of the midline and its patient's-left class on the viewer's right (a
   frontal film as displayed: the patient's right is on the viewer's left).

Why the certificate covers it: randomized smoothing certifies the smoothed version of any
deterministic base function (Cohen et al. 2019, Theorem 1 holds for every measurable f).  The rule is
a deterministic function of the network's labels, which are a deterministic function of the noisy
image, so f = rule o network is such a function, and every certified label is a label of the smoothed
rule o network.  Nothing in the statistics changes; the rule only changes which answers are stable.
It runs on every noisy copy and on the clean image alike (docs/method.md §5a).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from certseg.core.labels import ClassTable

MIN_MIDLINE_ROWS = 8  # fewer rows with a mediastinal gap: a vertical midline through the lungs' centre
OUTLIER_SHARE = 0.1  # rows whose gap centre lies more than this share of the width from the median
MAX_SLOPE = 0.25  # columns per row


@dataclass(frozen=True)
class LateralityRule:
    """Class values: the classes holding a lung (they define the midline), and the (patient's right,
    patient's left) pairs of mirror-image classes."""

    lungs: tuple[int, ...] = (1, 2)
    pairs: tuple[tuple[int, int], ...] = ((1, 2), (4, 5))

    def describe(self) -> str:
        return ("midline laterality rule: each lung and clavicle label kept on its own side of the midline found "
                "from the network's lungs on every noisy copy (model.laterality)")

    def __call__(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, H, W) labels -> the same labels with every lateral pair on its side of each image's midline."""
        lungs = torch.isin(labels, torch.tensor(self.lungs, device=labels.device, dtype=labels.dtype))
        midline = midline_columns(lungs)  # (B, H)
        columns = torch.arange(labels.shape[-1], device=labels.device, dtype=midline.dtype)
        on_patients_right = columns[None, None, :] < midline[:, :, None]
        for right, left in self.pairs:
            lateral = (labels == right) | (labels == left)
            sided = torch.where(on_patients_right, torch.full_like(labels, right), torch.full_like(labels, left))
            labels = torch.where(lateral, sided, labels)
        return labels


def rule_for_labels(values: dict[str, int], table: ClassTable | None = None) -> LateralityRule | None:
    """The rule for a model's structures (name -> value) and class table: None without a right and left lung.

    Two classes are a lateral pair when one stands for the mirror image of the other's structures
    (every "right x" for "left x"): right lung / left lung, and right lung under right clavicle /
    left lung under left clavicle."""
    if "right lung" not in values or "left lung" not in values:
        return None
    table = table or ClassTable.one_class_per_structure(max(values.values()) + 1)
    left_of = {value: values[f"left {name[len('right '):]}"] for name, value in values.items()
               if name.startswith("right ") and f"left {name[len('right '):]}" in values}
    pairs = []
    for value, members in enumerate(table.structures_of):
        if members and all(member in left_of for member in members):  # a class of right-sided structures only
            try:
                pairs.append((value, table.class_of({left_of[member] for member in members})))
            except ValueError:
                continue  # its mirror image is no class of the table
    lungs = tuple(sorted(set(table.classes_with(values["right lung"])) | set(table.classes_with(values["left lung"]))))
    return LateralityRule(lungs, tuple(pairs))


def midline_columns(lungs: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool lungs -> (B, H) float: the midline's column on every row of each image."""
    batch, height, width = lungs.shape
    centres, valid = _mediastinal_centres(lungs)
    rows = torch.arange(height, device=lungs.device, dtype=torch.float32).expand(batch, height)
    median = _masked_median(centres, valid)
    valid = valid & ((centres - median[:, None]).abs() <= OUTLIER_SHARE * width)
    mean_row, mean_centre, slope = _line_fit(rows, centres, valid)
    slope = slope.clamp(-MAX_SLOPE, MAX_SLOPE)  # the line still passes through the rows' centroid
    enough = valid.sum(dim=1) >= MIN_MIDLINE_ROWS
    intercept = torch.where(enough, mean_centre - slope * mean_row, _extent_centre(lungs))
    slope = torch.where(enough, slope, torch.zeros_like(slope))
    return intercept[:, None] + slope[:, None] * rows


def _mediastinal_centres(lungs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the centre of the widest gap between two lung pixels, and whether the row has one."""
    width = lungs.shape[-1]
    columns = torch.arange(width, device=lungs.device).expand_as(lungs)
    previous = torch.where(lungs, columns, torch.full_like(columns, -1)).cummax(dim=-1).values
    following = torch.where(lungs, columns, torch.full_like(columns, width)).flip(-1).cummin(dim=-1).values.flip(-1)
    inside = ~lungs & (previous >= 0) & (following < width)
    gap = torch.where(inside, following - previous - 1, torch.zeros_like(columns))
    widest, at = gap.max(dim=-1)
    start = previous.gather(-1, at[..., None])[..., 0]
    end = following.gather(-1, at[..., None])[..., 0]
    return (start + end).float() / 2, widest > 0


def _masked_median(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    filled = torch.where(mask, values, torch.full_like(values, float("nan")))
    median = filled.nanmedian(dim=1).values
    return torch.nan_to_num(median, nan=values.shape[1] / 2)


def _line_fit(rows: torch.Tensor, centres: torch.Tensor,
              mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares line of centres against rows over `mask`: (mean row, mean centre, slope; 0 when degenerate)."""
    weight = mask.float()
    count = weight.sum(dim=1).clamp(min=1)
    mean_row = (weight * rows).sum(dim=1) / count
    mean_centre = (weight * centres).sum(dim=1) / count
    spread = (weight * (rows - mean_row[:, None]) ** 2).sum(dim=1)
    covariance = (weight * (rows - mean_row[:, None]) * (centres - mean_centre[:, None])).sum(dim=1)
    slope = torch.where(spread > 0, covariance / spread.clamp(min=1e-9), torch.zeros_like(spread))
    return mean_row, mean_centre, slope


def _extent_centre(lungs: torch.Tensor) -> torch.Tensor:
    """The centre of the lungs' horizontal extent (the image's centre without lungs)."""
    width = lungs.shape[-1]
    present = lungs.any(dim=1)  # (B, W)
    columns = torch.arange(width, device=lungs.device, dtype=torch.float32).expand_as(present)
    first = torch.where(present, columns, torch.full_like(columns, float(width))).min(dim=1).values
    last = torch.where(present, columns, torch.full_like(columns, -1.0)).max(dim=1).values
    return torch.where(last >= 0, (first + last) / 2, torch.full_like(first, width / 2))
