"""Is this a frontal chest radiograph?  Four signals from one forward pass of the segmenter, each with a limit.

    feature spectrum distance   how far the segmenter's encoder features lie from those of chest films
                                (model.ood's spectral signature, Mahalanobis): noise, ultrasound and
                                nuclear-medicine frames lie far out; its limit is loose, as real
                                exports spread wide here
    encoder feature score       a linear score over the same signature, fitted to tell chest films
                                from what they are not (below)
    grey-scale layout score     a linear score over the image at 32 x 32: a bright mediastinum and
                                spine between two darker lung fields, shoulders above, diaphragm
                                below; an inverted film, a lateral view or a limb is laid out otherwise
    anatomy score               a linear score over what the segmenter finds: the lungs' sizes, each in
                                one piece, the left lung on the display's right of the right lung, the
                                heart between them and brighter than they are, the image's symmetry

An image is accepted when every signal is within its limit.  The linear scores are logistic
regressions fitted on chest films of the training and validation parts (with augmented copies:
hospitals' processing, opaque lungs, devices) against synthetic negatives drawn from the training
images and the chest CT (research.negatives: inverted films, lateral and abdomen views, CT slices,
textures, noise).  Each limit is the score the chest films exceed but for a small share (the false
rejection rate per signal), pushed out by a margin.  A refusal names the first signal past its limit.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

import torch.nn.functional as F

from certseg.model.ood import SpectralDetector, capture_features, signature_of
from certseg.record import OodVerdict, SignalVerdict

METHOD = "frontal chest radiograph check: feature spectrum, image layout and anatomy (fitted ranges)"
SPECTRUM = "feature spectrum distance"
FEATURE_SCORE, LAYOUT_SCORE, ANATOMY_SCORE = "encoder feature score", "grey-scale layout score", "anatomy score"
LAYOUT_SIZE = 32
# The anatomy score's inputs, in order; a measure of something not found enters as NOT_FOUND.
ANATOMY_INPUTS = ("right lung area", "left lung area", "lungs in one piece each", "left lung right of right lung",
                  "heart area", "heart between the lungs", "heart brighter than lungs", "centre brighter than sides",
                  "mirror symmetry")
NOT_FOUND = -2.0
# Structure names the anatomy measures look for in a segmenter card's labels.
RIGHT_LUNG, LEFT_LUNG, HEART = "right lung", "left lung", "heart"


@dataclass(frozen=True)
class MeasureRange:
    """The accepted range of one measure; None: no limit on that side."""

    low: float | None
    high: float | None

    def holds(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


@dataclass(frozen=True)
class LinearScore:
    """A logistic regression's log-odds over standardised inputs: weights . (x - mean) / scale + bias."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        return ((np.asarray(inputs, dtype=np.float64) - self.mean) / self.scale) @ self.weights + self.bias


