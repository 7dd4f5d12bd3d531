"""Binomial tests, Clopper-Pearson bounds and multiple-testing corrections.

Everything here works on whole pixel arrays at once (numpy, vectorised): the
smoothing engine calls it once per image with one count per pixel.
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

from certseg.errors import ParameterError
from certseg.request import Correction


def binomial_upper_tail_pvalue(successes: np.ndarray, trials: int, p: float) -> np.ndarray:
    """P(Binomial(trials, p) >= successes), elementwise.

    This is the one-sided p-value of H0: "success probability < p" (at its
    boundary) given the observed number of successes.  Uses the identity
    P(X >= k) = I_p(k, trials - k + 1) (regularised incomplete beta).
    """
    k = np.asarray(successes, dtype=np.float64)
    pvalues = np.ones_like(k)
    positive = k > 0
    pvalues[positive] = special.betainc(k[positive], trials - k[positive] + 1.0, p)
    return pvalues


def clopper_pearson_lower(successes: np.ndarray, trials: int, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound on p, elementwise.

    P(p >= bound) >= 1 - alpha for the binomial proportion p behind each count.
    """
    k = np.asarray(successes, dtype=np.float64)
    bounds = np.zeros_like(k)
    positive = k > 0
    bounds[positive] = special.betaincinv(k[positive], trials - k[positive] + 1.0, alpha)
    return bounds


def two_sided_binomial_pvalue(top: np.ndarray, runner_up: np.ndarray) -> np.ndarray:
    """Two-sided p-value of H0: p = 1/2 for `top` successes out of `top + runner_up`.

    Exact for the symmetric case: 2 P(X >= max) capped at 1 (Cohen et al.'s PREDICT).
    """
    top = np.asarray(top, dtype=np.float64)
    runner_up = np.asarray(runner_up, dtype=np.float64)
    larger = np.maximum(top, runner_up)
    trials = top + runner_up
    pvalues = np.ones_like(larger)
    tested = larger > 0
    pvalues[tested] = 2.0 * special.betainc(
        larger[tested], trials[tested] - larger[tested] + 1.0, 0.5
    )
    return np.minimum(pvalues, 1.0)


def reject_hypotheses(pvalues: np.ndarray, alpha: float, correction: str) -> np.ndarray:
    """Which null hypotheses to reject with family-wise error rate <= alpha.

    `correction` is "holm" (step-down Holm-Bonferroni, uniformly more powerful)
    or "bonferroni".  Returns a boolean array of the shape of `pvalues`.
    """
    if correction not in tuple(Correction):
        raise ParameterError(f"correction must be one of {tuple(map(str, Correction))}, got {correction!r}")
    flat = np.asarray(pvalues, dtype=np.float64).ravel()
    m = flat.size
    if correction == "bonferroni":
        return (flat <= alpha / m).reshape(np.shape(pvalues))
    order = np.argsort(flat, kind="stable")
    # The k-th smallest p-value (0-based) is compared with alpha / (m - k); Holm rejects
    # every hypothesis before the first comparison that fails.
    thresholds = alpha / (m - np.arange(m))
    fails = np.flatnonzero(flat[order] > thresholds)
    num_rejected = fails[0] if fails.size else m
    rejected = np.zeros(m, dtype=bool)
    rejected[order[:num_rejected]] = True
    return rejected.reshape(np.shape(pvalues))


def minimum_certifiable_count(trials: int, p: float, level: float) -> int:
    """The fewest successes out of `trials` whose upper-tail p-value under p is <= level.

    trials + 1 when even `trials` successes are not enough.
    """
    pvalues = binomial_upper_tail_pvalue(np.arange(trials + 1), trials, p)
    passing = np.flatnonzero(pvalues <= level)
    return int(passing[0]) if passing.size else trials + 1


def certification_chance(successes: np.ndarray, trials: int, remaining: int, needed: int) -> np.ndarray:
    """Posterior predictive P(successes + future >= needed), elementwise.

    `future` counts successes among `remaining` further trials; with a uniform prior on the
    success probability and `successes` out of `trials` seen, it is
    BetaBinomial(remaining, successes + 1, trials - successes + 1).
    """
    k = np.asarray(successes, dtype=np.float64)
    return stats.betabinom.sf(needed - k - 1, remaining, k + 1, trials - k + 1)


def radius_from_probability(sigma: float, probability: np.ndarray | float) -> np.ndarray:
    """Certified L2 radius sigma * Phi^-1(p) (Cohen et al.); NaN where p <= 1/2."""
    p = np.asarray(probability, dtype=np.float64)
    radius = sigma * stats.norm.ppf(np.clip(p, 0.0, 1.0))
    return np.where(p > 0.5, radius, np.nan)
