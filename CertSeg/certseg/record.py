"""report.json as typed records, defined once: certseg.report builds a Report, every writer reads one.

The writers (the summary line, the Slicer panel, the result folder's `.seg.nrrd` tags, the overlay and
capture, the PDF page, the DICOM SR, the Ray run's table) and the Slicer module read these fields,
never a dict's string keys.  Each record's field names are its JSON keys (SlicerGrid.spacing_from
alone is stored as "from"); `Report.to_json` writes the document docs/reference.md describes and
`Report.from_json` reads it back, with every field's type checked (ReportError naming the key).

Light on purpose (standard library only): the Slicer module imports it when it loads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

from certseg.errors import CertSegError
from certseg.request import Correction, Mode

JSON_NAME = "json"  # a field's metadata key for a JSON name that differs from the field's


class ReportError(CertSegError):
    """A report.json that is not one: unreadable, or a key missing or of the wrong type."""


class RatioVerdict(StrEnum):
    """Which side of 0.5 the certified cardiothoracic-ratio interval lies on."""

    BELOW = "below"
    ABOVE = "above"
    UNDECIDED = "undecided"
    NOT_CERTIFIED = "not certified"

    @property
    def words(self) -> str:
        return VERDICT_WORDS[self]


VERDICT_WORDS = {
    RatioVerdict.BELOW: "below 0.5 for every image within the radius",
    RatioVerdict.ABOVE: "above 0.5 for every image within the radius",
    RatioVerdict.UNDECIDED: "undecided: the certified interval contains 0.5",
    RatioVerdict.NOT_CERTIFIED: "not certified (no certified heart or no certified lung)",
}


@dataclass(frozen=True)
class MetadataCheck:
    """What the metadata gate saw (dicom.reading.metadata_check): the tags it read and its verdict."""

    checked: bool
    file: str | None
    found: str | None  # modality, body part and view as read
    refusal: str | None  # why the gate refuses it; set on a certified image only when --force overrode it
    text: str  # one sentence for people


@dataclass(frozen=True)
class SlicerGrid:
    """The spacing Slicer's DICOM import gives the file, which the Slicer files (.seg.nrrd) use."""

    spacing_mm: tuple[float, float]
    spacing_from: str = field(metadata={JSON_NAME: "from"})
    used_by: tuple[str, ...]
    measurements_use: str


@dataclass(frozen=True)
class Source:
    """Where the image came from.  The DICOM fields are empty for an image file (`certify-array`)."""

    file: str
    pixel_spacing_mm: tuple[float, float] | None
    notes: tuple[str, ...]
    metadata_check: MetadataCheck
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    sop_instance_uid: str = ""
    modality: str = ""
    transfer_syntax: str = ""
    slicer_grid: SlicerGrid | None = None
    reference_dicom: str = ""  # certify-array: the DICOM file whose values the image carries
    pixel_sha256: str = ""  # the decoded values certified (dicom.reading.pixel_digest); "" in reports before 0.3.1

    @property
    def uids(self) -> tuple[str, str, str]:
        return self.study_instance_uid, self.series_instance_uid, self.sop_instance_uid


@dataclass(frozen=True)
class Parameters:
    """The smoothing parameters the certificate was computed with, defined here once: the engine's
    core.parameters.SmoothingParameters adds the per-image seed, which the report leaves out (the run seed and
    the image key give it: see Noise)."""

    mode: Mode
    num_classes: int
    sigma: float
    n0: int  # selection samples (0 for predict)
    n: int  # estimation samples at most
    alpha: float
    tau: float | None  # None for predict
    correction: Correction
    batch_size: int
    device: str
    looks: tuple[int, ...] = ()  # cumulative estimation samples at which CERTIFY tests; () means (n,)
    stop_tolerance: float = 0.0  # see core.smoothing.certify_segmentation

    @property
    def look_sizes(self) -> tuple[int, ...]:
        return self.looks or (self.n,)

    @property
    def confidence(self) -> float:
        """The probability with which the certificate holds."""
        return 1.0 - self.alpha


@dataclass(frozen=True)
class SamplesDrawn:
    selection: int
    estimation: int  # below parameters.n when sequential certification stopped early


@dataclass(frozen=True)
class ExecutionRecord:
    """How the base segmenter ran (model.execution.Execution): none of it changes the guarantee."""

    precision: str
    channels_last: bool
    compile: str


@dataclass(frozen=True)
class Noise:
    """Where the noise came from.  The run seed is the one seed: `--seed run_seed` reproduces the run, and
    the image's own noise stream is drawn from it and the image key (core.parameters.image_noise_seed)."""

    run_seed: int
    image_key: str  # the SOPInstanceUID or file name that tells this image's noise apart within a run
    source: str  # fresh OS entropy, or given (which voids the guarantee against whoever knew it)
    reproduce_with: str


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    version: str
    sha256: str = ""  # of the weights file; "" where only name and version are known (a SEG read back)
    # sha256 over everything that defines what the model certifies (model.cards.definition_digest); "" in
    # reports of versions before 0.5.0
    digest: str = ""