@dataclass
class AcceptanceCheck:
    """The spectral signature's statistics, the linear scores and every signal's limit, for one segmenter."""

    spectrum: SpectralDetector  # its threshold is the feature-spectrum distance's limit
    ranges: dict[str, MeasureRange]
    false_rejection_rate: float  # per signal, on the fitting images, before the margin
    scores: dict[str, LinearScore] = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        return self.spectrum.threshold

    def measures(self, network: torch.nn.Module, image: np.ndarray, structures: dict[str, set[int]]
                 ) -> dict[str, float]:
        """Every signal of one (H, W) model-space image; `structures` maps a structure name to its classes."""
        return self.signals(self.inputs(network, image, structures))

    def inputs(self, network: torch.nn.Module, image: np.ndarray, structures: dict[str, set[int]]) -> SignalInputs:
        """What the signals are computed from: one forward pass, the thumbnail and the anatomy found."""
        logits, features = capture_features(network, image, self.spectrum.layers)
        labels = logits.argmax(dim=1)[0].cpu().numpy()
        found = {**image_measures(image), **anatomy_measures(image, labels, structures)}
        anatomy = np.array([found.get(name, math.nan) for name in ANATOMY_INPUTS])
        return SignalInputs(signature_of(features, self.spectrum.layers), layout_thumbnail(image),
                            np.where(np.isfinite(anatomy), np.clip(anatomy, -2, 2), NOT_FOUND))

    def signals(self, inputs: SignalInputs) -> dict[str, float]:
        centred = inputs.signature - np.asarray(self.spectrum.mean)
        values = {SPECTRUM: float(np.sqrt(centred @ np.asarray(self.spectrum.precision) @ centred))}
        for name, vector in ((FEATURE_SCORE, inputs.signature), (LAYOUT_SCORE, inputs.layout),
                             (ANATOMY_SCORE, inputs.anatomy)):
            if name in self.scores:
                values[name] = float(self.scores[name](vector[None])[0])
        return values

    def verdict(self, network: torch.nn.Module, image: np.ndarray, structures: dict[str, set[int]]) -> OodVerdict:
        values = self.measures(network, image, structures)
        signals = tuple(SignalVerdict(name, _finite_or_none(values[name]), limits.low, limits.high,
                                      limits.holds(values[name]))
                        for name, limits in self.ranges.items() if name in values)
        refusing = next((signal for signal in signals if not signal.passed), None)
        return OodVerdict(method=METHOD, score=float(values[SPECTRUM]), threshold=self.threshold,
                          false_rejection_rate=self.false_rejection_rate, in_distribution=refusing is None,
                          signals=signals, refused_by=None if refusing is None else refusing.name)

    def save(self, path: Path) -> None:
        """The spectral statistics and linear scores as safetensors; limits, layers and rate in its metadata."""
        from safetensors.numpy import save_file

        tensors = {"mean": np.asarray(self.spectrum.mean), "precision": np.asarray(self.spectrum.precision)}
        for name, score in self.scores.items():
            for part in ("mean", "scale", "weights"):
                tensors[f"{name}/{part}"] = np.asarray(getattr(score, part), dtype=np.float64)
            tensors[f"{name}/bias"] = np.array([score.bias])
        save_file(tensors, str(path), metadata={
                      "layers": json.dumps(self.spectrum.layers), "threshold": repr(self.spectrum.threshold),
                      "false_rejection_rate": repr(self.false_rejection_rate),
                      "ranges": json.dumps({name: [r.low, r.high] for name, r in self.ranges.items()})})

    @classmethod
    def load(cls, path: Path) -> AcceptanceCheck:
        """A fitted check; a detector file of earlier releases (the spectrum alone) is a check of one measure."""
        spectrum = SpectralDetector.load(path)
        from safetensors import safe_open

        with safe_open(str(path), "np") as stored:
            stored_ranges = json.loads(stored.metadata().get("ranges", "null"))
            names = {key.split("/")[0] for key in stored.keys() if "/" in key}
            scores = {name: LinearScore(stored.get_tensor(f"{name}/mean"), stored.get_tensor(f"{name}/scale"),
                                        stored.get_tensor(f"{name}/weights"), float(stored.get_tensor(f"{name}/bias")[0]))
                      for name in names}
        ranges = ({name: MeasureRange(*limits) for name, limits in stored_ranges.items()} if stored_ranges
                  else {SPECTRUM: MeasureRange(None, spectrum.threshold)})
        return cls(spectrum, ranges, spectrum.false_rejection_rate, scores)


@dataclass(frozen=True)
class SignalInputs:
    """One image's inputs to the signals: the spectral signature, the 32 x 32 thumbnail, the anatomy measures."""

    signature: np.ndarray
    layout: np.ndarray
    anatomy: np.ndarray


def layout_thumbnail(image: np.ndarray) -> np.ndarray:
    """The image averaged down to LAYOUT_SIZE x LAYOUT_SIZE, flattened."""
    pooled = F.adaptive_avg_pool2d(torch.as_tensor(image, dtype=torch.float32)[None, None], LAYOUT_SIZE)
    return pooled.flatten().numpy().astype(np.float64)


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN: a measure of something not found is stored as null."""
    return float(value) if math.isfinite(value) else None


def image_measures(image: np.ndarray) -> dict[str, float]:
    """The grey-scale layout of a frontal film, from the image alone (model space, bright = attenuating)."""
    height, width = image.shape
    body = image[height // 8: 7 * height // 8]
    third = width // 3
    centre = body[:, third: 2 * third].mean()
    sides = np.concatenate([body[:, width // 8: third], body[:, 2 * third: 7 * width // 8]], axis=1).mean()
    mirrored = np.corrcoef(body.ravel(), body[:, ::-1].ravel())[0, 1]
    return {"centre brighter than sides": float(centre - sides),
            "mirror symmetry": float(mirrored) if np.isfinite(mirrored) else 0.0}


def anatomy_measures(image: np.ndarray, labels: np.ndarray, structures: dict[str, set[int]]) -> dict[str, float]:
    """What the segmenter found, as shares of the image and positions across it (NaN: not found)."""
    if not {RIGHT_LUNG, LEFT_LUNG} <= set(structures):
        return {}
    size = labels.size
    right, left = (np.isin(labels, list(structures[name])) for name in (RIGHT_LUNG, LEFT_LUNG))
    measures = {"right lung area": right.sum() / size, "left lung area": left.sum() / size,
                "lungs in one piece each": min(_largest_piece(right), _largest_piece(left))}
    right_x, left_x = _centre_column(right), _centre_column(left)
    measures["left lung right of right lung"] = (left_x - right_x) / labels.shape[1]
    if HEART in structures:
        heart = np.isin(labels, list(structures[HEART]))
        measures["heart area"] = heart.sum() / size
        measures["heart between the lungs"] = (_centre_column(heart) - right_x) / (left_x - right_x) \
            if left_x > right_x else math.nan
        lungs = right | left
        measures["heart brighter than lungs"] = float(image[heart].mean() - image[lungs].mean()) \
            if heart.any() and lungs.any() else math.nan
    return {name: float(value) for name, value in measures.items()}


def _centre_column(mask: np.ndarray) -> float:
    columns = np.nonzero(mask)[1]
    return float(columns.mean()) if len(columns) else math.nan


def _largest_piece(mask: np.ndarray) -> float:
    """The largest connected piece's share of the mask (0 when empty)."""
    pieces, count = ndimage.label(mask)
    if count == 0:
        return 0.0
    return float(np.bincount(pieces.ravel())[1:].max() / mask.sum())


