"""The shipped networks' architectures: what training builds and bench times when no model folder is given."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler, UNet2DModel

from certseg.dicom.codes import NUM_CLASSES
from certseg.model.cards import Architecture
from certseg.model.denoiser import DiffusionDenoiser
from certseg.model.networks import build_segmenter_network

# The shipped architectures: measured on 2 CPU cores at 256x256, the segmenter takes ~11 ms and
# the denoiser ~0.2 s per sample, which keeps n0 + n = 110 samples under a minute.
DEFAULT_SEGMENTER_ARCHITECTURE = Architecture("UNet", {
    "spatial_dims": 2, "in_channels": 1, "out_channels": NUM_CLASSES,
    "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1})


DEFAULT_DENOISER_CONFIG = {
    "sample_size": 256, "in_channels": 1, "out_channels": 1, "layers_per_block": 1,
    "block_out_channels": [16, 32, 64, 128], "norm_num_groups": 8, "add_attention": False,
    "down_block_types": ["DownBlock2D"] * 4, "up_block_types": ["UpBlock2D"] * 4,
}


def default_segmenter_network() -> tuple[torch.nn.Module, int]:
    """A freshly initialised network of the shipped architecture, and its number of classes."""
    return build_segmenter_network(DEFAULT_SEGMENTER_ARCHITECTURE), NUM_CLASSES


def default_denoiser() -> DiffusionDenoiser:
    """A freshly initialised denoiser of the shipped architecture (linear 1000-step schedule)."""
    return DiffusionDenoiser(UNet2DModel(**DEFAULT_DENOISER_CONFIG), DDPMScheduler(num_train_timesteps=1000))
