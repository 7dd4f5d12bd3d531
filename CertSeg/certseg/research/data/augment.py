"""Training augmentation for what real chest radiograph exports vary in, on model-space batches.

Each transform takes (B, 1, S, S) images in [0, 1] (and label maps where geometry changes)
and a numpy Generator, and draws its parameters per image:

    geometry      rotation (+-6 degrees), scale 0.85-1.2 (AP magnification, field of view,
                  pixel spacing), shift (+-8% of the grid); labels move with the image
    window        a different intensity window than the percentile one (header VOI windows,
                  from 0.45x to 1.8x the contrast, shifted)
    gamma         the display curve, gamma 0.6-1.7
    detail        unsharp masking (CR/DX edge enhancement) or blur (lower resolution)
    collimation   constant bands at the borders (shutters, black or white)
    markers       bright or dark burned-in text and side markers; labels unchanged, the anatomy is
                  still behind them

MONOCHROME1 is handled when the file is read, so no transform inverts the grey scale.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def augment_batch(images: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = geometry(images, labels, rng)
    images = window(images, rng, probability=0.8)
    images = gamma(images, rng, probability=0.7)
    images = detail(images, rng, probability=0.6)
    images = collimation(images, rng, probability=0.3)
    images = markers(images, rng, probability=0.4)
    return images, labels


def geometry(images: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator, probability: float = 0.9
             ) -> tuple[torch.Tensor, torch.Tensor]:
    count = len(images)
    apply = rng.random(count) < probability
    angle = np.where(apply, rng.uniform(-1, 1, count) * math.radians(6), 0.0)
    scale = np.where(apply, np.exp(rng.uniform(math.log(0.85), math.log(1.2), count)), 1.0)
    shift = np.where(apply[:, None], rng.uniform(-0.16, 0.16, (count, 2)), 0.0)  # in [-1, 1] grid units
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    theta = torch.as_tensor(np.stack([np.stack([cos, -sin, shift[:, 0]], 1), np.stack([sin, cos, shift[:, 1]], 1)], 1),
                            dtype=images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    moved = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    moved_labels = F.grid_sample(labels.to(images.dtype), grid, mode="nearest", padding_mode="zeros",
                                 align_corners=False)
    return moved, moved_labels.round().to(labels.dtype)


def window(images: torch.Tensor, rng: np.random.Generator, probability: float) -> torch.Tensor:
    count = len(images)
    apply = rng.random(count) < probability
    low = np.where(apply, rng.uniform(-0.6, 0.2, count), 0.0)
    high = np.where(apply, rng.uniform(0.75, 1.6, count), 1.0)
    low, high = (torch.as_tensor(v, dtype=images.dtype)[:, None, None, None] for v in (low, high))
    return ((images - low) / (high - low)).clamp(0, 1)


def gamma(images: torch.Tensor, rng: np.random.Generator, probability: float) -> torch.Tensor:
    count = len(images)
    exponent = np.where(rng.random(count) < probability, np.exp(rng.uniform(math.log(0.6), math.log(1.7), count)), 1.0)
    return images.clamp(min=0) ** torch.as_tensor(exponent, dtype=images.dtype)[:, None, None, None]


def detail(images: torch.Tensor, rng: np.random.Generator, probability: float) -> torch.Tensor:
    """Unsharp masking (amount > 0) or blur toward a lower resolution (amount < 0)."""
    out = images.clone()
    for index in np.nonzero(rng.random(len(images)) < probability)[0]:
        blurred = _gaussian_blur(images[index : index + 1], float(rng.uniform(1.0, 6.0)))
        amount = float(rng.uniform(-0.8, 1.5))
        out[index] = (images[index] + amount * (images[index] - blurred[0])).clamp(0, 1)
    return out


def collimation(images: torch.Tensor, rng: np.random.Generator, probability: float) -> torch.Tensor:
    out = images.clone()
    size = images.shape[-1]
    for index in np.nonzero(rng.random(len(images)) < probability)[0]:
        value = float(rng.choice([0.0, 1.0, rng.uniform(0.2, 0.8)]))
        top, bottom, left, right = (int(w) for w in rng.uniform(0, 0.1, 4) * size * (rng.random(4) < 0.6))
        out[index, :, :top] = value
        out[index, :, size - bottom:] = value
        out[index, :, :, :left] = value
        out[index, :, :, size - right:] = value
    return out


def markers(images: torch.Tensor, rng: np.random.Generator, probability: float) -> torch.Tensor:
    """Lines of small blocks, like burned-in text or an L/R marker, anywhere on the image."""
    out = images.clone()
    size = images.shape[-1]
    for index in np.nonzero(rng.random(len(images)) < probability)[0]:
        for _ in range(int(rng.integers(1, 4))):
            height = int(rng.integers(3, 10))
            row, col = int(rng.integers(0, size - height)), int(rng.integers(0, size - 8))
            value = float(rng.choice([1.0, 0.0, rng.uniform(0.6, 1.0)]))
            for _ in range(int(rng.integers(1, 9))):  # characters of one line of text
                width = int(rng.integers(2, height + 2))
                out[index, :, row : row + height, col : col + width] = value
                col += width + int(rng.integers(1, 4))
                if col >= size - 2:
                    break
    return out


def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(3 * sigma)
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=image.dtype) / sigma) ** 2)
    taps = taps / taps.sum()
    padded = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    blurred = F.conv2d(padded, taps.view(1, 1, 1, -1))
    return F.conv2d(blurred, taps.view(1, 1, -1, 1))
