"""Randomized smoothing for segmentation: SegCertify's CERTIFY and PREDICT.

The smoothed segmenter g labels pixel i with the class the base segmenter f
gives it most often under Gaussian noise N(0, sigma^2 I).  CERTIFY returns, for
every pixel, either that class together with the guarantee

    with probability >= 1 - alpha over the sampling, every certified pixel's
    label equals g's label, and no perturbation with L2 norm below
    radius = sigma * Phi^-1(tau) changes it,

or ABSTAIN.  See METHOD.md section 1 and Fischer et al., ICML 2021.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .stats import (
    CORRECTIONS,
    binomial_upper_tail_pvalue,
    clopper_pearson_lower,
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
    pixel_radius  (H, W) float64 or None: a separate per-pixel guarantee, sigma * Phi^-1(p_lower)
                  with p_lower the Clopper-Pearson bound at level alpha / #pixels (Bonferroni);
                  NaN where p_lower <= 1/2.  Never combine it with `radius` into one number.
    candidates    (H, W) int64: the class chosen per pixel (from the n0 selection samples for
                  CERTIFY, from the top count for PREDICT).
    counts        (H, W) int64: votes for the candidate among the n estimation samples.
    """

    labels: np.ndarray
    radius: float | None
    pixel_radius: np.ndarray | None
    candidates: np.ndarray
    counts: np.ndarray
    parameters: SmoothingParameters
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
            "abstain_fraction": self.abstain_fraction,
            "pixels_per_class": {
                int(c): int(np.sum(self.labels == c)) for c in range(self.parameters.num_classes)
            },
            "timings_s": dict(self.timings),
        }


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
    batch_size: int | None = None,
    seed: int | None = None,
    device: str | torch.device | None = "auto",
    progress: Progress | None = None,
) -> Certificate:
    """SegCertify's CERTIFY: certify every pixel of `image` or abstain.

    image  (H, W) float image in the base segmenter's input space ([0, 1]).
    n0     selection samples: pick each pixel's candidate class (never reused for counting).
    n      estimation samples: count votes for the candidate.
    tau    per-pixel probability threshold; certified pixels are robust within
           sigma * Phi^-1(tau).
    alpha  family-wise error level over all pixels, corrected by `correction`.
    seed   fixes the noise; the same seed, device and model give the same certificate
           whatever the batch size.  None draws one, recorded in the parameters.
    batch_size  noisy copies per forward pass; None picks one for the device.
    """
    params = _parameters("certify", num_classes, sigma, n0, n, alpha, tau, correction, seed, batch_size, device)
    started = time.perf_counter()
    x = _image_tensor(image, params.device)
    total = n0 + n
    selection = _count_votes(base, x, params, n0, _SELECTION_STAGE, _offset_progress(progress, 0, total))
    candidates = selection.argmax(dim=0)  # ties go to the lowest class index
    selected_s = time.perf_counter()
    votes = _count_votes(base, x, params, n, _ESTIMATION_STAGE, _offset_progress(progress, n0, total))
    counts = votes.gather(0, candidates.unsqueeze(0)).squeeze(0)
    estimated_s = time.perf_counter()

    counts_np = counts.cpu().numpy()
    candidates_np = candidates.cpu().numpy()
    certified = reject_hypotheses(binomial_upper_tail_pvalue(counts_np, n, tau), alpha, correction)
    lower = clopper_pearson_lower(counts_np, n, alpha / counts_np.size)
    finished = time.perf_counter()
    return Certificate(
        labels=np.where(certified, candidates_np, ABSTAIN).astype(np.int64),
        radius=float(radius_from_probability(sigma, tau)),
        pixel_radius=radius_from_probability(sigma, lower),
        candidates=candidates_np.astype(np.int64),
        counts=counts_np.astype(np.int64),
        parameters=params,
        timings={
            "selection": selected_s - started,
            "estimation": estimated_s - selected_s,
            "statistics": finished - estimated_s,
            "total": finished - started,
        },
    )


