"""Randomized smoothing for segmentation: SegCertify's CERTIFY and PREDICT.

The smoothed segmenter g labels pixel i with the class the base segmenter f
gives it most often under Gaussian noise N(0, sigma^2 I).  CERTIFY returns, for
every pixel, either that class together with the guarantee

    with probability >= 1 - alpha over the sampling, every certified pixel's
    label equals g's label, and no perturbation with L2 norm below
    radius = sigma * Phi^-1(tau) changes it,

or ABSTAIN.  See METHOD.md section 1 and Fischer et al., ICML 2021.  CERTIFY can also test
sequentially, after growing numbers of samples, and stop early (certify_segmentation's `looks`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .stats import (
    CORRECTIONS,
    binomial_upper_tail_pvalue,
    certification_chance,
    clopper_pearson_lower,
    minimum_certifiable_count,
    radius_from_probability,
    reject_hypotheses,
    two_sided_binomial_pvalue,
)

ABSTAIN = -1
"""Label of pixels on which the smoothed segmenter abstains."""

BaseSegmenter = Callable[[torch.Tensor], torch.Tensor]
"""(B, 1, H, W) float batch on the engine's device -> (B, H, W) integer labels."""

Progress = Callable[[int, int], None]
"""Called with (samples done, samples in total) after every batch."""

_SELECTION_STAGE, _ESTIMATION_STAGE = 0, 1


