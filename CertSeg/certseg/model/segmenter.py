"""A segmentation network, optionally behind a diffusion denoiser, as a certifiable model."""

from __future__ import annotations

import numpy as np
import torch

from certseg.core.devices import resolve_device
from certseg.core.sampling import BaseSegmenter
from certseg.core.smoothing import Certificate, certify_segmentation, predict_segmentation
from certseg.model.base_function import BaseSegmenterModule
from certseg.model.denoiser import DiffusionDenoiser
from certseg.model.execution import Execution, fastest_cpu_batch_size, fit_batch_size, prepare
from certseg.model.laterality import LateralityRule
from certseg.progress import Progress
from certseg.request import CertificationRequest


class CertifiedSegmenter:
    """Composes network (logits, (B, C, H, W)) and optional denoiser into SegCertify's base model.

    The denoiser, when present, sees each noisy copy once and hands its estimate of
    the clean image to the network (diffusion denoised smoothing); both run in eval
    mode without gradients on `device`.  `laterality`, when given, is part of the base function
    (model.laterality) and of the clean segmentation alike.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        num_classes: int,
        denoiser: DiffusionDenoiser | None = None,
        device: str | torch.device | None = "auto",
        execution: Execution | None = None,
        laterality: LateralityRule | None = None,
    ):
        self.device = resolve_device(device)
        self.execution = execution or Execution.default_for(self.device)
        # NHWC is set here, before anything runs, so every use of the network (the OOD check
        # too) sees the same layout; it rewrites the weights of the modules passed in.
        layout = torch.channels_last if self.execution.channels_last else torch.contiguous_format
        self.network = network.to(self.device, memory_format=layout).eval()
        self.denoiser = None if denoiser is None else denoiser.to(self.device, memory_format=layout).eval()
        self.num_classes = num_classes
        self.laterality = laterality
        self._bases: dict[float, tuple[BaseSegmenterModule, BaseSegmenter]] = {}
        self._fitted_batch_sizes: dict[tuple, int] = {}

    def base_segmenter(self, sigma: float) -> BaseSegmenter:
        """f: noisy batch -> labels, the function randomized smoothing is applied to (prepared once per sigma)."""
        return self._base(sigma)[1]

    def _base(self, sigma: float) -> tuple[BaseSegmenterModule, BaseSegmenter]:
        if sigma not in self._bases:
            module = BaseSegmenterModule(self.network, self.denoiser, sigma, self.execution, self.device,
                                         self.laterality)
            self._bases[sigma] = (module, prepare(module, self.execution))
        return self._bases[sigma]

    def _batch_size(self, requested: int | None, sigma: float, image) -> int | None:
        """The caller's batch size; else, measured once per sigma and image shape, on CUDA the batch that fits
        free memory and on a CPU the fastest per sample; else None, the engine's default for the device."""
        if requested is not None or self.device.type not in ("cuda", "cpu"):
            return requested
        key = (sigma, tuple(np.shape(image)[-2:]))
        if key not in self._fitted_batch_sizes:
            module = self._base(sigma)[0]
            self._fitted_batch_sizes[key] = (fit_batch_size(module, key[1], self.device) if self.device.type == "cuda"
                                             else fastest_cpu_batch_size(module, key[1]))
        return self._fitted_batch_sizes[key]

    def certify(self, image: np.ndarray | torch.Tensor, request: CertificationRequest, *, noise_seed: int | None = None,
                batch_size: int | None = None, progress: Progress | None = None) -> Certificate:
        """certify_segmentation() with this model as the base segmenter (`noise_seed`: this image's)."""
        return certify_segmentation(
            self.base_segmenter(request.sigma), image, request, num_classes=self.num_classes, noise_seed=noise_seed,
            batch_size=self._batch_size(batch_size, request.sigma, image), device=self.device, progress=progress)

    def predict(self, image: np.ndarray | torch.Tensor, request: CertificationRequest, *, noise_seed: int | None = None,
                batch_size: int | None = None, progress: Progress | None = None) -> Certificate:
        """predict_segmentation() with this model (the request's sigma, n and alpha)."""
        return predict_segmentation(
            self.base_segmenter(request.sigma), image, request, num_classes=self.num_classes, noise_seed=noise_seed,
            batch_size=self._batch_size(batch_size, request.sigma, image), device=self.device, progress=progress)

    @torch.no_grad()
    def segment_clean(self, image: np.ndarray | torch.Tensor) -> np.ndarray:
        """The network's own labels on the noise-free image (no denoiser, no certificate; the laterality rule
        when there is one)."""
        x = torch.as_tensor(image, dtype=torch.float32, device=self.device)[None, None]
        labels = self.network(x).max(dim=1).indices
        return (labels if self.laterality is None else self.laterality(labels))[0].cpu().numpy()
