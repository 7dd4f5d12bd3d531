"""A segmentation network, optionally behind a diffusion denoiser, as a certifiable model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .denoiser import DiffusionDenoiser
from .smoothing import BaseSegmenter, Certificate, Progress, certify_segmentation, predict_segmentation, resolve_device


class CertifiedSegmenter:
    """Composes network (logits, (B, C, H, W)) and optional denoiser into SegCertify's base model.

    The denoiser, when present, sees each noisy copy once and hands its estimate of
    the clean image to the network (diffusion denoised smoothing); both run in eval
    mode without gradients on `device`.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        num_classes: int,
        denoiser: DiffusionDenoiser | None = None,
        device: str | torch.device | None = "auto",
    ):
        self.device = resolve_device(device)
        self.network = network.to(self.device).eval()
        self.denoiser = None if denoiser is None else denoiser.to(self.device).eval()
        self.num_classes = num_classes

    def base_segmenter(self, sigma: float) -> BaseSegmenter:
        """f: noisy batch -> labels, the function randomized smoothing is applied to."""

        @torch.no_grad()
        def segment(noisy: torch.Tensor) -> torch.Tensor:
            images = noisy if self.denoiser is None else self.denoiser(noisy, sigma)
            # max().indices, not argmax(): same first-maximum tie rule, ~14x faster on CPU over the class axis.
            return self.network(images).max(dim=1).indices

        return segment

    def certify(
        self,
        image: np.ndarray | torch.Tensor,
        *,
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
        progress: Progress | None = None,
    ) -> Certificate:
        """certify_segmentation() with this model as the base segmenter."""
        return certify_segmentation(
            self.base_segmenter(sigma), image, num_classes=self.num_classes, sigma=sigma, n0=n0, n=n,
            alpha=alpha, tau=tau, correction=correction, looks=looks, stop_tolerance=stop_tolerance,
            batch_size=batch_size, seed=seed,
            device=self.device, progress=progress,
        )

    def predict(
        self,
        image: np.ndarray | torch.Tensor,
        *,
        sigma: float,
        n: int,
        alpha: float,
        correction: str = "holm",
        batch_size: int | None = None,
        seed: int | None = None,
        progress: Progress | None = None,
    ) -> Certificate:
        return predict_segmentation(
            self.base_segmenter(sigma), image, num_classes=self.num_classes, sigma=sigma, n=n, alpha=alpha,
            correction=correction, batch_size=batch_size, seed=seed, device=self.device, progress=progress,
        )

    @torch.no_grad()
    def segment_clean(self, image: np.ndarray | torch.Tensor) -> np.ndarray:
        """The network's own labels on the noise-free image (no denoiser, no certificate)."""
        x = torch.as_tensor(image, dtype=torch.float32, device=self.device)[None, None]
        return self.network(x).max(dim=1).indices[0].cpu().numpy()
