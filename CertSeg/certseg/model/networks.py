"""Model folders: networks in safetensors with a JSON model card, never pickles.

A model folder holds

    segmenter/card.json            architecture, labels, input spec, sha256, intended use
    segmenter/model.safetensors    network weights (a MONAI network or CertSeg's EfficientNet-Lite U-Net)
    denoiser/card.json             (optional) training data, sha256, intended use
    denoiser/unet/                 diffusers UNet2DModel.save_pretrained output (safetensors)
    denoiser/scheduler/            diffusers DDPMScheduler.save_pretrained output

The shipped defaults live in `certseg/shipped_models/`; a user's own models are a local
folder in the same format.  The card's sha256 is checked on every load.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import monai.networks.nets
import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.torch import load_file, save_file

from certseg.model.cards import (SEGMENTER_FILE, Architecture, DenoiserCard, ModelCard, ModelError, SegmenterCard,
                                 write_card)
from certseg.model.denoiser import DiffusionDenoiser
from certseg.model.efficientnet_unet import EfficientNetLiteUNet


# Network classes a model card may name: MONAI's (looked up in monai.networks.nets) and CertSeg's own.
MONAI_ARCHITECTURES = ("UNet", "BasicUNet", "AttentionUnet", "SegResNet")
OWN_ARCHITECTURES = {"EfficientNetLiteUNet": EfficientNetLiteUNet}
SEGMENTER_ARCHITECTURES = (*MONAI_ARCHITECTURES, *OWN_ARCHITECTURES)


def build_segmenter_network(architecture: Architecture) -> torch.nn.Module:
    if architecture.name not in SEGMENTER_ARCHITECTURES:
        raise ModelError(f"segmenter architecture {architecture.name!r} is not one of {SEGMENTER_ARCHITECTURES}")
    if architecture.name in OWN_ARCHITECTURES:
        return OWN_ARCHITECTURES[architecture.name](**architecture.kwargs)
    return getattr(monai.networks.nets, architecture.name)(**architecture.kwargs)


def save_segmenter(network: torch.nn.Module, card: SegmenterCard, folder: Path) -> SegmenterCard:
    """Write weights and card (sha256, schema version and frameworks filled in); returns the card written."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / SEGMENTER_FILE
    save_file({k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}, str(weights))
    return write_card(folder, replace(card, weights=SEGMENTER_FILE))


def save_denoiser(unet: UNet2DModel, scheduler: DDPMScheduler, card: DenoiserCard, folder: Path) -> DenoiserCard:
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    return write_card(folder, card)


_PROBE_SIZE = 64  # divisible by every stride product the architectures use


def load_segmenter(folder: Path) -> tuple[torch.nn.Module, ModelCard]:
    card = ModelCard.read(folder, segmenter=True)
    network = build_segmenter_network(card.record.architecture)
    try:
        network.load_state_dict(load_file(str(folder / SEGMENTER_FILE)))
    except RuntimeError as error:
        raise ModelError(f"{folder / SEGMENTER_FILE}: weights do not fit the card's architecture ({error})") from None
    _check_output_classes(network.eval(), card, folder)
    return network, card


def _check_output_classes(network: torch.nn.Module, card: ModelCard, folder: Path) -> None:
    """Refuse a card whose class table does not match the network's outputs now, not mid-certification.

    One small forward pass asks the network itself, so any architecture is checked the same way.
    """
    with torch.no_grad():
        outputs = network(torch.zeros(1, 1, _PROBE_SIZE, _PROBE_SIZE)).shape[1]
    if outputs != card.num_classes:
        raise ModelError(f"{folder / 'card.json'}: the card names {card.num_classes} classes but the network "
                         f"outputs {outputs}")


def load_denoiser(folder: Path) -> tuple[DiffusionDenoiser, ModelCard]:
    card = ModelCard.read(folder, segmenter=False)
    unet = UNet2DModel.from_pretrained(str(folder / "unet"), local_files_only=True, use_safetensors=True,
                                       low_cpu_mem_usage=False)  # no `accelerate` needed
    scheduler = DDPMScheduler.from_pretrained(str(folder / "scheduler"), local_files_only=True)
    return DiffusionDenoiser(unet.eval(), scheduler), card
