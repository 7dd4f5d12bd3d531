"""Model folders: networks in safetensors with a JSON model card, never pickles.

A model folder holds

    segmenter/card.json            architecture, labels, input spec, sha256, intended use
    segmenter/model.safetensors    MONAI network weights
    denoiser/card.json             (optional) training data, sha256, intended use
    denoiser/unet/                 diffusers UNet2DModel.save_pretrained output (safetensors)
    denoiser/scheduler/            diffusers DDPMScheduler.save_pretrained output

The shipped defaults live in `certseg/shipped_models/`; a user's own models are a local
folder in the same format.  The card's sha256 is checked on every load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import monai.networks.nets
import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.torch import load_file, save_file

from certseg.files import write_json
from certseg.model.cards import ModelCard, ModelError, sha256_of
from certseg.model.denoiser import DiffusionDenoiser

SEGMENTER_FILE = "model.safetensors"


DENOISER_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"


# Network classes a model card may name (looked up in monai.networks.nets).
SEGMENTER_ARCHITECTURES = ("UNet", "BasicUNet", "AttentionUnet", "SegResNet")


def build_segmenter_network(architecture: dict[str, Any]) -> torch.nn.Module:
    name = architecture.get("class")
    if name not in SEGMENTER_ARCHITECTURES:
        raise ModelError(f"segmenter architecture {name!r} is not one of {SEGMENTER_ARCHITECTURES}")
    return getattr(monai.networks.nets, name)(**architecture.get("kwargs", {}))


def save_segmenter(network: torch.nn.Module, card: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Write weights and card (sha256 filled in); returns the card written."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / SEGMENTER_FILE
    save_file({k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}, str(weights))
    card = {**card, "weights": SEGMENTER_FILE, "sha256": sha256_of(weights)}
    write_json(folder / "card.json", card)
    return card


def save_denoiser(unet: UNet2DModel, scheduler: DDPMScheduler, card: dict[str, Any], folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    card = {**card, "weights": str(DENOISER_WEIGHTS), "sha256": sha256_of(folder / DENOISER_WEIGHTS)}
    write_json(folder / "card.json", card)
    return card


_PROBE_SIZE = 64  # divisible by every stride product the architectures use


def load_segmenter(folder: Path) -> tuple[torch.nn.Module, ModelCard]:
    card = ModelCard.read(folder, segmenter=True)
    network = build_segmenter_network(card.document["architecture"])
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