def predict_segmentation(
    base: BaseSegmenter,
    image: np.ndarray | torch.Tensor,
    *,
    num_classes: int,
    sigma: float,
    n: int,
    alpha: float,
    correction: str = "holm",
    batch_size: int | None = None,
    seed: int | None = None,
    device: str | torch.device | None = "auto",
    progress: Progress | None = None,
) -> Certificate:
    """PREDICT (Cohen et al. 2019) per pixel: the smoothed label, or ABSTAIN.

    Each pixel's top class is returned when a two-sided binomial test between the
    top two counts is significant; the tests are corrected over all pixels, so with
    probability >= 1 - alpha no returned label differs from g's.  No radius is claimed.
    """
    params = _parameters("predict", num_classes, sigma, 0, n, alpha, None, correction, seed, batch_size, device)
    started = time.perf_counter()
    x = _image_tensor(image, params.device)
    votes = _count_votes(base, x, params, n, _ESTIMATION_STAGE, _offset_progress(progress, 0, n))
    top_two = votes.topk(2, dim=0)
    estimated_s = time.perf_counter()

    top_counts, runner_up = (c.cpu().numpy() for c in top_two.values)
    top_class = top_two.indices[0].cpu().numpy()
    significant = reject_hypotheses(two_sided_binomial_pvalue(top_counts, runner_up), alpha, correction)
    finished = time.perf_counter()
    return Certificate(
        labels=np.where(significant, top_class, ABSTAIN).astype(np.int64),
        radius=None,
        pixel_radius=None,
        candidates=top_class.astype(np.int64),
        counts=top_counts.astype(np.int64),
        parameters=params,
        timings={"estimation": estimated_s - started, "statistics": finished - estimated_s, "total": finished - started},
    )


def _parameters(mode, num_classes, sigma, n0, n, alpha, tau, correction, seed, batch_size, device) -> SmoothingParameters:
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
        seed=secrets.randbits(63) if seed is None else int(seed),
        batch_size=int(default_batch_size(resolved) if batch_size is None else batch_size),
        device=str(resolved),
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


def _sample_seed(seed: int, stage: int, index: int) -> int:
    """An independent 63-bit seed for noise sample `index` of `stage`.

    Seeding per sample (not per batch) is what makes the noise, and so the
    certificate, independent of the batch size.
    """
    state = np.random.SeedSequence([seed, stage, index]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _noise_batch(shape: tuple[int, int], first: int, size: int, params: SmoothingParameters, stage: int) -> torch.Tensor:
    noise = torch.empty((size, 1, *shape), device=params.device)
    generator = torch.Generator(device=params.device)
    for j in range(size):
        generator.manual_seed(_sample_seed(params.seed, stage, first + j))
        noise[j].normal_(0.0, params.sigma, generator=generator)
    return noise


@torch.no_grad()
def _count_votes(
    base: BaseSegmenter,
    image: torch.Tensor,
    params: SmoothingParameters,
    num_samples: int,
    stage: int,
    progress: Progress | None,
) -> torch.Tensor:
    """(num_classes, H, W) int64 vote counts of `base` over `num_samples` noisy copies."""
    height, width = image.shape
    votes = torch.zeros((params.num_classes, height * width), dtype=torch.int64, device=image.device)
    for first in range(0, num_samples, params.batch_size):
        size = min(params.batch_size, num_samples - first)
        noisy = image.expand(size, 1, height, width) + _noise_batch((height, width), first, size, params, stage)
        labels = base(noisy).reshape(size, height * width).to(torch.int64)
        if labels.numel() and (labels.min() < 0 or labels.max() >= params.num_classes):
            raise ValueError(f"base segmenter returned labels outside [0, {params.num_classes})")
        votes.scatter_add_(0, labels, torch.ones_like(labels))
        if progress is not None:
            progress(first + size, num_samples)
    return votes.reshape(params.num_classes, height, width)


def _offset_progress(progress: Progress | None, offset: int, total: int) -> Progress | None:
    if progress is None:
        return None
    return lambda done, _stage_total: progress(offset + done, total)
