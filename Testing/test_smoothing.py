"""The certification engine, on an analytic base model whose smoothed version is known exactly."""

import numpy as np
import pytest
import torch
from scipy import stats

from certseg.core.labels import ABSTAIN
from certseg.core.smoothing import certify_segmentation, predict_segmentation
from certseg.core.stats import binomial_upper_tail_pvalue
from certseg.request import CertificationRequest

pytestmark = pytest.mark.fast  # the fast tier: pytest -m fast


def threshold_model(batch: torch.Tensor) -> torch.Tensor:
    """f_i(x) = [x_i > 0.5]: P(f_i(x + eps) = 1) = Phi((x_i - 0.5) / sigma) exactly."""
    return (batch[:, 0] > 0.5).long()


def true_smoothed(image: np.ndarray, sigma: float):
    """Label, probability of that label, and exact robust radius of the smoothed threshold model."""
    p_one = stats.norm.cdf((image - 0.5) / sigma)
    label = (p_one > 0.5).astype(int)
    return label, np.maximum(p_one, 1 - p_one), np.abs(image - 0.5)


ENGINE_ARGUMENTS = ("num_classes", "noise_seed", "batch_size", "device", "progress")


def certify(image, **overrides):
    """CERTIFY on the threshold model: request fields and engine arguments may both be overridden."""
    settings = dict(num_classes=2, sigma=0.25, n0=10, n=100, alpha=0.001, tau=0.75, noise_seed=0, device="cpu") | overrides
    engine = {key: settings.pop(key) for key in ENGINE_ARGUMENTS if key in settings}
    return certify_segmentation(threshold_model, image, CertificationRequest(**settings), **engine)


def test_confident_pixels_are_certified_with_the_true_label_and_radius():
    image = np.array([[0.0, 1.0], [0.05, 0.95]])
    cert = certify(image, n=200)
    np.testing.assert_array_equal(cert.labels, [[0, 1], [0, 1]])
    assert cert.radius == pytest.approx(0.25 * stats.norm.ppf(0.75))
    assert cert.abstain_fraction == 0.0
    assert np.all(cert.pixel_radius > cert.radius)  # n=200 unanimous votes give a larger per-pixel bound
    assert np.all(cert.pixel_radius <= true_smoothed(image, 0.25)[2])


def test_pixels_at_the_decision_boundary_abstain():
    image = np.full((4, 4), 0.5)
    image[0, 0] = 1.0
    cert = certify(image, n=300)
    assert cert.labels[0, 0] == 1
    assert np.all(cert.labels.ravel()[1:] == ABSTAIN)
    assert np.all(np.isnan(cert.pixel_radius.ravel()[1:]))


@pytest.mark.parametrize("correction", ["holm", "bonferroni"])
def test_soundness_by_simulation_with_known_truth(correction):
    """P(any certified pixel wrong) <= alpha, where wrong = wrong label or claimed radius above the truth.

    Pixels are placed where the true top-class probability is just below tau, so
    certifying them is an error: the worst case for the guarantee.  The same
    counts tested without correction must fail often, which shows the simulation
    can detect an unsound procedure.
    """
    rng = np.random.default_rng(2024)
    sigma, tau, alpha, n, trials = 0.25, 0.75, 0.2, 60, 300
    radius = sigma * stats.norm.ppf(tau)
    failures = uncorrected_failures = 0
    for trial in range(trials):
        # |x - 0.5| in [0.8, 1.0] x the certified radius: true probability slightly below tau.
        offsets = radius * rng.uniform(0.8, 1.0, size=(4, 4)) * rng.choice([-1, 1], size=(4, 4))
        image = 0.5 + offsets
        cert = certify(image, sigma=sigma, tau=tau, alpha=alpha, n=n, correction=correction, noise_seed=trial)
        label, _, true_radius = true_smoothed(image, sigma)
        certified = cert.decided
        wrong = certified & ((cert.labels != label) | (cert.radius > true_radius))
        pixel_claims = ~np.isnan(cert.pixel_radius)
        wrong |= pixel_claims & ((cert.candidates != label) | (cert.pixel_radius > true_radius))
        failures += bool(wrong.any())
        uncorrected = binomial_upper_tail_pvalue(cert.counts, n, tau) <= alpha
        uncorrected_failures += bool(uncorrected.any())
    limit = stats.binom.ppf(0.999, trials, alpha)
    assert failures <= limit, f"{failures} of {trials} certificates wrong, allowed {limit}"
    assert uncorrected_failures > limit


