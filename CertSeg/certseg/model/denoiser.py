"""One-shot diffusion denoising in front of the base segmenter (Carlini et al., ICLR 2023).

A DDPM trained on images in [-1, 1] sees x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.
Our smoothing noise has std sigma on [0, 1] images, i.e. 2 sigma on [-1, 1], so the
matching timestep t* has (1 - abar_t*) / abar_t* = (2 sigma)^2.  Scaling the noisy
image by sqrt(abar_t*) turns it into a valid x_t*, and one epsilon prediction gives
the estimate of x0.  The denoiser is part of the base segmenter: it changes the
accuracy under noise, never the certificate's guarantee.  See docs/method.md §2.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel


def timestep_for_sigma(alphas_cumprod: np.ndarray | torch.Tensor, sigma: float) -> int:
    """The timestep whose noise-to-signal ratio (1 - abar)/abar is closest to (2 sigma)^2."""
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    noise_to_signal = (1.0 - abar) / abar
    return int(torch.argmin(torch.abs(noise_to_signal - (2.0 * sigma) ** 2)))


class DiffusionDenoiser(torch.nn.Module):
    """A diffusers UNet2DModel (epsilon prediction) with its DDPMScheduler, used in one step."""

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler):
        super().__init__()
        if scheduler.config.prediction_type != "epsilon":
            raise ValueError(f"the denoiser needs an epsilon-predicting DDPM, got {scheduler.config.prediction_type!r}")
        self.unet = unet
        self.scheduler = scheduler
        self.register_buffer(
            "alphas_cumprod", torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32), persistent=False
        )

    def timestep(self, sigma: float) -> int:
        return timestep_for_sigma(self.alphas_cumprod, sigma)

    @torch.no_grad()
    def forward(self, noisy: torch.Tensor, sigma: float) -> torch.Tensor:
        """Denoise a (B, 1, H, W) batch of [0, 1] images carrying N(0, sigma^2) noise; returns [0, 1]."""
        return self.denoise(noisy, self.timestep(sigma))

    def denoise(self, noisy: torch.Tensor, t: int) -> torch.Tensor:
        """forward() at a timestep found once (timestep() waits for the device; compiled code must not).

        Differentiable (`certseg attack` backpropagates through it); certification calls it without gradients."""
        abar = self.alphas_cumprod[t].to(noisy.device)
        x_t = abar.sqrt() * (2.0 * noisy - 1.0)
        timesteps = torch.full((noisy.shape[0],), t, device=noisy.device, dtype=torch.long)
        eps = self.unet(x_t, timesteps).sample
        x0 = (x_t - (1.0 - abar).sqrt() * eps) / abar.sqrt()
        return ((x0 + 1.0) / 2.0).clamp(0.0, 1.0)