@dataclass(frozen=True)
class SmoothingParameters:
    """Everything needed to reproduce a certificate bit for bit (with the same model and device)."""

    mode: str  # "certify" or "predict"
    num_classes: int
    sigma: float
    n0: int  # selection samples (0 for predict)
    n: int  # estimation samples
    alpha: float
    tau: float | None  # None for predict
    correction: str
    seed: int
    batch_size: int
    device: str
    looks: tuple[int, ...] = ()  # cumulative estimation samples at which CERTIFY tests; () means (n,)
    stop_tolerance: float = 0.0  # see certify_segmentation

    @property
    def look_sizes(self) -> tuple[int, ...]:
        return self.looks or (self.n,)

    def validate(self) -> None:
        checks = [
            (self.num_classes >= 2, f"num_classes must be >= 2, got {self.num_classes}"),
            (np.isfinite(self.sigma) and self.sigma > 0, f"sigma must be > 0, got {self.sigma}"),
            (self.n >= 1, f"n must be >= 1, got {self.n}"),
            (0 < self.alpha < 1, f"alpha must lie in (0, 1), got {self.alpha}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.correction in CORRECTIONS, f"correction must be one of {CORRECTIONS}, got {self.correction!r}"),
        ]
        if self.mode == "certify":
            checks += [
                (self.n0 >= 1, f"n0 must be >= 1, got {self.n0}"),
                (self.tau is not None and 0.5 < self.tau < 1, f"tau must lie in (0.5, 1), got {self.tau}"),
                (all(a < b for a, b in zip((0, *self.look_sizes), self.look_sizes)) and self.look_sizes[-1] == self.n,
                 f"looks must increase and end at n = {self.n}, got {list(self.look_sizes)}"),
                (np.isfinite(self.stop_tolerance) and self.stop_tolerance >= 0,
                 f"stop_tolerance must be >= 0, got {self.stop_tolerance}"),
            ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


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

    def summary(self) -> dict[str, Any]:
        """JSON-ready parameters, radius, abstention and timings (no per-pixel arrays)."""
        return {
            "parameters": dataclasses.asdict(self.parameters),
            "radius_model_space": self.radius,
            "estimation_samples": self.estimation_samples,
            "abstain_fraction": self.abstain_fraction,
            "pixels_per_class": {
                int(c): int(np.sum(self.labels == c)) for c in range(self.parameters.num_classes)
            },
            "timings_s": dict(self.timings),
        }


def fresh_seed() -> int:
    """A 63-bit seed from the operating system's entropy: noise nobody can know before the image is fixed."""
    return secrets.randbits(63)


def image_noise_seed(run_seed: int, image_key: str) -> int:
    """The noise seed of one image of a run (image_key: its SOPInstanceUID, a file name, ...).

    Distinct images of one run never share noise, and the run seed alone reproduces each image.
    The guarantee needs the run seed to be unknown to whoever prepared the image (fresh_seed());
    a seed chosen in advance lets an attacker tune the image to the exact draws.
    """
    digest = hashlib.sha256(f"certseg-noise:{int(run_seed)}:{image_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def default_batch_size(device: torch.device) -> int:
    """Noisy copies per forward pass when the caller does not choose.

    Measured with the shipped models at 256 x 256 on 2 CPU cores: batch 2 gives 9.7
    samples/s, batch 16 only 4.3 (cache-bound); GPUs want large batches.
    """
    return {"cpu": 2, "mps": 16}.get(device.type, 64)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' (or None) picks CUDA when present, then Apple MPS, else CPU."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available")
    return resolved


def certify_segmentation(
    base: BaseSegmenter,
    image: np.ndarray | torch.Tensor,
    *,
    num_classes: int,
    sigma: float,
    n0: int,
    n: int,
    alpha: float,
    tau: float,
    correction: str = "holm",
    looks: Sequence[int] | str | None = None,
    stop_tolerance: float = 0.0,
    batch_size: int | None = None,
    seed: int | None = None,
    device: str | torch.device | None = "auto",
    progress: Progress | None = None,
) -> Certificate:
    """SegCertify's CERTIFY: certify every pixel of `image` or abstain.

    image  (H, W) float image in the base segmenter's input space ([0, 1]).
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
    seed   fixes the noise; None (the default) draws fresh OS entropy, recorded in the parameters.
           A seed known before the image is fixed voids the guarantee (an attacker can tune the
           image to the exact draws).  The noise of sample j depends only on (seed, j), never on
           the batch size; the certificate then also equals on the same device in fp32 eager
           mode.  Reduced precision and compiled kernels may depend on the batch shape, so their
           certificates are reproducible only with the same batch size, device and software.
    batch_size  noisy copies per forward pass; None picks one for the device.
    """
    if looks == "doubling":
        looks = doubling_looks(n, tau, alpha, int(np.prod(np.shape(image)[-2:])))
    params = _parameters("certify", num_classes, sigma, n0, n, alpha, tau, correction, seed, batch_size, device,
                         looks=tuple(int(k) for k in looks) if looks is not None and len(looks) > 1 else (),
                         stop_tolerance=stop_tolerance)
    started = time.perf_counter()
    x = _image_tensor(image, params.device)
    total = n0 + n
    selection = _count_votes(base, x, params, _SELECTION_STAGE, 0, n0, _offset_progress(progress, 0, total))
    candidates = selection.argmax(dim=0)  # ties go to the lowest class index
    candidates_np = candidates.cpu().numpy()
    selected_s = time.perf_counter()

    # Why several looks keep the alpha guarantee.  Imagine all n estimation samples drawn up front:
    # sample j's noise depends only on (seed, j), so stopping early merely leaves some unseen.  The
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
        votes += _count_votes(base, x, params, _ESTIMATION_STAGE, drawn, look,
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
    *,
    num_classes: int,
    sigma: float,
    n: int,
    alpha: float,
    batch_size: int | None = None,
    seed: int | None = None,
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
    params = _parameters("predict", num_classes, sigma, 0, n, alpha, None, "bonferroni", seed, batch_size, device)
    started = time.perf_counter()
    x = _image_tensor(image, params.device)
    votes = _count_votes(base, x, params, _ESTIMATION_STAGE, 0, n, _offset_progress(progress, 0, n))
    top_two = votes.topk(2, dim=0)
    estimated_s = time.perf_counter()

    top_counts, runner_up = (c.cpu().numpy() for c in top_two.values)
    top_class = top_two.indices[0].cpu().numpy()
    significant = reject_hypotheses(two_sided_binomial_pvalue(top_counts, runner_up), alpha, "bonferroni")
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


def _parameters(mode, num_classes, sigma, n0, n, alpha, tau, correction, seed, batch_size, device,
                looks=(), stop_tolerance=0.0) -> SmoothingParameters:
    resolved = resolve_device(device)
    params = SmoothingParameters(
        mode=mode,
        num_classes=int(num_classes),
        sigma=float(sigma),
        n0=int(n0),
        n=int(n),
        alpha=float(alpha),
        tau=None if tau is None else float(tau),
        correction=correction,
        seed=fresh_seed() if seed is None else int(seed),
        batch_size=int(default_batch_size(resolved) if batch_size is None else batch_size),
        device=str(resolved),
        looks=looks,
        stop_tolerance=float(stop_tolerance),
    )
    params.validate()
    return params


def _image_tensor(image: np.ndarray | torch.Tensor, device: str) -> torch.Tensor:
    x = torch.as_tensor(image, dtype=torch.float32)
    if x.ndim == 3 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 2 or min(x.shape) < 1:
        raise ValueError(f"image must be a 2D (H, W) array, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("image contains NaN or infinite values")
    return x.to(device)


_NOISE_CHUNK = 64
"""Noise is drawn in chunks of this many samples, each from its own seed: one kernel per chunk
instead of one per sample, and still independent of the batch size."""


class _NoiseStream:
    """N(0, sigma^2 I) noise for the samples of one stage; sample j's noise depends only on (seed, stage, j).

    On the CPU each chunk comes from numpy's PCG64 seeded with the whole (seed, stage, chunk): torch's
    CPU generator (mt19937) keeps only the low 32 bits of a seed, so seeds differing above bit 32
    would give identical noise.  Other devices draw on the device with torch's Philox generator,
    whose 64-bit seed is a SeedSequence hash of the same entropy.
    """

    def __init__(self, shape: tuple[int, int], params: SmoothingParameters, stage: int):
        self._shape, self._params, self._stage = shape, params, stage
        self._on_cpu = torch.device(params.device).type == "cpu"
        self._generator = None if self._on_cpu else torch.Generator(device=params.device)
        self._chunk_index, self._chunk = -1, torch.empty(0)

    def take(self, first: int, size: int) -> torch.Tensor:
        """(size, 1, H, W) noise of samples first .. first + size - 1."""
        parts, j = [], first
        while j < first + size:
            self._load(j // _NOISE_CHUNK)
            offset = j - self._chunk_index * _NOISE_CHUNK
            stop = min(_NOISE_CHUNK, first + size - self._chunk_index * _NOISE_CHUNK)
            parts.append(self._chunk[offset:stop])
            j += stop - offset
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _load(self, index: int) -> None:
        if index == self._chunk_index:
            return
        entropy = np.random.SeedSequence([self._params.seed, self._stage, index])  # all 63 bits of the seed
        shape = (_NOISE_CHUNK, 1, *self._shape)
        if self._on_cpu:
            draws = np.random.Generator(np.random.PCG64(entropy)).standard_normal(shape, dtype=np.float32)
            self._chunk = torch.from_numpy(draws).mul_(self._params.sigma)
        else:
            self._generator.manual_seed(int(entropy.generate_state(1, np.uint64)[0]) >> 1)
            self._chunk = torch.randn(shape, generator=self._generator, device=self._params.device
                                      ).mul_(self._params.sigma)
        self._chunk_index = index


@torch.no_grad()
def _count_votes(
    base: BaseSegmenter,
    image: torch.Tensor,
    params: SmoothingParameters,
    stage: int,
    first: int,
    stop: int,
    progress: Progress | None,
) -> torch.Tensor:
    """(num_classes, H, W) int64 vote counts of `base` over noise samples first .. stop - 1 of `stage`.

    Nothing here waits for the device (counts stay on it, the label range is checked once), so
    on a GPU the host queues the next batch while the current one runs.
    """
    height, width = image.shape
    votes = torch.zeros((params.num_classes, height * width), dtype=torch.int64, device=image.device)
    noise = _NoiseStream((height, width), params, stage)
    for start in range(first, stop, params.batch_size):
        size = min(params.batch_size, stop - start)
        labels = base(image.expand(size, 1, height, width) + noise.take(start, size))
        labels = labels.reshape(size, height * width).to(torch.int64)
        if start == first:
            _check_label_range(labels, params.num_classes)
        votes.scatter_add_(0, labels, torch.ones_like(labels))
        if progress is not None:
            progress(start + size - first, stop - first)
    return votes.reshape(params.num_classes, height, width)


def _check_label_range(labels: torch.Tensor, num_classes: int) -> None:
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"base segmenter returned labels outside [0, {num_classes})")


def _offset_progress(progress: Progress | None, offset: int, total: int) -> Progress | None:
    if progress is None:
        return None
    return lambda done, _stage_total: progress(offset + done, total)