def test_sequential_soundness_by_simulation_with_known_truth():
    """Several looks keep P(any certified pixel wrong) <= alpha, even when every look is used.

    Never stopping early (stop_tolerance 0) returns the union of all looks' certificates, the
    largest any stopping rule could return, so it is the worst case.  Testing every look at the
    full alpha (peeking without splitting alpha) must fail often on the same noise: sample j's
    noise depends only on the seed and j, so a fixed-n run at n = look sees that look's counts.
    """
    rng = np.random.default_rng(7)
    sigma, tau, alpha, trials = 0.25, 0.75, 0.2, 300
    looks = tuple(range(10, 121, 10))
    radius = sigma * stats.norm.ppf(tau)
    failures = peeking_failures = 0
    for trial in range(trials):
        # True probabilities just below tau, as in the fixed-n simulation, but closer to it.
        image = 0.5 + radius * rng.uniform(0.98, 1.0, size=(4, 4)) * rng.choice([-1, 1], size=(4, 4))
        label, _, true_radius = true_smoothed(image, sigma)
        cert = certify(image, sigma=sigma, tau=tau, alpha=alpha, n=looks[-1], looks=looks, noise_seed=trial)
        wrong = cert.decided & ((cert.labels != label) | (cert.radius > true_radius))
        wrong |= ~np.isnan(cert.pixel_radius) & ((cert.candidates != label) | (cert.pixel_radius > true_radius))
        failures += bool(wrong.any())
        peeking_failures += any(
            certify(image, sigma=sigma, tau=tau, alpha=alpha, n=look, noise_seed=trial).decided.any() for look in looks
        )
    limit = stats.binom.ppf(0.999, trials, alpha)
    assert failures <= limit, f"{failures} of {trials} certificates wrong, allowed {limit}"
    assert peeking_failures > limit


def test_sequential_certification_stops_early_only_when_little_is_left_to_gain():
    looks = (125, 250, 500, 1000)
    far = np.where(np.arange(64).reshape(8, 8) % 2 == 0, 0.0, 1.0)  # every pixel decided at once
    easy = certify(far, n=1000, looks=looks, stop_tolerance=0.001)
    assert easy.estimation_samples == 125 and easy.abstain_fraction == 0.0

    # p = 0.85 pixels need about 500 votes to pass tau = 0.75 at this alpha: sampling must go on.
    near = far.copy()
    near[:4] = 0.5 + 0.25 * stats.norm.ppf(0.85)
    hard = certify(near, n=1000, looks=looks, stop_tolerance=0.001)
    assert hard.estimation_samples > 250
    full = certify(near, n=1000, looks=looks, stop_tolerance=0.0)
    assert full.estimation_samples == 1000
    np.testing.assert_array_equal(full.counts, certify(near, n=1000).counts)  # same noise as fixed n


def test_soundness_on_random_images_at_paper_parameters():
    rng = np.random.default_rng(5)
    for trial in range(40):
        image = rng.uniform(0, 1, size=(8, 8))
        cert = certify(image, noise_seed=100 + trial, alpha=0.01)
        label, _, true_radius = true_smoothed(image, 0.25)
        certified = cert.decided
        assert np.all(cert.labels[certified] == label[certified])
        assert np.all(cert.radius <= true_radius[certified])


def test_same_seed_same_certificate_whatever_the_batch_size():
    image = np.random.default_rng(0).uniform(0.3, 0.7, size=(16, 16))
    reference = certify(image, noise_seed=42, batch_size=7)
    for batch_size in (1, 32, 110):
        other = certify(image, noise_seed=42, batch_size=batch_size)
        np.testing.assert_array_equal(other.labels, reference.labels)
        np.testing.assert_array_equal(other.counts, reference.counts)
    different_seed = certify(image, noise_seed=43, batch_size=7)
    assert not np.array_equal(different_seed.counts, reference.counts)


def test_selection_samples_are_not_reused_for_counting():
    seen = []

    def recording_model(batch):
        seen.append(batch.clone())
        return threshold_model(batch)

    request = CertificationRequest(sigma=0.25, n0=5, n=8, alpha=0.01, tau=0.75)
    certify_segmentation(recording_model, np.full((3, 3), 0.6), request,
                         num_classes=2, noise_seed=1, batch_size=4, device="cpu")
    samples = torch.cat(seen)
    assert samples.shape[0] == 13
    assert torch.unique(samples.reshape(13, -1), dim=0).shape[0] == 13


