"""Model cards: the JSON beside every network, as a versioned, typed schema written and read by one record.

`SegmenterCard` and `DenoiserCard` are the cards' schema (schema version `CARD_SCHEMA_VERSION`): training
builds one and `save_*` writes it with record.to_json; loading reads it back with record.from_json, every
field's type checked, so what is written and what is read cannot drift apart.  A card records the framework
versions it was trained with (as a MONAI bundle's metadata does) and names its weights with their sha256,
checked on every load.

`ModelCard` is a card as loaded: the record, its folder, and the *definition digest*: one sha256 over
everything that decides what is certified: the weights, the architecture, the labels and class table, the
input mapping, the input check's file (its limits and threshold) for a segmenter; the UNet's weights and
configuration and the noise scheduler's configuration for a denoiser (the scheduler fixes the timestep that
matches sigma).  Editing any of them changes the digest the report states; editing the card's descriptive
text (task, training notes) does not.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from certseg import __version__
from certseg.core.labels import ClassTable, Label
from certseg.errors import ModelError
from certseg.record import JSON_NAME, ModelIdentity, ReportError, from_json, to_json

CARD_FILE = "card.json"
SEGMENTER_FILE = "model.safetensors"
DENOISER_FILES = ("unet/diffusion_pytorch_model.safetensors", "unet/config.json", "scheduler/scheduler_config.json")
DENOISER_WEIGHTS = DENOISER_FILES[0]
# 1: cards written before the schema had a version (0.1-0.4.1), read the same way; 2: frameworks recorded.
CARD_SCHEMA_VERSION = 2
INTENDED_USE = "Demonstration and research only; not for clinical use."


@dataclass(frozen=True)
class Architecture:
    """A network class (one of monai.networks.nets, or CertSeg's EfficientNetLiteUNet) and its keyword arguments."""

    name: str = field(metadata={JSON_NAME: "class"})
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LabelEntry:
    """One label as the card stores it: its value, name, and for a structure its codes and display colour."""

    value: int
    name: str
    type: tuple[str, str, str] | None = None  # (code value, scheme, meaning)
    modifier: tuple[str, str, str] | None = None
    color: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class ClassEntry:
    """One output class of the segmenter and the structures it stands for (core.labels.ClassTable)."""

    value: int
    stands_for: tuple[int, ...]


@dataclass(frozen=True)
class InputSpec:
    size: int  # the model grid's side
    percentiles: tuple[float, float] = (0.5, 99.5)  # the intensity window when the image's header fixes none
    channels: int = 1
    mapping: str = ""  # in words: stored values to the model's input
    range: str = ""  # a denoiser's input range, in words


@dataclass(frozen=True)
class AcceptanceRef:
    """The card's pointer to its fitted input check (model.acceptance) and how it was fitted."""

    file: str
    sha256: str
    method: str = ""
    negatives: str = ""
    threshold: float | None = None
    false_rejection_rate: float | None = None
    margin: float | None = None
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    training_images: tuple[str, ...] = ()
    held_out_images: tuple[str, ...] = ()
    augmented_copies: int | None = None
    seed: int | None = None


@dataclass(frozen=True)
class Frameworks:
    """The versions a model was trained with (what a MONAI bundle's metadata records)."""

    python: str
    certseg: str
    torch: str = ""
    numpy: str = ""
    monai: str = ""
    diffusers: str = ""
    safetensors: str = ""

    @classmethod
    def current(cls) -> Frameworks:
        def version(package: str) -> str:
            try:
                return metadata.version(package)
            except metadata.PackageNotFoundError:
                return ""

        return cls(python=platform.python_version(), certseg=__version__,
                   **{name: version(name) for name in ("torch", "numpy", "monai", "diffusers", "safetensors")})


@dataclass(frozen=True)
class SegmenterCard:
    name: str
    version: str
    architecture: Architecture
    labels: tuple[LabelEntry, ...]  # background (0), then every structure
    input: InputSpec
    task: str = ""
    classes: tuple[ClassEntry, ...] | None = None  # None (cards before overlapping structures): one class a label
    training: dict[str, Any] = field(default_factory=dict)  # provenance: data, splits, steps, stages
    intended_use: str = INTENDED_USE
    weights: str = SEGMENTER_FILE
    sha256: str = ""  # of the weights file, filled in when saved
    ood_detector: AcceptanceRef | None = None
    schema_version: int = CARD_SCHEMA_VERSION
    frameworks: Frameworks | None = None  # None: written before the schema recorded them


@dataclass(frozen=True)
class DenoiserCard:
    name: str
    version: str
    input: InputSpec
    task: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    intended_use: str = INTENDED_USE
    weights: str = DENOISER_WEIGHTS
    sha256: str = ""
    schema_version: int = CARD_SCHEMA_VERSION
    frameworks: Frameworks | None = None


def entries(kind: type, items: list[dict] | None) -> tuple | None:
    """JSON-ready entries (dicom.codes.label_card, class_card) as card records."""
    return None if items is None else tuple(from_json(kind, item, "card") for item in items)


@dataclass(frozen=True)
class ModelCard:
    """A card as loaded: its record, its folder and the digest of what defines the model (module docstring).

    Labels and class table are built once (the pipeline reads them for every image)."""

    folder: Path
    record: SegmenterCard | DenoiserCard
    digest: str

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def version(self) -> str:
        return self.record.version

    @property
    def sha256(self) -> str:
        return self.record.sha256

    @functools.cached_property
    def labels(self) -> tuple[Label, ...]:
        """Background, then every structure (segmenter)."""
        return tuple(Label(entry.value, entry.name) for entry in getattr(self.record, "labels", ()))

    @property
    def structures(self) -> tuple[Label, ...]:
        return self.labels[1:]

    @functools.cached_property
    def classes(self) -> ClassTable | None:
        """Which structures each output class stands for (segmenter)."""
        if not isinstance(self.record, SegmenterCard):
            return None
        stored = None if self.record.classes is None else [to_json(entry) for entry in self.record.classes]
        return ClassTable.from_card(stored, len(self.record.labels))

    @property
    def num_classes(self) -> int:
        """The network's outputs: one per class of the class table."""
        return self.classes.num_classes if self.classes is not None else len(self.labels)

    @property
    def input(self) -> InputSpec:
        return self.record.input

    @property
    def ood_detector(self) -> AcceptanceRef | None:
        return getattr(self.record, "ood_detector", None)

    def identity(self) -> ModelIdentity:
        """What a report records of the model: name, version, the weights' sha256 and the definition digest."""
        return ModelIdentity(self.name, self.version, self.sha256, self.digest)

    @classmethod
    def read(cls, folder: Path, *, segmenter: bool) -> ModelCard:
        """The card of `folder`, its weights' sha256 checked; ModelError naming the file otherwise."""
        record = read_card(folder, SegmenterCard if segmenter else DenoiserCard)
        weights = folder / record.weights
        if not weights.is_file():
            raise ModelError(f"{folder}: weights file {record.weights!r} named by the card is missing")
        if sha256_of(weights) != record.sha256:
            raise ModelError(f"{weights}: sha256 does not match the model card (corrupt or replaced weights)")
        return cls(folder, record, definition_digest(folder, record))


def read_card(folder: Path, kind: type) -> SegmenterCard | DenoiserCard:
    path = folder / CARD_FILE
    what = "segmenter" if kind is SegmenterCard else "denoiser"
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{path}: unreadable model card ({error})") from None
    if isinstance(document, dict) and "schema_version" not in document:
        document = {**document, "schema_version": 1}
    try:
        record = from_json(kind, document, "card")
        if record.schema_version > CARD_SCHEMA_VERSION:
            raise ValueError(f"schema version {record.schema_version} is newer than this CertSeg reads "
                             f"({CARD_SCHEMA_VERSION}): update CertSeg")
        if kind is SegmenterCard:
            _check_labels(record)
    except (ReportError, ValueError) as error:
        raise ModelError(f"{path}: not a valid {what} card ({error})") from None
    return record


def _check_labels(card: SegmenterCard) -> None:
    if [label.value for label in card.labels] != list(range(len(card.labels))) or len(card.labels) < 2:
        raise ValueError("labels must be numbered 0 (background), 1, 2, ... with at least one structure")
    stored = None if card.classes is None else [to_json(entry) for entry in card.classes]
    ClassTable.from_card(stored, len(card.labels))  # raises ValueError naming what is wrong


def write_card(folder: Path, card: SegmenterCard | DenoiserCard) -> SegmenterCard | DenoiserCard:
    """The card with its weights' sha256, this schema version and the running frameworks, written to `folder`."""
    card = replace(card, sha256=sha256_of(folder / card.weights), schema_version=CARD_SCHEMA_VERSION,
                   frameworks=Frameworks.current())
    (folder / CARD_FILE).write_text(json.dumps(to_json(card), indent=2) + "\n")
    return card


def definition_digest(folder: Path, card: SegmenterCard | DenoiserCard) -> str:
    """sha256 over what decides what is certified (module docstring), in a canonical JSON form."""
    if isinstance(card, SegmenterCard):
        defining = {"architecture": card.architecture, "labels": card.labels, "classes": card.classes,
                    "input": (card.input.size, card.input.percentiles, card.input.channels)}
        files = [card.weights] + ([card.ood_detector.file] if card.ood_detector is not None else [])
    else:
        defining = {"input": (card.input.size, card.input.channels)}
        files = list(DENOISER_FILES)
    defining["files"] = {name: sha256_of(folder / name) if (folder / name).is_file() else None for name in files}
    text = json.dumps(to_json(defining), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


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
    if not (root / "segmenter" / CARD_FILE).is_file():
        raise ModelError(f"{root}: no segmenter/card.json (not a CertSeg model folder)")
    if with_denoiser and not (root / "denoiser" / CARD_FILE).is_file():
        raise ModelError(f"{root}: no denoiser/card.json (use --no-denoiser to run without one)")
    return root
