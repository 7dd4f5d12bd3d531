"""Randomized smoothing for segmentation: SegCertify's CERTIFY and PREDICT.

The smoothed segmenter g labels pixel i with the class the base segmenter f
gives it most often under Gaussian noise N(0, sigma^2 I).  CERTIFY returns, for
every pixel, either that class together with the guarantee

    with probability >= 1 - alpha over the sampling, every certified pixel's
    label equals g's label, and no perturbation with L2 norm below
    radius = sigma * Phi^-1(tau) changes it,

or ABSTAIN.  See docs/method.md §1 and Fischer et al., ICML 2021.  CERTIFY can also test
sequentially, after growing numbers of samples, and stop early (certify_segmentation's `looks`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from certseg.core.labels import ABSTAIN
from certseg.core.parameters import SmoothingParameters
from certseg.core.sampling import ESTIMATION_STAGE, SELECTION_STAGE, BaseSegmenter, count_votes
from certseg.core.stats import (
    binomial_upper_tail_pvalue,
    certification_chance,
    clopper_pearson_lower,
    minimum_certifiable_count,
    radius_from_probability,
    reject_hypotheses,
    two_sided_binomial_pvalue,
)
from certseg.errors import InputError
from certseg.progress import Progress
from certseg.request import DOUBLING, CertificationRequest, Correction, Mode


@dataclass
class Certificate:
    """Per-pixel result of CERTIFY or PREDICT on one model-space image.

    labels        (H, W) int64: the certified (or predicted) class, ABSTAIN elsewhere.
    radius        sigma * Phi^-1(tau): the L2 radius, in model-input units, that holds for
                  every certified pixel (None for PREDICT, which certifies nothing).
    pixel_radius  (H, W) float64 or None: finite only on certified pixels, sigma * Phi^-1(p_lower)
                  for the candidate class, p_lower the Clopper-Pearson bound at level
                  alpha_k / #pixels (Bonferroni; alpha_k the look's share of alpha, alpha itself
                  with one look), the largest over the looks.  It is a second
                  event of its own: with probability >= 1 - alpha every finite entry is a radius
                  within which g keeps the candidate; the certificate and this map hold together
                  with probability >= 1 - 2 alpha.  Never combine it with `radius` into one number.
    candidates    (H, W) int64: the class chosen per pixel (from the n0 selection samples for
                  CERTIFY, from the top count for PREDICT).
    counts        (H, W) int64: votes for the candidate among the estimation samples drawn.
    """

    labels: np.ndarray
    radius: float | None
    pixel_radius: np.ndarray | None
    candidates: np.ndarray
    counts: np.ndarray
    parameters: SmoothingParameters
    estimation_samples: int  # drawn; below parameters.n when sequential certification stopped early
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def decided(self) -> np.ndarray:
        """Pixels that received a label (certified, or predicted with significance)."""
        return self.labels != ABSTAIN

    @property
    def abstain_fraction(self) -> float:
        return float(np.mean(~self.decided))


def certify_segmentation(
    base: BaseSegmenter,
    image: np.ndarray | torch.Tensor,
    request: CertificationRequest,
    *,
    num_classes: int,
    noise_seed: int | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = "auto",
    progress: Progress | None = None,
) -> Certificate:
    """SegCertify's CERTIFY: certify every pixel of `image` or abstain, with `request`'s statistics.

    image  (H, W) float image in the base segmenter's input space ([0, 1]).
    The request's fields (validated when it was built, request.CertificationRequest):
    n0     selection samples: pick each pixel's candidate class (never reused for counting).
    n      estimation samples at most: count votes for the candidate.
    tau    per-pixel probability threshold; certified pixels are robust within
           sigma * Phi^-1(tau).
    alpha  family-wise error level over all pixels, corrected by `correction`.
    looks  cumulative estimation-sample counts at which to test, increasing and ending at n
           (sequential certification), or "doubling" for doubling_looks().  None tests once,
           after n samples (SegCertify).  With several looks alpha is split in proportion to
           each look's sample count (n / 8, n / 4, n / 2, n get 1/15, 2/15, 4/15, 8/15), and
           sampling stops at the first look after
           which continuing to n is expected to certify fewer than stop_tolerance x (pixels of
           that candidate class) more pixels in every class.  `estimation_samples` of the
           result says how many were drawn.
    noise_seed  this image's noise seed (callers derive it from the run seed and the image's key); None:
           the request's run seed (one image, one seed), and without one fresh OS entropy, recorded in
           the parameters.  A seed known before the image is fixed voids the guarantee (an attacker can
           tune the image to the exact draws).  The noise of sample j depends only on (noise_seed, j), never on
           the batch size; the certificate then also equals on the same device in fp32 eager
           mode.  Reduced precision and compiled kernels may depend on the batch shape, so their
           certificates are reproducible only with the same batch size, device and software.
    batch_size  noisy copies per forward pass; None picks one for the device.
    """
    sigma, n0, n, alpha, tau, correction = (request.sigma, request.n0, request.n, request.alpha, request.tau,
                                            request.correction)
    looks = request.looks
    if looks == DOUBLING:
        looks = doubling_looks(n, tau, alpha, int(np.prod(np.shape(image)[-2:])))
    params = SmoothingParameters.resolved(
        Mode.CERTIFY, request, num_classes, request.run_seed if noise_seed is None else noise_seed, batch_size, device,
        looks=tuple(int(k) for k in looks) if len(looks) > 1 else (),
        stop_tolerance=request.stop_tolerance if len(looks) > 1 else 0.0)
    started = time.perf_counter()
    x = _image_tensor(image, params.device)
    total = n0 + n
    selection = count_votes(base, x, params, SELECTION_STAGE, 0, n0, _offset_progress(progress, 0, total))
    candidates = selection.argmax(dim=0)  # ties go to the lowest class index
    candidates_np = candidates.cpu().numpy()
    selected_s = time.perf_counter()

    # Why several looks keep the alpha guarantee.  Imagine all n estimation samples drawn up front:
    # sample j's noise depends only on (noise_seed, j), so stopping early merely leaves some unseen.  The
    # candidates come from the separate n0 selection samples, so at look k each pixel's count is
    # Binomial(looks[k], p_i), p_i = P(f_i(x + eps) = candidate_i), and Holm (or Bonferroni) at level
    # alpha_k rejects a true H0_i: "p_i < tau" somewhere in the image with probability <= alpha_k,
    # whatever the dependence between pixels.  Call that event E_k.  A pixel wrongly in the returned
    # union of look-wise certificates was wrongly rejected at some look k, so failure lies inside
    # E_1 u ... u E_K, of probability <= sum_k alpha_k = alpha, for ANY fixed split of alpha.  We
    # split it in proportion to each look's sample count (look_alphas), so the last look, which
    # certifies most, keeps most of alpha instead of paying 1/K.  The bound holds for every stopping
    # rule, since it never looked at when we stop.  Likewise each look's Clopper-Pearson bounds at
    # level alpha_k / #pixels all hold with probability >= 1 - alpha_k, so the largest bound over the
    # looks holds for every pixel with probability >= 1 - alpha.
    look_alphas = _look_alphas(alpha, params.look_sizes)
    votes = torch.zeros((num_classes, *x.shape), dtype=torch.int64, device=x.device)
    certified = np.zeros(candidates_np.shape, dtype=bool)
    lower = np.zeros(candidates_np.shape)
    drawn = 0
    for look, look_alpha in zip(params.look_sizes, look_alphas):
        votes += count_votes(base, x, params, ESTIMATION_STAGE, drawn, look,
                              _offset_progress(progress, n0 + drawn, total))
        drawn = look
        counts_np = votes.gather(0, candidates.unsqueeze(0)).squeeze(0).cpu().numpy()
        certified |= reject_hypotheses(binomial_upper_tail_pvalue(counts_np, drawn, tau), look_alpha, correction)
        lower = np.maximum(lower, clopper_pearson_lower(counts_np, drawn, look_alpha / counts_np.size))
        if drawn < n and _continuing_is_futile(counts_np, drawn, candidates_np, certified, params, look_alphas[-1]):
            break
    if progress is not None and drawn < n:
        progress(total, total)  # stopped early: the samples not drawn are done too
    finished = time.perf_counter()
    return Certificate(
        labels=np.where(certified, candidates_np, ABSTAIN).astype(np.int64),
        radius=float(radius_from_probability(sigma, tau)),
        pixel_radius=np.where(certified, radius_from_probability(sigma, lower), np.nan),
        candidates=candidates_np.astype(np.int64),
        counts=counts_np.astype(np.int64),
        parameters=params,
        estimation_samples=drawn,
        timings={
            "selection": selected_s - started,
            "estimation": finished - selected_s,  # sampling and the tests at every look
            "total": finished - started,
        },
    )


def doubling_looks(n: int, tau: float, alpha: float, pixels: int) -> tuple[int, ...]:
    """Looks n / 2^j, ..., n / 2, n, down to the smallest at which unanimous votes can still certify.

    A look earlier than that could certify nothing and would only take its share of alpha.
    """
    looks = [n]
    while (earlier := looks[0] // 2) >= 1:
        share = _look_alphas(alpha, (earlier, *looks))[0]
        if minimum_certifiable_count(earlier, tau, share / pixels) > earlier:
            break
        looks.insert(0, earlier)
    return tuple(looks)


def _look_alphas(alpha: float, looks: Sequence[int]) -> np.ndarray:
    """alpha split between the looks in proportion to their cumulative sample counts (sums to alpha)."""
    sizes = np.asarray(looks, dtype=np.float64)
    return alpha * sizes / sizes.sum()


def _continuing_is_futile(counts: np.ndarray, drawn: int, candidates: np.ndarray, certified: np.ndarray,
                          params: SmoothingParameters, look_alpha: float) -> bool:
    """True when sampling on to n is expected to certify under stop_tolerance more pixels per class.

    Each uncertified pixel's chance of passing the last look is its posterior predictive
    probability (uniform prior on p_i, beta-binomial over the samples still to come) of
    reaching the count Holm would need there, approximated by the threshold
    look_alpha / #uncertified that Holm gives the uncertified pixels once the certain ones
    are rejected.  The rule only decides when to stop; the guarantee does not depend on it.
    """
    if params.stop_tolerance <= 0:
        return False
    open_pixels = ~certified
    if not open_pixels.any():
        return True
    needed = minimum_certifiable_count(params.n, params.tau, look_alpha / open_pixels.sum())
    chance = certification_chance(counts[open_pixels], drawn, params.n - drawn, needed)
    expected = np.bincount(candidates[open_pixels], weights=chance, minlength=params.num_classes)
    class_sizes = np.bincount(candidates.ravel(), minlength=params.num_classes)
    return bool(np.all(expected < params.stop_tolerance * np.maximum(class_sizes, 1)))


def predict_segmentation(
    base: BaseSegmenter,
    image: np.ndarray | torch.Tensor,
    request: CertificationRequest,
    *,
    num_classes: int,
    noise_seed: int | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = "auto",
    progress: Progress | None = None,
) -> Certificate:
    """PREDICT (Cohen et al. 2019) per pixel with Bonferroni over the pixels: the smoothed label, or ABSTAIN.

    Guarantee: with probability >= 1 - alpha over the sampling, no returned label differs from g's.
    Proof: Cohen et al.'s Theorem 2 bounds, for one pixel, the probability that PREDICT at level
    alpha' returns a class other than g's by alpha' -- although the hypothesis tested (top class
    against runner-up) is chosen from the same samples.  With alpha' = alpha / #pixels, a union
    bound over the pixels gives alpha, whatever the dependence between pixels.  Holm is not used:
    its step-down needs valid p-values for hypotheses fixed in advance, which the data-chosen
    "top against runner-up" comparisons are not.  No radius is claimed.
    """
    n, alpha = request.n, request.alpha  # PREDICT uses no n0, tau, correction or looks
    params = SmoothingParameters.resolved(Mode.PREDICT, request, num_classes, request.run_seed if noise_seed is None else noise_seed,
                                          batch_size, device)
    started = time.perf_counter()
    x = _image_tensor(image, params.device)
    votes = count_votes(base, x, params, ESTIMATION_STAGE, 0, n, _offset_progress(progress, 0, n))
    top_two = votes.topk(2, dim=0)
    estimated_s = time.perf_counter()

    top_counts, runner_up = (c.cpu().numpy() for c in top_two.values)
    top_class = top_two.indices[0].cpu().numpy()
    significant = reject_hypotheses(two_sided_binomial_pvalue(top_counts, runner_up), alpha, Correction.BONFERRONI)
    finished = time.perf_counter()
    return Certificate(
        labels=np.where(significant, top_class, ABSTAIN).astype(np.int64),
        radius=None,
        pixel_radius=None,
        candidates=top_class.astype(np.int64),
        counts=top_counts.astype(np.int64),
        parameters=params,
        estimation_samples=n,
        timings={"estimation": estimated_s - started, "statistics": finished - estimated_s, "total": finished - started},
    )


def _image_tensor(image: np.ndarray | torch.Tensor, device: str) -> torch.Tensor:
    x = torch.as_tensor(image, dtype=torch.float32)
    if x.ndim == 3 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 2 or min(x.shape) < 1:
        raise InputError(f"image must be a 2D (H, W) array, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise InputError("image contains NaN or infinite values")
    return x.to(device)


def _offset_progress(progress: Progress | None, offset: int, total: int) -> Progress | None:
    if progress is None:
        return None
    return lambda done, _stage_total: progress(offset + done, total)