def structure_classes(labels: dict[str, int], classes_of_structure) -> dict[str, set[int]]:
    """Structure name -> the class values standing for it, for the names the anatomy measures use."""
    return {name: set(classes_of_structure(value)) for name, value in labels.items()
            if name in (RIGHT_LUNG, LEFT_LUNG, HEART)}


def fit_linear(positives: np.ndarray, negatives: np.ndarray, penalty: float = 1e-3) -> LinearScore:
    """L2-penalised logistic regression, chest films (positives) against the rest, each side weighted
    equally however many images it has; L-BFGS on the exact gradient."""
    from scipy.optimize import minimize

    inputs = np.concatenate([positives, negatives]).astype(np.float64)
    target = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
    mean, scale = inputs.mean(axis=0), inputs.std(axis=0) + 1e-6
    standard = (inputs - mean) / scale
    weight = np.where(target == 1, 0.5 / len(positives), 0.5 / len(negatives))

    def loss_and_gradient(parameters: np.ndarray) -> tuple[float, np.ndarray]:
        log_odds = standard @ parameters[:-1] + parameters[-1]
        loss = weight @ (np.logaddexp(0, log_odds) - target * log_odds) + penalty * parameters[:-1] @ parameters[:-1]
        residual = weight * (1 / (1 + np.exp(-log_odds)) - target)
        return loss, np.append(standard.T @ residual + 2 * penalty * parameters[:-1], residual.sum())

    fitted = minimize(loss_and_gradient, np.zeros(standard.shape[1] + 1), jac=True, method="L-BFGS-B",
                      options={"maxiter": 1000})
    return LinearScore(mean, scale, fitted.x[:-1], float(fitted.x[-1]))


def fit_acceptance(network: torch.nn.Module, structures: dict[str, set[int]], chest: np.ndarray,
                   training_count: int, negatives: np.ndarray, rate: float, margin: float,
                   layers) -> AcceptanceCheck:
    """The input check for `network`, fitted on model-space images.

    `chest`: every chest film of the fit (training and validation parts, with augmented copies), the
    first `training_count` of them the training films as they are, whose signatures give the spectrum's
    mean and covariance (each image goes through the network once).  `negatives`: images that are not frontal chest films.  Each signal's limit is its
    `rate` quantile over `chest` (the top (1 - rate) quantile for the distance), pushed out by `margin`
    times the spread of the chest films' values between those quantiles."""
    from certseg.model.ood import detector_from_signatures

    unfitted = AcceptanceCheck(SpectralDetector(list(layers), [], [], math.inf, rate), {}, rate)
    chest_inputs = [unfitted.inputs(network, image, structures) for image in chest]
    spectrum = detector_from_signatures(np.stack([i.signature for i in chest_inputs[:training_count]]), layers, rate)
    negative_inputs = [unfitted.inputs(network, image, structures) for image in negatives]
    scores = {name: fit_linear(np.stack([getattr(i, part) for i in chest_inputs]),
                               np.stack([getattr(i, part) for i in negative_inputs]))
              for name, part in ((FEATURE_SCORE, "signature"), (LAYOUT_SCORE, "layout"), (ANATOMY_SCORE, "anatomy"))}
    check = AcceptanceCheck(spectrum, {}, rate, scores)
    values = [check.signals(i) for i in chest_inputs]
    for name in values[0]:
        column = np.array([v[name] for v in values])
        low, high = np.quantile(column, [rate, 1 - rate])
        spread = high - low
        check.ranges[name] = (MeasureRange(None, float(high + margin * spread)) if name == SPECTRUM
                              else MeasureRange(float(low - margin * spread), None))
    spectrum.threshold = check.ranges[SPECTRUM].high
    return check
