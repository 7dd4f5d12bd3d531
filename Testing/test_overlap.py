"""Overlapping structures: the class table, and both certification routes checked by simulation of known truth."""

import numpy as np
import pytest
import torch
from scipy import stats

from certseg.core.labels import ABSTAIN, ClassTable
from certseg.core.parameters import SmoothingParameters
from certseg.core.sampling import ESTIMATION_STAGE, SELECTION_STAGE, count_votes
from certseg.core.smoothing import certify_segmentation
from certseg.dicom.codes import CLASS_TABLE
from certseg.request import CertificationRequest, Mode
from certseg.research.overlap_routes import PRESENT, per_pixel_route, per_structure_route

pytestmark = pytest.mark.fast  # the fast tier: pytest -m fast

LUNG, CLAVICLE = 1, 2
TABLE = ClassTable(((), (LUNG,), (CLAVICLE,), (LUNG, CLAVICLE)))  # class 3: lung under clavicle


def overlapping_model(batch: torch.Tensor) -> torch.Tensor:
    """Pixel (r, c) holds lung where x[r, c] > 0.5 and clavicle where x[r + H/2, c] > 0.5 (rows wrap).

    Both are thresholds of independent noise, so P(lung) = Phi((x[r, c] - 0.5) / sigma) and
    P(clavicle) = Phi((x[r + H/2, c] - 0.5) / sigma) exactly, and the class's probability is their product."""
    x = batch[:, 0]
    lung = x > 0.5
    clavicle = torch.roll(x, -x.shape[-2] // 2, dims=-2) > 0.5
    return lung.long() + 2 * clavicle.long()


def structure_probabilities(image: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    p_lung = stats.norm.cdf((image - 0.5) / sigma)
    return p_lung, np.roll(p_lung, -image.shape[0] // 2, axis=0)


def image_with(probabilities: np.ndarray, sigma: float, rng) -> np.ndarray:
    """Pixel values whose threshold probability of the smoothed label is `probabilities`, on a random side."""
    return 0.5 + sigma * stats.norm.ppf(probabilities) * rng.choice([-1, 1], size=probabilities.shape)


def votes(image: np.ndarray, request: CertificationRequest, seed: int):
    params = SmoothingParameters.resolved(Mode.CERTIFY, request, TABLE.num_classes, seed, None, "cpu")
    x = torch.as_tensor(image, dtype=torch.float32)
    return (count_votes(overlapping_model, x, params, SELECTION_STAGE, 0, params.n0, None).numpy(),
            count_votes(overlapping_model, x, params, ESTIMATION_STAGE, 0, params.n, None).numpy(), params)


def test_the_shipped_table_has_overlapping_lung_and_clavicle_classes_and_separate_heart():
    assert CLASS_TABLE.classes_with(1) == (1, 6) and CLASS_TABLE.classes_with(4) == (4, 6)
    assert CLASS_TABLE.classes_with(3) == (3,)  # SCR's lungs exclude the heart
    labels = np.array([[0, 1, 6, ABSTAIN], [4, 7, 2, 3]])
    assert CLASS_TABLE.mask(labels, 1).tolist() == [[False, True, True, False], [False, False, False, False]]
    assert CLASS_TABLE.mask(labels, 5).tolist() == [[False, False, False, False], [False, True, False, False]]
    assert ClassTable.from_card(None, 6) == ClassTable.one_class_per_structure(6)
    assert ClassTable.from_card(CLASS_TABLE.card(), 6) == CLASS_TABLE
    with pytest.raises(ValueError):
        ClassTable(((), (1,), (1,)))


def test_route_one_is_the_engines_certificate_on_the_same_noise():
    rng = np.random.default_rng(3)
    image = rng.choice([-0.4, 0.45, 1.4], size=(8, 8))  # certain absence, uncertain, certain presence
    request = CertificationRequest(sigma=0.25, n0=10, n=100, alpha=0.01)
    selection, estimation, params = votes(image, request, seed=5)
    engine = certify_segmentation(overlapping_model, image, request, num_classes=TABLE.num_classes, noise_seed=5,
                                  device="cpu")
    np.testing.assert_array_equal(per_pixel_route(selection, estimation, params), engine.labels)
    assert (engine.labels == 3).any()  # lung under clavicle certified as one class


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_route_one_keeps_the_family_wise_error_with_overlapping_truth(alpha):
    """Pixels whose true class (a set of structures) has probability just below tau: certifying any is an error.

    The same counts tested without correction must fail often, so the simulation can see an unsound test."""
    rng = np.random.default_rng(11)
    sigma, tau, n, trials = 0.25, 0.75, 60, 250
    request = CertificationRequest(sigma=sigma, n0=10, n=n, alpha=alpha, tau=tau)
    failures = uncorrected = overlapping_truth = 0
    for trial in range(trials):
        lung_side = rng.uniform(0.9, 0.99, size=(2, 4))
        joint = tau * rng.uniform(0.9, 0.99, size=(2, 4))
        image = image_with(np.vstack([lung_side, joint / lung_side]), sigma, rng)
        p_lung, p_clavicle = structure_probabilities(image, sigma)
        truth = (p_lung > 0.5).astype(int) + 2 * (p_clavicle > 0.5)
        top = np.maximum(p_lung, 1 - p_lung) * np.maximum(p_clavicle, 1 - p_clavicle)
        assert (top < tau).all()
        overlapping_truth += int((truth == 3).sum())
        selection, estimation, params = votes(image, request, seed=trial)
        certified = per_pixel_route(selection, estimation, params)
        failures += bool((certified != ABSTAIN).any())  # every claim p >= tau is false here
        counts = np.take_along_axis(estimation, selection.argmax(0)[None], 0)[0]
        uncorrected += bool((stats.binom.sf(counts - 1, n, tau) <= alpha).any())
    limit = stats.binom.ppf(0.999, trials, alpha)
    assert failures <= limit < uncorrected and overlapping_truth > trials  # lung under clavicle is often the truth


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_route_two_keeps_the_family_wise_error_over_structures_and_pixels(alpha):
    """Every structure's presence (or absence) just below tau: any certified structure is an error."""
    rng = np.random.default_rng(12)
    sigma, tau, n, trials = 0.25, 0.75, 60, 250
    request = CertificationRequest(sigma=sigma, n0=10, n=n, alpha=alpha, tau=tau)
    failures = 0
    for trial in range(trials):
        image = image_with(tau * rng.uniform(0.9, 0.99, size=(4, 4)), sigma, rng)
        selection, estimation, params = votes(image, request, seed=trial)
        failures += bool((per_structure_route(selection, estimation, params, TABLE) != ABSTAIN).any())
    assert failures <= stats.binom.ppf(0.999, trials, alpha)


def test_route_two_certifies_a_structure_where_route_one_must_abstain():
    """A lung certain but its clavicle uncertain: route (ii) keeps the lung, route (i) loses the pixel."""
    image = np.vstack([np.full((2, 2), 1.2), np.full((2, 2), 0.5)])  # lung p ~ 1, clavicle p = 0.5
    request = CertificationRequest(sigma=0.25, n0=10, n=200, alpha=0.01)
    selection, estimation, params = votes(image, request, seed=1)
    assert (per_pixel_route(selection, estimation, params)[:2] == ABSTAIN).all()
    assert (per_structure_route(selection, estimation, params, TABLE)[0, :2] == PRESENT).all()
