"""From a radiograph's stored pixel values to the model's input, and back.

The map is affine: shift and scale by a fixed intensity window, zero-pad to a
square (aspect kept), resize to the model grid with antialiased bilinear
weights, then clip to [0, 1] (1-Lipschitz).  Its linear part A bounds how far a
perturbation of the stored image moves the model input, ||A delta|| <= ||A|| ||delta||,
so a model-space radius R holds for every stored-value perturbation below R / ||A||
(docs/method.md §4).

||A|| is computed exactly, not estimated: the resize is separable (one 1D
resampling per axis), so A = scale * (V kron H) with V and H the padded 1D
resampling matrices, and ||V kron H|| = ||V|| ||H||.  Each factor is built by
pushing the identity through torch's own interpolation and its largest singular
value taken by SVD.  (Power iteration through the 2D map, which the tests run as
an independent check, only approaches ||A|| from below and would overstate radii.)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from certseg.core.window import IntensityWindow


@dataclass(frozen=True)
class ModelInputMap:
    """Stored pixel values of shape `source_shape` -> a (model_size, model_size) model input."""

    source_shape: tuple[int, int]
    model_size: int
    window: IntensityWindow

    @property
    def padded_size(self) -> int:
        return max(self.source_shape)

    @property
    def padding(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) zero padding that centres the image in the square."""
        height, width = self.source_shape
        extra_h, extra_w = self.padded_size - height, self.padded_size - width
        return (extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2)

    def linear(self, stored: torch.Tensor) -> torch.Tensor:
        """The linear part A: (H, W) -> (S, S)."""
        padded = F.pad(stored[None, None], self.padding)
        resized = F.interpolate(
            padded, size=(self.model_size, self.model_size), mode="bilinear", antialias=True, align_corners=False
        )
        return resized[0, 0] / (self.window.high - self.window.low)

    def __call__(self, stored: np.ndarray) -> np.ndarray:
        """Model input in [0, 1]; padding is the window's low end (black)."""
        shifted = torch.as_tensor(np.asarray(stored, dtype=np.float64) - self.window.low, dtype=torch.float64)
        return self.linear(shifted).clamp(0.0, 1.0).to(torch.float32).numpy()

    def labels_to_source(self, labels: np.ndarray) -> np.ndarray:
        """Model-grid labels (or any per-pixel map) back onto the source grid, padding cropped."""
        upsampled = resize_labels(labels, (self.padded_size, self.padded_size))
        left, _, top, _ = self.padding
        height, width = self.source_shape
        return upsampled[top : top + height, left : left + width]

    def labels_to_model(self, labels: np.ndarray) -> np.ndarray:
        """Source-grid labels onto the model grid, padded as the image is (training and evaluation truth)."""
        left, right, top, bottom = self.padding
        return resize_labels(np.pad(labels, ((top, bottom), (left, right))), (self.model_size, self.model_size))

    def operator_norm(self) -> float:
        """The spectral norm of the linear part A (exact up to float64 rounding)."""
        return self._operator_norm

    @functools.cached_property
    def _operator_norm(self) -> float:
        # Cached: the report and the radius conversion both need it, and for a 2048^2 detector
        # each computation builds two 2048 x 2048 resampling matrices.
        height, width = self.source_shape
        left, right, top, bottom = self.padding
        vertical = _resampling_matrix(height, top, bottom, self.model_size)
        horizontal = _resampling_matrix(width, left, right, self.model_size)
        factors = np.linalg.norm(vertical, 2) * np.linalg.norm(horizontal, 2)
        return float(factors / (self.window.high - self.window.low))


def _resampling_matrix(length: int, pad_before: int, pad_after: int, size: int) -> np.ndarray:
    """(size, length) matrix of zero padding then torch's antialiased bilinear resize along one axis.

    Built along the width axis for both image axes: the 2D kernel applies the same 1D
    weights to each, and torch (2.13, CPU) mis-resamples height when the width is 1.
    """
    identity = torch.eye(length, dtype=torch.float64)[:, None, None, :]  # one basis vector per batch item
    padded = F.pad(identity, (pad_before, pad_after))
    resized = F.interpolate(padded, size=(1, size), mode="bilinear", antialias=True, align_corners=False)
    return resized[:, 0, 0, :].T.numpy()


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map, dtype kept: every change of grid CertSeg makes to labels."""
    grid = torch.as_tensor(np.asarray(labels), dtype=torch.float64)[None, None]
    return F.interpolate(grid, size=tuple(shape), mode="nearest")[0, 0].numpy().astype(np.asarray(labels).dtype)
