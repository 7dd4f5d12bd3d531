"""Refusing what is not a chest radiograph, from the image itself (docs/method.md §7).

Spectral signature (after arXiv 2004.06569): the segmenter's encoder feature maps
are Fourier transformed; per encoder level, the log power averaged over channels in
rings of equal spatial frequency, and each channel's log total spectral power
(Parseval: its mean square), form one vector (4 levels: 4 x 8 rings + 240 channels).
Chest radiographs give vectors that cluster; other anatomy, photographs, noise, CT
slices or inverted images do not.  The per-channel powers matter: ring powers alone
barely see an inverted radiograph (measured AUROC 0.63), as spectra are nearly
unchanged by a sign flip while the channels that respond are not.  The score is the Mahalanobis distance
to the training images' vectors (mean and a shrunk covariance); the threshold is
the quantile of held-out in-domain scores that gives the stated false-rejection
rate.  The baseline compared against is prediction uncertainty: the mean per-pixel
softmax entropy of the same network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from certseg.record import OodVerdict

# Encoder levels of a 4-level MONAI U-Net (the first shipped architecture); encoder_layers() finds any depth.
DEFAULT_LAYERS = ("model.0", "model.1.submodule.0", "model.1.submodule.1.submodule.0",
                  "model.1.submodule.1.submodule.1.submodule")


def encoder_layers(network: torch.nn.Module) -> tuple[str, ...]:
    """The encoder's levels: the network's own list where it has one, else every level of a MONAI UNet."""
    if hasattr(network, "encoder_level_names"):
        return tuple(network.encoder_level_names())
    names = set(dict(network.named_modules()))
    layers, prefix = [], "model"
    while f"{prefix}.1.submodule" in names and f"{prefix}.0" in names:
        layers.append(f"{prefix}.0")
        prefix += ".1.submodule"
    return (*layers, prefix) if layers else DEFAULT_LAYERS


RINGS = 8
SHRINKAGE = 0.05


@dataclass
class SpectralDetector:
    layers: list[str]
    mean: list[float]
    precision: list[list[float]]
    threshold: float
    false_rejection_rate: float

    def score(self, network: torch.nn.Module, images: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each (H, W) model-space image's signature to the training signatures."""
        centred = spectral_signatures(network, images, self.layers) - np.asarray(self.mean)
        return np.sqrt(np.einsum("ij,jk,ik->i", centred, np.asarray(self.precision), centred))

    def verdict(self, network: torch.nn.Module, image: np.ndarray) -> OodVerdict:
        score = float(self.score(network, image[None])[0])
        return OodVerdict(method="spectral signature of encoder feature maps (Mahalanobis)", score=score,
                          threshold=self.threshold, false_rejection_rate=self.false_rejection_rate,
                          in_distribution=score <= self.threshold)

    def save(self, path: Path) -> None:
        """Mean and precision as safetensors; layers, threshold and rate in its metadata."""
        from safetensors.numpy import save_file

        save_file({"mean": np.asarray(self.mean), "precision": np.asarray(self.precision)}, str(path), metadata={
            "layers": json.dumps(self.layers), "threshold": repr(self.threshold),
            "false_rejection_rate": repr(self.false_rejection_rate)})

    @classmethod
    def load(cls, path: Path) -> SpectralDetector:
        from safetensors import safe_open

        with safe_open(str(path), "np") as stored:
            meta = stored.metadata()
            return cls(json.loads(meta["layers"]), stored.get_tensor("mean").tolist(),
                       stored.get_tensor("precision").tolist(), float(meta["threshold"]),
                       float(meta["false_rejection_rate"]))


def fit_detector(network: torch.nn.Module, training: np.ndarray, held_out: np.ndarray,
                 false_rejection_rate: float = 0.05, layers=DEFAULT_LAYERS) -> SpectralDetector:
    """Fit on training images, set the threshold on held-out in-domain images."""
    detector = detector_from_signatures(spectral_signatures(network, training, layers), layers, false_rejection_rate)
    detector.threshold = float(np.quantile(detector.score(network, held_out), 1 - false_rejection_rate))
    return detector


def detector_from_signatures(signatures: np.ndarray, layers, false_rejection_rate: float) -> SpectralDetector:
    """Mean and shrunk precision of (N, features) training signatures; the threshold is left to the caller."""
    mean = signatures.mean(axis=0)
    covariance = np.cov(signatures, rowvar=False)
    # Shrunk toward a multiple of the identity; the floor keeps it invertible when the features do not vary
    # at all (an untrained network whose activations are all dead).
    scale = max(float(np.trace(covariance)) / len(mean), 1e-6)
    shrunk = (1 - SHRINKAGE) * covariance + SHRINKAGE * scale * np.eye(len(mean))
    return SpectralDetector(list(layers), mean.tolist(), np.linalg.inv(shrunk).tolist(), np.inf,
                            false_rejection_rate)


@torch.no_grad()
def spectral_signatures(network: torch.nn.Module, images: np.ndarray, layers=DEFAULT_LAYERS) -> np.ndarray:
    """(N, features) signature vectors: per level, log ring powers and log channel powers."""
    return np.stack([signature_of(capture_features(network, image, layers)[1], layers) for image in images])


@torch.no_grad()
def capture_features(network: torch.nn.Module, image: np.ndarray, layers) -> tuple[torch.Tensor, dict]:
    """One forward pass of one (H, W) image: the network's logits and the named layers' outputs."""
    captured: dict[str, torch.Tensor] = {}
    modules = dict(network.named_modules())
    hooks = [modules[name].register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
             for name in layers]
    device = next(network.parameters()).device
    try:
        logits = network(torch.as_tensor(image, dtype=torch.float32, device=device)[None, None])
    finally:
        for hook in hooks:
            hook.remove()
    return logits, captured


def signature_of(features: dict[str, torch.Tensor], layers) -> np.ndarray:
    """The signature vector of one image from its captured layer outputs."""
    return np.concatenate([_level_signature(features[name][0]) for name in layers])


def _level_signature(features: torch.Tensor) -> np.ndarray:
    channel_power = torch.log((features.float() ** 2).mean(dim=(1, 2)) + 1e-8).cpu().numpy()
    return np.concatenate([_ring_powers(features), channel_power])


def _ring_powers(features: torch.Tensor) -> np.ndarray:
    power = torch.fft.fftshift(torch.fft.fft2(features.float()).abs() ** 2, dim=(-2, -1)).mean(dim=0)
    height, width = power.shape
    y, x = torch.meshgrid(torch.arange(height) - height // 2, torch.arange(width) - width // 2, indexing="ij")
    radius = torch.sqrt((y / (height / 2)) ** 2 + (x / (width / 2)) ** 2).clamp(max=0.999)
    ring = (radius * RINGS).long().flatten()
    totals = torch.zeros(RINGS).index_add_(0, ring, power.flatten().cpu())
    counts = torch.zeros(RINGS).index_add_(0, ring, torch.ones_like(power.flatten().cpu()))
    return torch.log(totals / counts.clamp(min=1) + 1e-12).numpy()


@torch.no_grad()
def mean_entropy(network: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """The uncertainty baseline: mean per-pixel softmax entropy of each image's prediction."""
    device = next(network.parameters()).device
    scores = []
    for image in images:
        probabilities = torch.softmax(network(torch.as_tensor(image, dtype=torch.float32, device=device)[None, None]), 1)
        scores.append(float(-(probabilities * torch.log(probabilities + 1e-12)).sum(dim=1).mean()))
    return np.array(scores)
