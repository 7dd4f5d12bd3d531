"""Two ways to certify overlapping structures, measured on the same noise samples.

(i)  one test per pixel: the class (the set of structures present, among the class table's
     combinations) is certified as today (docs/method.md §1 and §1a);
(ii) one binary test per structure and pixel, "present" or "absent", corrected over every
     structure and pixel together (Holm over S x H x W hypotheses).

Both read the same base function on the same selection and estimation samples: route (ii)'s
vote for structure s is the number of samples whose class stands for s, so the comparison is
paired and costs one sampling pass.  `certseg evaluate-routes` prints per structure the
certified Dice (abstained pixels count as errors) and the abstained share under each route.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from certseg.core.labels import ABSTAIN, ClassTable
from certseg.core.parameters import SmoothingParameters
from certseg.core.sampling import ESTIMATION_STAGE, SELECTION_STAGE, count_votes
from certseg.core.stats import binomial_upper_tail_pvalue, reject_hypotheses
from certseg.model.segmenter import CertifiedSegmenter
from certseg.request import CertificationRequest, Mode

PRESENT, ABSENT = 1, 0


@dataclass(frozen=True)
class RouteCertificates:
    """One image certified both ways."""

    per_pixel: np.ndarray  # (H, W) route (i): certified class value, ABSTAIN elsewhere
    per_structure: np.ndarray  # (S, H, W) route (ii): PRESENT, ABSENT or ABSTAIN per structure of the table


def certify_both_routes(segmenter: CertifiedSegmenter, table: ClassTable, image: np.ndarray,
                        request: CertificationRequest, seed: int) -> RouteCertificates:
    params = SmoothingParameters.resolved(Mode.CERTIFY, request, table.num_classes, seed, None, segmenter.device)
    base = segmenter.base_segmenter(request.sigma)
    x = torch.as_tensor(image, dtype=torch.float32, device=segmenter.device)
    selection = count_votes(base, x, params, SELECTION_STAGE, 0, params.n0, None).cpu().numpy()
    estimation = count_votes(base, x, params, ESTIMATION_STAGE, 0, params.n, None).cpu().numpy()
    return RouteCertificates(per_pixel_route(selection, estimation, params),
                             per_structure_route(selection, estimation, params, table))


def per_pixel_route(selection: np.ndarray, estimation: np.ndarray, params: SmoothingParameters) -> np.ndarray:
    candidates = selection.argmax(axis=0)
    counts = np.take_along_axis(estimation, candidates[None], axis=0)[0]
    certified = reject_hypotheses(binomial_upper_tail_pvalue(counts, params.n, params.tau), params.alpha,
                                  params.correction)
    return np.where(certified, candidates, ABSTAIN)


def per_structure_route(selection: np.ndarray, estimation: np.ndarray, params: SmoothingParameters,
                        table: ClassTable) -> np.ndarray:
    """(S, H, W): per structure, its presence candidate from the selection votes, tested on the estimation votes."""
    member = np.array([[s in members for members in table.structures_of] for s in table.structures], dtype=np.int64)
    present_selection = np.tensordot(member, selection, axes=1)  # (S, H, W) samples whose class holds s
    present_estimation = np.tensordot(member, estimation, axes=1)
    candidates = np.where(2 * present_selection > params.n0, PRESENT, ABSENT)
    agreeing = np.where(candidates == PRESENT, present_estimation, params.n - present_estimation)
    certified = reject_hypotheses(binomial_upper_tail_pvalue(agreeing, params.n, params.tau), params.alpha,
                                  params.correction)
    return np.where(certified, candidates, ABSTAIN)


def structure_dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    total = int(predicted.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2 * int((predicted & truth).sum()) / total


@dataclass(frozen=True)
class RouteFigures:
    """Per structure of the table: certified Dice under each route; and the abstained shares."""

    per_pixel_dice: np.ndarray  # (S,)
    per_structure_dice: np.ndarray  # (S,)
    per_pixel_abstained: float  # share of pixels abstained (route i)
    per_structure_abstained: np.ndarray  # (S,) share of pixels abstained for each structure (route ii)
    any_structure_abstained: float  # share of pixels abstained for at least one structure (route ii)


def route_figures(certificates: RouteCertificates, truth: np.ndarray, table: ClassTable,
                  truth_table: ClassTable) -> RouteFigures:
    per_pixel, per_structure = [], []
    for index, structure in enumerate(table.structures):
        reference = truth_table.mask(truth, structure)
        per_pixel.append(structure_dice(table.mask(certificates.per_pixel, structure), reference))
        per_structure.append(structure_dice(certificates.per_structure[index] == PRESENT, reference))
    abstained = certificates.per_structure == ABSTAIN
    return RouteFigures(np.array(per_pixel), np.array(per_structure), float(np.mean(certificates.per_pixel == ABSTAIN)),
                        abstained.mean(axis=(1, 2)), float(abstained.any(axis=0).mean()))