def test_progress_reports_every_sample_once():
    calls = []
    certify(np.zeros((4, 4)), n0=10, n=25, batch_size=8, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (35, 35)
    assert all(a[0] < b[0] for a, b in zip(calls, calls[1:]))


def test_progress_ends_at_the_total_once_when_sequential_certification_stops_early():
    calls = []
    cert = certify(np.zeros((4, 4)), n0=10, n=400, looks=(100, 200, 400), stop_tolerance=0.01, batch_size=32,
                   progress=lambda done, total: calls.append((done, total)))
    assert cert.estimation_samples == 100
    assert calls[-1] == (410, 410)
    assert all(a[0] < b[0] for a, b in zip(calls, calls[1:]))


def test_seed_is_drawn_and_recorded_when_not_given():
    image = np.random.default_rng(1).uniform(0.4, 0.6, size=(6, 6))
    first = certify(image, noise_seed=None)
    replay = certify(image, noise_seed=first.parameters.noise_seed)
    np.testing.assert_array_equal(first.counts, replay.counts)


def test_predict_returns_significant_majority_labels_without_radius():
    image = np.array([[0.0, 1.0, 0.5]])
    result = predict_segmentation(threshold_model, image, CertificationRequest(sigma=0.25, n=200, alpha=0.001),
                                  num_classes=2, noise_seed=0, device="cpu")
    assert result.radius is None and result.pixel_radius is None
    assert list(result.labels[0, :2]) == [0, 1]
    assert result.labels[0, 2] == ABSTAIN


def test_multiclass_counts_pick_the_majority_class():
    def three_bands(batch):
        return torch.bucketize(batch[:, 0], torch.tensor([1 / 3, 2 / 3]))

    image = np.array([[0.0, 0.5, 1.0]])
    request = CertificationRequest(sigma=0.05, n0=10, n=100, alpha=0.001, tau=0.75)
    cert = certify_segmentation(three_bands, image, request,
                                num_classes=3, noise_seed=0, device="cpu")
    np.testing.assert_array_equal(cert.labels, [[0, 1, 2]])


@pytest.mark.parametrize(
    "override, message",
    [
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -1.0}, "sigma"),
        ({"n0": 0}, "n0"),
        ({"n": 0}, "n must"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"tau": 0.5}, "tau"),
        ({"tau": 1.0}, "tau"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_classes": 1}, "num_classes"),
        ({"correction": "none"}, "correction"),
        ({"looks": [50, 90]}, "looks"),
        ({"looks": [60, 40, 100]}, "looks"),
        ({"looks": [0, 100]}, "looks"),
        ({"looks": [50, 100], "stop_tolerance": -0.1}, "stop_tolerance"),
    ],
)
def test_bad_parameters_raise_one_clear_error(override, message):
    with pytest.raises(ValueError, match=message):
        certify(np.zeros((4, 4)), **override)


@pytest.mark.parametrize("image", [np.zeros((2, 3, 4)), np.zeros(5), np.zeros((0, 4)), np.array([[np.nan]])])
def test_bad_images_are_refused(image):
    with pytest.raises(ValueError, match="image"):
        certify(image)


def test_base_model_returning_invalid_labels_is_refused():
    with pytest.raises(ValueError, match="labels outside"):
        request = CertificationRequest(sigma=0.25, n0=1, n=1, alpha=0.1, tau=0.75)
        certify_segmentation(lambda b: threshold_model(b) + 5, np.zeros((2, 2)), request,
                             num_classes=2, device="cpu")


SIDE = 64  # a 64 x 64 image: 4,096 dimensions, enough for the attacker to align with every known draw


def _noise_of_seed(seed: int, n0: int, n: int, sigma: float) -> torch.Tensor:
    """The exact noise draws a certification with `seed` uses: record what the base model sees on a zero image."""
    seen = []

    def recorder(batch):
        seen.append(batch[:, 0].clone())
        return torch.zeros(batch.shape[0], SIDE, SIDE, dtype=torch.long)

    request = CertificationRequest(sigma=sigma, n0=n0, n=n, alpha=0.001, tau=0.75)
    certify_segmentation(recorder, np.zeros((SIDE, SIDE)), request,
                         num_classes=2, noise_seed=seed, device="cpu")
    return torch.cat(seen)