def combined_digest(models: dict[str, ModelIdentity]) -> str:
    """One digest over the models that ran (segmenter, and the denoiser when it ran): the report's model_digest."""
    text = json.dumps({kind: identity.digest for kind, identity in sorted(models.items())}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class StoredValues:
    """What an image's stored values are, known from the moment it is read: the units a stored-value radius is
    in, and for DICOM how such a radius converts to the file's raw pixel values (dicom.reading)."""

    units: str
    raw_per_stored: float | None = None  # 1 / |RescaleSlope|; None: no raw-value radius holds, or no file behind
    raw_note: str | None = None

    def raw_radius(self, stored_values_l2: float) -> float | None:
        return None if self.raw_per_stored is None else stored_values_l2 * self.raw_per_stored


ARRAY_VALUES = StoredValues("the array's own values, L2 over its grid")


@dataclass(frozen=True)
class Radius:
    """The certified L2 radius three ways (core.radius.radius_in_source_units, docs/method.md §4)."""

    model_space: float  # model input: [0, 1] intensities on the model grid
    stored_values_l2: float  # stored pixel values over the whole source grid
    rms_per_source_pixel: float  # stored_values_l2 / sqrt(#source pixels), in stored pixel values
    stored_values_units: str
    raw_pixel_values_l2: float | None = None  # DICOM only; None where the Modality LUT is not linear
    raw_pixel_values_note: str | None = None


@dataclass(frozen=True)
class ModelGrid:
    size: int
    abstain_fraction: float


@dataclass(frozen=True)
class SourceGrid:
    shape: tuple[int, int]
    abstain_fraction: float


class WindowOrigin(StrEnum):
    """Where the intensity window came from: the header fixes it, or the image's own percentiles do (then the
    stored-value radius also covers how far a perturbation can move them, docs/method.md §4)."""

    DICOM_VOI = "DICOM VOI"
    PERCENTILES = "image percentiles"


@dataclass(frozen=True)
class IntensityWindowRecord:
    low: float
    high: float
    origin: WindowOrigin
    percentiles: tuple[float, float] | None = None  # the model card's, when origin is PERCENTILES

    @property
    def words(self) -> str:
        if self.origin is WindowOrigin.DICOM_VOI:
            return "DICOM VOI (WindowCenter/WindowWidth): fixed by the header"
        return (f"percentiles {list(self.percentiles or ())} of this image: the stored-value radius also covers "
                f"how far a perturbation can move them")


@dataclass(frozen=True)
class SegmenterClass:
    """One class of the segmenter: a value of certificate.npz's label maps and the structures it stands for.

    A class may stand for several structures (a lung under its clavicle), so structures overlap."""

    value: int
    structures: tuple[str, ...]  # names, as in `structures`; empty for background


@dataclass(frozen=True)
class CertifiedStructure:
    """One structure's certified pixels (`value`: the structure's number in the model card; its pixels are every
    certified pixel of a class standing for it, so two structures may share pixels)."""

    name: str
    value: int
    certified_pixels: int
    certified_area_mm2: float | None  # None without a pixel spacing


@dataclass(frozen=True)
class Interval:
    """A certified [low, high] and the clean network's value, for comparison."""

    low: float
    high: float
    clean: float


@dataclass(frozen=True)
class AreaMeasurement:
    name: str
    area_pixels: Interval
    area_mm2: Interval | None  # None without a pixel spacing


@dataclass(frozen=True)
class RatioMeasurement:
    """The cardiothoracic ratio's certified interval (None ends: no certified heart or lung)."""

    low: float | None
    high: float | None
    clean: float | None
    verdict: RatioVerdict
    verdict_text: str
    definition: str

    @property
    def interval(self) -> tuple[float, float] | None:
        return None if self.low is None or self.high is None else (self.low, self.high)


@dataclass(frozen=True)
class Measurements:
    meaning: str
    structures: tuple[AreaMeasurement, ...]
    cardiothoracic_ratio: RatioMeasurement | None  # None: the model does not segment heart and both lungs

    @property
    def in_mm2(self) -> bool:
        """Whether every area has a spacing (the writers then show cm², else pixels)."""
        return all(s.area_mm2 is not None for s in self.structures)


@dataclass(frozen=True)
class SignalVerdict:
    """One measure of the input check: its value, its accepted range (None: no limit) and whether it held."""

    name: str
    value: float | None  # None: what it measures was not found (no lung, no heart)
    low: float | None
    high: float | None
    passed: bool

    def words(self) -> str:
        """"heart brighter than lungs -0.21, accepted 0.02 to 0.4"."""
        if self.low is None:
            limits = f"at most {self.high:.3g}"
        elif self.high is None:
            limits = f"at least {self.low:.3g}"
        else:
            limits = f"{self.low:.3g} to {self.high:.3g}"
        value = "not found" if self.value is None else f"{self.value:.3g}"
        return f"{self.name} {value}, accepted {limits}"


@dataclass(frozen=True)
class OodVerdict:
    """The input check's decision.  `score` and `threshold` are the feature-spectrum distance and its limit
    (the one measure of reports before the multi-measure check); `signals` holds every measure and
    `refused_by` names the first out of its range."""

    method: str
    score: float
    threshold: float
    false_rejection_rate: float
    in_distribution: bool
    forced: bool = False  # certified although refused, because the user asked (--force)
    signals: tuple[SignalVerdict, ...] = ()  # every measure; empty in reports of the single-measure check
    refused_by: str | None = None  # the first measure out of its range

    def refusal_words(self) -> str:
        """"anatomy ...: value, accepted ..." for the measure that refused; the score otherwise."""
        refusing = next((signal for signal in self.signals if signal.name == self.refused_by), None)
        if refusing is not None:
            return refusing.words()
        return f"spectral score {self.score:.1f} over {self.threshold:.1f}"


@dataclass(frozen=True)
class Report:
    """One certified image's report (docs/reference.md, "report.json")."""

    certseg_version: str
    source: Source
    parameters: Parameters
    samples_drawn: SamplesDrawn
    denoiser: bool
    laterality_rule: str | None
    execution: ExecutionRecord
    noise: Noise
    models: dict[str, ModelIdentity]  # "segmenter", and "denoiser" when it ran
    radius: Radius
    model_grid: ModelGrid
    source_grid: SourceGrid
    intensity_window: IntensityWindowRecord
    preprocessing_operator_norm: float
    structures: tuple[CertifiedStructure, ...]
    measurements: Measurements
    out_of_distribution: OodVerdict | None  # None: no detector in the model folder
    timings_s: dict[str, float]
    # the segmenter's classes; reports of earlier versions have none: one class per structure, none overlapping
    segmenter_classes: tuple[SegmenterClass, ...] = ()
    # one digest over the models that ran (model.cards.combined_digest); "" in reports before 0.5.0
    model_digest: str = ""

    @property
    def segmenter(self) -> ModelIdentity:
        return self.models["segmenter"]

    def to_json(self) -> dict[str, Any]:
        return to_json(self)

    @classmethod
    def from_json(cls, data: object) -> Report:
        return from_json(cls, data)

    @classmethod
    def read(cls, path: Path) -> Report:
        """A report.json file; ReportError naming the file and what is wrong with it."""
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ReportError(f"{path}: unreadable report ({error})") from None
        except ReportError as error:
            raise ReportError(f"{path}: {error}") from None


def to_json(record: Any) -> Any:
    """A record as JSON-ready data: dataclasses as objects, enums as their values, tuples as lists."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {f.metadata.get(JSON_NAME, f.name): to_json(getattr(record, f.name)) for f in dataclasses.fields(record)}
    if isinstance(record, Enum):
        return record.value
    if isinstance(record, (list, tuple)):
        return [to_json(item) for item in record]
    if isinstance(record, dict):
        return {str(key): to_json(value) for key, value in record.items()}
    return record


def from_json(cls: type, data: object, where: str = "report") -> Any:
    """`cls` (a record type) from JSON data, every field converted to its declared type; ReportError
    naming the key (`where`) otherwise.  Keys the record does not know are ignored: a newer report
    stays readable to an older reader."""
    if not isinstance(data, dict):
        raise ReportError(f"{where} must be an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    values = {}
    for item in dataclasses.fields(cls):
        key = item.metadata.get(JSON_NAME, item.name)
        if key in data:
            values[item.name] = _converted(hints[item.name], data[key], f"{where}.{key}")
        elif item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
            raise ReportError(f"{where} has no {key!r}")
    return cls(**values)


def _converted(hint: Any, value: object, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        return _converted(inner, value, where)
    if dataclasses.is_dataclass(hint):
        return from_json(hint, value, where)
    if origin is tuple:
        _expect(value, list, where)
        inner = args[:1] * len(value) if args[-1:] == (Ellipsis,) else args
        if len(inner) != len(value):
            raise ReportError(f"{where} must hold {len(args)} values, got {len(value)}")
        return tuple(_converted(kind, item, f"{where}[{i}]") for i, (kind, item) in enumerate(zip(inner, value)))
    if origin is dict:
        _expect(value, dict, where)
        return {key: _converted(args[1], item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(value)
        except ValueError:
            raise ReportError(f"{where} must be one of {[m.value for m in hint]}, got {value!r}") from None
    if hint is float:  # an int stays an int (a pixel count written as 372928 reads back as written)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ReportError(f"{where} must be a number, got {value!r}")
        return value
    if hint in (int, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ReportError(f"{where} must be {hint.__name__}, got {value!r}")
        return value
    return value  # Any


def _expect(value: object, kind: type, where: str) -> None:
    if not isinstance(value, kind):
        raise ReportError(f"{where} must be {'a list' if kind is list else 'an object'}, got {type(value).__name__}")
