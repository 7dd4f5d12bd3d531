"""Model cards: the JSON beside every network, read once, checked, and typed.

A card names the weights file and its sha256 (checked on every load), and for a segmenter its
labels, its input spec and, optionally, its fitted out-of-distribution detector.  `document`
keeps the whole JSON as written, for the report and for cards written back by training.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from certseg.core.labels import ClassTable, Label
from certseg.errors import ModelError
from certseg.record import ModelIdentity


@dataclass(frozen=True)
class InputSpec:
    size: int  # the model grid's side
    percentiles: tuple[float, float]  # the intensity window when the image's header fixes none


@dataclass(frozen=True)
class DetectorRef:
    """The card's pointer to its fitted out-of-distribution detector."""

    file: str
    sha256: str


@dataclass(frozen=True)
class ModelCard:
    folder: Path
    name: str
    version: str
    sha256: str
    document: Mapping[str, Any]
    labels: tuple[Label, ...] = ()  # segmenter: background, then every structure
    classes: ClassTable | None = None  # segmenter: which structures each output class stands for
    input: InputSpec | None = None  # segmenter
    ood_detector: DetectorRef | None = None  # segmenter, when fitted

    @property
    def num_classes(self) -> int:
        """The network's outputs: one per class of the class table."""
        return self.classes.num_classes if self.classes is not None else len(self.labels)

    @property
    def structures(self) -> tuple[Label, ...]:
        """The labels without background."""
        return self.labels[1:]

    def identity(self) -> ModelIdentity:
        """What a report records of the model: name, version and the weights' sha256."""
        return ModelIdentity(self.name, self.version, self.sha256)

    @classmethod
    def read(cls, folder: Path, *, segmenter: bool) -> ModelCard:
        """The card of `folder`, its weights' sha256 checked; ModelError naming the file otherwise."""
        path = folder / "card.json"
        try:
            document = json.loads(path.read_text())
            card = cls._parse(folder, document, segmenter)
        except (OSError, json.JSONDecodeError) as error:
            raise ModelError(f"{path}: unreadable model card ({error})") from None
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise ModelError(f"{path}: not a valid {'segmenter' if segmenter else 'denoiser'} card "
                             f"({type(error).__name__}: {error})") from None
        weights = folder / document.get("weights", "")
        if not weights.is_file():
            raise ModelError(f"{folder}: weights file {document.get('weights')!r} named by the card is missing")
        if sha256_of(weights) != card.sha256:
            raise ModelError(f"{weights}: sha256 does not match the model card (corrupt or replaced weights)")
        return card

    @classmethod
    def _parse(cls, folder: Path, document: dict[str, Any], segmenter: bool) -> ModelCard:
        common = dict(folder=folder, name=str(document["name"]), version=str(document.get("version", "unknown")),
                      sha256=str(document.get("sha256")), document=MappingProxyType(document))
        if not segmenter:
            return cls(**common)
        labels = tuple(Label(int(entry["value"]), str(entry["name"])) for entry in document["labels"])
        if [label.value for label in labels] != list(range(len(labels))) or len(labels) < 2:
            raise ValueError("labels must be numbered 0 (background), 1, 2, ... with at least one structure")
        classes = ClassTable.from_card(document.get("classes"), len(labels))
        spec = document["input"]
        low, high = (float(p) for p in spec["percentiles"])
        detector = document.get("ood_detector")
        return cls(**common, labels=labels, classes=classes, input=InputSpec(int(spec["size"]), (low, high)),
                   ood_detector=None if detector is None else
                   DetectorRef(str(detector["file"]), str(detector["sha256"])))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


DEFAULT_MODEL_DIR = Path(__file__).parents[1] / "shipped_models"


def model_folder(model_dir: Path | str | None, *, with_denoiser: bool) -> Path:
    """The model folder asked for (None: the shipped models), ModelError unless it holds the cards a run needs.

    Light (no torch): the command line checks a --model-dir with it before anything heavy is imported."""
    root = Path(model_dir) if model_dir is not None else DEFAULT_MODEL_DIR
    if not (root / "segmenter" / "card.json").is_file():
        raise ModelError(f"{root}: no segmenter/card.json (not a CertSeg model folder)")
    if with_denoiser and not (root / "denoiser" / "card.json").is_file():
        raise ModelError(f"{root}: no denoiser/card.json (use --no-denoiser to run without one)")
    return root