def test_a_seed_known_in_advance_lets_an_attacker_certify_what_fresh_noise_refuses():
    """The break the default seed 0 allowed, with a fixed, harmless base model: a ball classifier.

    f(z) = 1 at every pixel iff ||z - a|| < r, with r set so that fresh noise votes 1 with probability
    0.25 at the crafted image, far below tau = 0.75.  Knowing seed 0's 110 draws, the attacker moves
    the image against their sum, so each known draw lands inside the ball; fresh draws do not.
    """
    sigma, n0, n = 0.25, 10, 100
    known = _noise_of_seed(0, n0, n, sigma).reshape(n0 + n, -1).double()
    direction = -known.sum(dim=0) / known.sum(dim=0).norm()
    offset = 20.0 * direction  # x - a
    rng = np.random.default_rng(7)
    fresh = torch.as_tensor(rng.normal(0, sigma, (20000, SIDE * SIDE)))
    squared = lambda eps: ((offset + eps) ** 2).sum(dim=1)  # noqa: E731  ||x + eps - a||^2
    radius_squared = float(torch.quantile(squared(fresh), 0.25))
    centre = torch.full((SIDE * SIDE,), 0.5, dtype=torch.float64)
    crafted = (centre + offset).reshape(SIDE, SIDE).numpy()

    def ball(batch):
        inside = ((batch.reshape(len(batch), -1).double() - centre) ** 2).sum(dim=1) < radius_squared
        return inside.long()[:, None, None].expand(-1, SIDE, SIDE)

    request = CertificationRequest(sigma=sigma, n0=n0, n=n, alpha=0.001, tau=0.75)
    def run(seed):
        return certify_segmentation(ball, crafted, request, num_classes=2, noise_seed=seed, device="cpu")

    attacked = run(0)
    assert attacked.counts[0, 0] == n and (attacked.labels == 1).all()  # certified, though p = 0.25
    honest = run(None)  # the default: fresh OS entropy
    votes_for_one = honest.counts[0, 0] if honest.candidates[0, 0] == 1 else n - honest.counts[0, 0]
    assert honest.parameters.noise_seed != 0 and votes_for_one < 50 and (honest.labels == ABSTAIN).all()


def test_seeds_that_differ_above_bit_32_draw_different_noise():
    low = 12345
    for high in (low + (1 << 32), low + (1 << 40), low + (1 << 62)):
        assert not torch.equal(_noise_of_seed(low, 1, 2, 1.0), _noise_of_seed(high, 1, 2, 1.0))


def test_images_of_one_run_never_share_noise_and_the_run_seed_reproduces_each():
    from certseg.core.parameters import fresh_seed, image_noise_seed

    run = fresh_seed()
    seeds = {image_noise_seed(run, f"1.2.3.{index}") for index in range(1000)}
    assert len(seeds) == 1000 and all(0 <= s < 2**63 for s in seeds)
    assert image_noise_seed(run, "1.2.3.4") == image_noise_seed(run, "1.2.3.4")
    assert fresh_seed() != fresh_seed()


def test_predict_uses_bonferroni_and_keeps_the_family_wise_error_below_alpha():
    """Pixels whose smoothed label is 0 with probability only 0.53: a wrong 1 anywhere is a family-wise error."""
    alpha, trials = 0.1, 200
    image = np.full((5, 10), 0.5 - 0.25 * stats.norm.ppf(0.53))
    errors = 0
    for trial in range(trials):
        result = predict_segmentation(threshold_model, image, CertificationRequest(sigma=0.25, n=100, alpha=alpha),
                                      num_classes=2, noise_seed=trial, device="cpu")
        errors += bool((result.labels == 1).any())
    assert result.parameters.correction == "bonferroni"
    assert errors / trials <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / trials)


def test_pixel_radius_is_stated_only_where_the_certificate_certifies():
    """Counts of 78-95 of 100 pass the Clopper-Pearson bound > 1/2 but not tau: no radius there."""
    image = np.linspace(0.55, 1.2, 64).reshape(8, 8)
    cert = certify(image, n=100)
    assert np.isnan(cert.pixel_radius[~cert.decided]).all()
    assert np.isfinite(cert.pixel_radius[cert.decided]).all() and cert.decided.any() and (~cert.decided).any()
    assert (cert.counts[~cert.decided] > 60).any()  # abstained pixels that once received a radius
