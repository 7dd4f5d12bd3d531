"""The statistics against independent implementations (scipy.stats, statsmodels)."""

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from certseg.core.stats import (
    binomial_upper_tail_pvalue,
    certification_chance,
    clopper_pearson_lower,
    minimum_certifiable_count,
    radius_from_probability,
    reject_hypotheses,
    two_sided_binomial_pvalue,
)

pytestmark = pytest.mark.fast  # the fast tier: pytest -m fast


@pytest.mark.parametrize("n, tau", [(1, 0.75), (100, 0.75), (1000, 0.95), (37, 0.6)])
def test_upper_tail_pvalue_matches_scipy_binomial(n, tau):
    counts = np.arange(n + 1)
    expected = stats.binom.sf(counts - 1, n, tau)
    np.testing.assert_allclose(binomial_upper_tail_pvalue(counts, n, tau), expected, rtol=1e-10, atol=1e-300)


@pytest.mark.parametrize("n, alpha", [(1, 0.05), (100, 0.001), (1000, 1e-7), (10, 0.3)])
def test_clopper_pearson_lower_matches_statsmodels_and_scipy(n, alpha):
    counts = np.arange(n + 1)
    ours = clopper_pearson_lower(counts, n, alpha)
    # A one-sided bound at level alpha is the lower end of a two-sided interval at 2 alpha.
    lower_sm, _ = proportion_confint(counts, n, alpha=2 * alpha, method="beta")
    np.testing.assert_allclose(ours, np.nan_to_num(lower_sm), rtol=1e-8, atol=1e-12)
    for k in counts[1::max(1, n // 7)]:
        scipy_lower = stats.binomtest(int(k), n).proportion_ci(1 - 2 * alpha, method="exact").low
        assert ours[k] == pytest.approx(scipy_lower, rel=1e-8, abs=1e-12)


def test_two_sided_pvalue_matches_scipy_binomtest():
    rng = np.random.default_rng(1)
    top = rng.integers(0, 60, 200)
    runner_up = rng.integers(0, 60, 200)
    ours = two_sided_binomial_pvalue(top, runner_up)
    for t, r, p in zip(top, runner_up, ours):
        expected = 1.0 if t + r == 0 else stats.binomtest(int(t), int(t + r), 0.5).pvalue
        assert p == pytest.approx(expected, rel=1e-9)


def _pvalue_sets():
    rng = np.random.default_rng(7)
    yield "uniform", rng.uniform(size=500)
    yield "all certain", np.full(300, 1e-12)
    yield "none", np.ones(300)
    yield "ties", np.repeat([1e-5, 2e-4, 0.01, 0.5], 50)
    yield "mixed", np.concatenate([rng.uniform(0, 1e-5, 200), rng.uniform(size=200)])
    yield "single", np.array([0.0009])


@pytest.mark.parametrize("correction", ["holm", "bonferroni"])
@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_corrections_match_statsmodels(correction, alpha):
    for name, pvalues in _pvalue_sets():
        expected, *_ = multipletests(pvalues, alpha=alpha, method=correction)
        np.testing.assert_array_equal(reject_hypotheses(pvalues, alpha, correction), expected, err_msg=name)


def test_corrections_keep_shape_and_holm_dominates_bonferroni():
    pvalues = np.random.default_rng(3).uniform(0, 1e-3, size=(16, 16))
    holm = reject_hypotheses(pvalues, 0.05, "holm")
    bonferroni = reject_hypotheses(pvalues, 0.05, "bonferroni")
    assert holm.shape == (16, 16)
    assert np.all(holm[bonferroni]) and holm.sum() >= bonferroni.sum()


def test_unknown_correction_is_refused():
    with pytest.raises(ValueError, match="correction"):
        reject_hypotheses(np.array([0.1]), 0.05, "fdr")


def test_radius_is_sigma_times_normal_quantile_and_undefined_at_or_below_half():
    radius = radius_from_probability(0.5, np.array([0.75, 0.5, 0.2, 0.99]))
    assert radius[0] == pytest.approx(0.5 * stats.norm.ppf(0.75))
    assert radius[3] == pytest.approx(0.5 * stats.norm.ppf(0.99))
    assert np.isnan(radius[1]) and np.isnan(radius[2])


def test_method_md_reference_numbers():
    # docs/method.md §1: tau = 0.75 gives radii 0.169 / 0.337 / 0.674 at sigma 0.25 / 0.5 / 1.0.
    for sigma, expected in [(0.25, 0.169), (0.5, 0.337), (1.0, 0.674)]:
        assert float(radius_from_probability(sigma, 0.75)) == pytest.approx(expected, abs=5e-4)
    # Bonferroni over 256^2 pixels at alpha 0.001, tau 0.75: >= 97 of 100 and >= 824 of 1000 votes.
    for n, needed in [(100, 97), (1000, 824)]:
        pvalues = binomial_upper_tail_pvalue(np.array([needed - 1, needed]), n, 0.75)
        assert list(pvalues <= 0.001 / 256**2) == [False, True]


@pytest.mark.parametrize("trials, p, level", [(100, 0.75, 0.001 / 256**2), (1000, 0.75, 1.5e-8), (50, 0.9, 0.05),
                                               (10, 0.75, 1e-9)])
def test_minimum_certifiable_count_is_the_first_count_scipy_calls_significant(trials, p, level):
    significant = [k for k in range(trials + 1) if stats.binom.sf(k - 1, trials, p) <= level]
    assert minimum_certifiable_count(trials, p, level) == (significant[0] if significant else trials + 1)


def test_certification_chance_matches_a_simulated_posterior_predictive():
    """Draw p from the Beta posterior, then the future successes: the frequency must match."""
    rng = np.random.default_rng(3)
    successes, trials, remaining, needed = np.array([0, 40, 90, 99, 100]), 100, 300, 330
    p = rng.beta(successes + 1, trials - successes + 1, size=(200_000, successes.size))
    simulated = np.mean(successes + rng.binomial(remaining, p) >= needed, axis=0)
    np.testing.assert_allclose(certification_chance(successes, trials, remaining, needed), simulated, atol=0.005)
    assert certification_chance(np.array([100]), 100, 0, 100)[0] == 1.0
    assert certification_chance(np.array([10]), 100, 5, 100)[0] == 0.0
