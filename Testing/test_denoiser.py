"""One-shot DDPM denoising: timestep choice and exact reconstruction with a perfect epsilon."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.models.unets.unet_2d import UNet2DOutput

from certseg.model.denoiser import DiffusionDenoiser, timestep_for_sigma
from certseg.model.segmenter import CertifiedSegmenter
from certseg.request import CertificationRequest

SCHEDULES = [
    dict(beta_schedule="linear"),
    dict(beta_schedule="scaled_linear"),
    dict(beta_schedule="squaredcos_cap_v2"),
    dict(beta_schedule="linear", num_train_timesteps=200, beta_end=0.05),
]


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("sigma", [0.05, 0.12, 0.25, 0.5, 1.0])
def test_timestep_matches_the_noise_to_signal_formula(schedule, sigma):
    abar = DDPMScheduler(**schedule).alphas_cumprod.double().numpy()
    t = timestep_for_sigma(abar, sigma)
    ratio = (1 - abar) / abar
    # No other timestep is closer to (2 sigma)^2 ...
    assert abs(ratio[t] - (2 * sigma) ** 2) == pytest.approx(np.min(np.abs(ratio - (2 * sigma) ** 2)))
    # ... and the [-1, 1] scaling matters: the rule without the factor 2 picks another step.
    if 0 < t < len(abar) - 1:
        assert t != int(np.argmin(np.abs(ratio - sigma**2)))


class PerfectEpsilon(torch.nn.Module):
    """Stands in for UNet2DModel: returns the exact noise in x_t, given the clean image."""

    def __init__(self, clean: torch.Tensor, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.clean_scaled = 2 * clean - 1
        self.abar = alphas_cumprod

    def forward(self, x_t, timesteps):
        abar = self.abar[timesteps[0]]
        return UNet2DOutput(sample=(x_t - abar.sqrt() * self.clean_scaled) / (1 - abar).sqrt())


@pytest.mark.parametrize("sigma", [0.12, 0.25, 0.5, 1.0])
def test_perfect_epsilon_reconstructs_the_clean_image(sigma):
    scheduler = DDPMScheduler(beta_schedule="linear")
    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(3, 1, 32, 32, generator=generator)
    noisy = clean + sigma * torch.randn(clean.shape, generator=generator)
    denoiser = DiffusionDenoiser(PerfectEpsilon(clean, scheduler.alphas_cumprod), scheduler)
    torch.testing.assert_close(denoiser(noisy, sigma), clean, atol=2e-5, rtol=0)


def test_a_real_unet_denoises_batches_of_the_right_shape_in_range():
    unet = UNet2DModel(sample_size=32, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, layers_per_block=1)
    denoiser = DiffusionDenoiser(unet.eval(), DDPMScheduler())
    out = denoiser(torch.rand(5, 1, 32, 32), 0.25)
    assert out.shape == (5, 1, 32, 32)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_non_epsilon_schedulers_are_refused():
    with pytest.raises(ValueError, match="epsilon"):
        DiffusionDenoiser(torch.nn.Identity(), DDPMScheduler(prediction_type="sample"))


def test_certified_segmenter_runs_the_denoiser_before_the_network():
    """With a perfect denoiser, a threshold 'network' certifies as if there were no noise at all."""
    scheduler = DDPMScheduler()
    image = torch.zeros(8, 8)
    image[:, 4:] = 1.0
    image[:, 3] = 0.55  # within one sigma of the threshold: only certifiable after denoising

    class Threshold(torch.nn.Module):
        def forward(self, x):
            return torch.cat([0.5 - x, x - 0.5], dim=1)

    sigma = 0.25
    denoiser = DiffusionDenoiser(PerfectEpsilon(image[None, None], scheduler.alphas_cumprod), scheduler)
    plain = CertifiedSegmenter(Threshold(), num_classes=2, device="cpu")
    denoised = CertifiedSegmenter(Threshold(), num_classes=2, denoiser=denoiser, device="cpu")
    request = CertificationRequest(sigma=sigma, n0=10, n=100, alpha=0.001, tau=0.75)
    with_denoiser = denoised.certify(image.numpy(), request, noise_seed=0, batch_size=16)
    without = plain.certify(image.numpy(), request, noise_seed=0, batch_size=16)
    np.testing.assert_array_equal(with_denoiser.labels, (image.numpy() > 0.5).astype(int))
    assert np.all(without.labels[:, 3] == -1)
