"""Model folders: networks in safetensors with a JSON model card, never pickles.

A model folder holds

    segmenter/card.json            architecture, labels, input spec, sha256, intended use
    segmenter/model.safetensors    MONAI network weights
    denoiser/card.json             (optional) training data, sha256, intended use
    denoiser/unet/                 diffusers UNet2DModel.save_pretrained output (safetensors)
    denoiser/scheduler/            diffusers DDPMScheduler.save_pretrained output

The shipped defaults live in `certseg/models/`; a user's own models are a local
folder in the same format.  The card's sha256 is checked on every load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import monai.networks.nets
import torch
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.torch import load_file, save_file

from .denoiser import DiffusionDenoiser
from .labels import NUM_CLASSES
from .outputs import write_json

DEFAULT_MODEL_DIR = Path(__file__).parent / "models"
SEGMENTER_FILE = "model.safetensors"
DENOISER_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"
# Network classes a model card may name (looked up in monai.networks.nets).
SEGMENTER_ARCHITECTURES = ("UNet", "BasicUNet", "AttentionUnet", "SegResNet")


# The shipped architectures: measured on 2 CPU cores at 256x256, the segmenter takes ~11 ms and
# the denoiser ~0.2 s per sample, which keeps n0 + n = 110 samples under a minute.
DEFAULT_SEGMENTER_ARCHITECTURE = {
    "class": "UNet",
    "kwargs": {"spatial_dims": 2, "in_channels": 1, "out_channels": NUM_CLASSES,
               "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1},
}
DEFAULT_DENOISER_CONFIG = {
    "sample_size": 256, "in_channels": 1, "out_channels": 1, "layers_per_block": 1,
    "block_out_channels": [16, 32, 64, 128], "norm_num_groups": 8, "add_attention": False,
    "down_block_types": ["DownBlock2D"] * 4, "up_block_types": ["UpBlock2D"] * 4,
}


class ModelError(ValueError):
    """A model folder that is missing, incomplete or does not match its card."""


@dataclass
class LoadedModels:
    network: torch.nn.Module
    segmenter_card: dict[str, Any]
    denoiser: DiffusionDenoiser | None
    denoiser_card: dict[str, Any] | None
    segmenter_dir: Path | None = None

    @property
    def num_classes(self) -> int:
        return len(self.segmenter_card["labels"])

    @property
    def ood_detector(self):
        """The spectral out-of-distribution detector fitted for this segmenter, if the card has one."""
        from .ood import SpectralDetector

        fitted = self.segmenter_card.get("ood_detector")
        if fitted is None:
            return None
        path = self.segmenter_dir / fitted["file"]
        if not path.is_file() or sha256_of(path) != fitted["sha256"]:
            raise ModelError(f"{path}: OOD detector missing or not the one the card names (sha256)")
        return SpectralDetector.load(path)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_segmenter_network(architecture: dict[str, Any]) -> torch.nn.Module:
    name = architecture.get("class")
    if name not in SEGMENTER_ARCHITECTURES:
        raise ModelError(f"segmenter architecture {name!r} is not one of {SEGMENTER_ARCHITECTURES}")
    return getattr(monai.networks.nets, name)(**architecture.get("kwargs", {}))


def default_segmenter_network() -> tuple[torch.nn.Module, int]:
    """A freshly initialised network of the shipped architecture, and its number of classes."""
    return build_segmenter_network(DEFAULT_SEGMENTER_ARCHITECTURE), NUM_CLASSES


def default_denoiser() -> DiffusionDenoiser:
    """A freshly initialised denoiser of the shipped architecture (linear 1000-step schedule)."""
    return DiffusionDenoiser(UNet2DModel(**DEFAULT_DENOISER_CONFIG), DDPMScheduler(num_train_timesteps=1000))


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


def load_segmenter(folder: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    card = _read_card(folder)
    network = build_segmenter_network(card["architecture"])
    try:
        network.load_state_dict(load_file(str(folder / SEGMENTER_FILE)))
    except RuntimeError as error:
        raise ModelError(f"{folder / SEGMENTER_FILE}: weights do not fit the card's architecture ({error})") from None
    return network.eval(), card


def load_denoiser(folder: Path) -> tuple[DiffusionDenoiser, dict[str, Any]]:
    card = _read_card(folder)
    unet = UNet2DModel.from_pretrained(str(folder / "unet"), local_files_only=True, use_safetensors=True,
                                       low_cpu_mem_usage=False)  # no `accelerate` needed
    scheduler = DDPMScheduler.from_pretrained(str(folder / "scheduler"), local_files_only=True)
    return DiffusionDenoiser(unet.eval(), scheduler), card


def load_models(model_dir: Path | str | None = None, *, with_denoiser: bool = True) -> LoadedModels:
    """Load the segmenter (and the denoiser when asked for and present) from a model folder."""
    root = Path(model_dir) if model_dir is not None else DEFAULT_MODEL_DIR
    if not (root / "segmenter" / "card.json").is_file():
        raise ModelError(f"{root}: no segmenter/card.json (not a CertSeg model folder)")
    network, segmenter_card = load_segmenter(root / "segmenter")
    denoiser = denoiser_card = None
    if with_denoiser:
        if not (root / "denoiser" / "card.json").is_file():
            raise ModelError(f"{root}: no denoiser/card.json (use --no-denoiser to run without one)")
        denoiser, denoiser_card = load_denoiser(root / "denoiser")
    return LoadedModels(network, segmenter_card, denoiser, denoiser_card, root / "segmenter")


def _read_card(folder: Path) -> dict[str, Any]:
    try:
        card = json.loads((folder / "card.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelError(f"{folder / 'card.json'}: unreadable model card ({error})") from None
    weights = folder / card.get("weights", "")
    if not weights.is_file():
        raise ModelError(f"{folder}: weights file {card.get('weights')!r} named by the card is missing")
    if sha256_of(weights) != card.get("sha256"):
        raise ModelError(f"{weights}: sha256 does not match the model card (corrupt or replaced weights)")
    return card
