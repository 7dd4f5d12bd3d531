"""A model folder loaded once: segmenter, optional denoiser and out-of-distribution detector, with their cards.

    segmenter/card.json            architecture, labels, input spec, sha256, intended use
    segmenter/model.safetensors    MONAI network weights
    segmenter/ood.safetensors      (optional) the fitted OOD detector the card names (its file and sha256)
    denoiser/card.json             (optional) training data, sha256, intended use
    denoiser/unet/, scheduler/     diffusers save_pretrained output (safetensors)

The shipped defaults live in `certseg/shipped_models/`; a user's own models are a local folder in the same format.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from certseg.core.labels import ClassTable
from certseg.model.cards import ModelCard, ModelError, model_folder, sha256_of
from certseg.model.denoiser import DiffusionDenoiser
from certseg.model.laterality import LateralityRule, rule_for_labels
from certseg.model.networks import load_denoiser, load_segmenter
from certseg.model.acceptance import AcceptanceCheck, structure_classes



@dataclass
class LoadedModels:
    network: torch.nn.Module
    segmenter_card: ModelCard
    denoiser: DiffusionDenoiser | None
    denoiser_card: ModelCard | None
    ood_detector: AcceptanceCheck | None = None

    @property
    def num_classes(self) -> int:
        return self.segmenter_card.num_classes

    @property
    def class_table(self) -> ClassTable:
        """Which structures each class of the segmenter stands for."""
        return self.segmenter_card.classes

    @property
    def anatomy_classes(self) -> dict[str, set[int]]:
        """The classes standing for each structure the input check's anatomy measures look at."""
        return structure_classes({label.name: label.value for label in self.segmenter_card.labels},
                                 self.segmenter_card.classes.classes_with)

    @property
    def laterality(self) -> LateralityRule | None:
        """The laterality rule of the base function for this segmenter's labels (model.laterality)."""
        return rule_for_labels({label.name: label.value for label in self.segmenter_card.labels},
                               self.segmenter_card.classes)


def load_models(model_dir: Path | str | None = None, *, with_denoiser: bool = True) -> LoadedModels:
    """Load the segmenter, its OOD detector when the card names one, and the denoiser when asked for."""
    root = model_folder(model_dir, with_denoiser=with_denoiser)
    network, segmenter_card = load_segmenter(root / "segmenter")
    denoiser = denoiser_card = None
    if with_denoiser:
        denoiser, denoiser_card = load_denoiser(root / "denoiser")
    return LoadedModels(network, segmenter_card, denoiser, denoiser_card, _load_detector(segmenter_card))


def _load_detector(card: ModelCard) -> AcceptanceCheck | None:
    if card.ood_detector is None:
        return None
    path = card.folder / card.ood_detector.file
    if not path.is_file() or sha256_of(path) != card.ood_detector.sha256:
        raise ModelError(f"{path}: OOD detector missing or not the one the card names (sha256)")
    return AcceptanceCheck.load(path)
