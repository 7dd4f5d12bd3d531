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
    opacities     what makes a lung opaque, painted inside the lung masks: consolidation and ground
                  glass (smooth blobs), pleural effusion (the lower part of a lung, graded up to a
                  meniscus) and collapse or white-out (a whole lung); the opacity takes the brightness
                  of the image's own soft tissue, so the lung's border with the heart or diaphragm can
                  vanish (the silhouette sign) while the label still says lung
    devices       lines and tubes (bright curves across the chest), ECG electrodes (small discs) and a
                  pacemaker (a bright box with a lead); labels unchanged

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


def augment_clinical(images: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator,
                     lung_classes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """`augment_batch` with pathology and devices first: what wards' films show and datasets rarely do."""
    images = opacities(images, labels, rng, lung_classes, probability=0.5)
    images = devices(images, rng, probability=0.4)
    return augment_batch(images, labels, rng)


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


def opacities(images: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator, lung_classes: tuple[int, ...],
              probability: float) -> torch.Tensor:
    """Opaque lung painted inside the lung masks; one of blobs, effusion or white-out per image."""
    out = images.clone()
    size = images.shape[-1]
    lung_values = torch.as_tensor(lung_classes)
    for index in np.nonzero(rng.random(len(images)) < probability)[0]:
        lungs = torch.isin(labels[index, 0], lung_values)
        if lungs.sum() < 50:
            continue
        kind = rng.choice(["blobs", "effusion", "white-out"], p=[0.55, 0.3, 0.15])
        side = _one_lung(labels[index, 0], lung_classes, rng) if kind != "blobs" or rng.random() < 0.5 else lungs
        if kind == "blobs":
            alpha = _smooth_blobs(size, rng) * float(rng.uniform(0.3, 1.0))
        elif kind == "effusion":
            alpha = _lower_part(side, float(rng.uniform(0.15, 0.6)), rng) * float(rng.uniform(0.6, 1.0))
        else:
            alpha = torch.full((size, size), float(rng.uniform(0.6, 1.0)))
        alpha = _gaussian_blur((alpha * side)[None, None], 1.5)[0, 0] * side  # soft inside, stops at the pleura
        tissue = float(torch.quantile(images[index, 0].flatten(), float(rng.uniform(0.45, 0.8))))
        texture = _gaussian_blur(torch.randn(1, 1, size, size, dtype=images.dtype), 3.0)[0, 0] * 0.12
        out[index, 0] = (images[index, 0] + alpha * (tissue + texture - images[index, 0])).clamp(0, 1)
    return out


def devices(images: torch.Tensor, rng: np.random.Generator, probability: float) -> torch.Tensor:
    """Tubes and lines, electrodes and a pacemaker: bright, sharp, anywhere over the chest."""
    out = images.clone()
    size = images.shape[-1]
    rows, cols = torch.meshgrid(torch.arange(size, dtype=images.dtype), torch.arange(size, dtype=images.dtype),
                                indexing="ij")
    for index in np.nonzero(rng.random(len(images)) < probability)[0]:
        paint = torch.zeros(size, size, dtype=images.dtype)
        for _ in range(int(rng.integers(1, 4))):  # tubes and lines: a quadratic curve from the top
            ends = rng.uniform([0, 0.2, 0.3, 0.15], [0.05, 0.8, 0.9, 0.85]) * size
            bend = rng.uniform(0.2, 0.8, 2) * size
            t = np.linspace(0, 1, 2 * size)[:, None]
            points = (1 - t) ** 2 * ends[:2] + 2 * (1 - t) * t * bend + t ** 2 * ends[2:]
            paint = torch.maximum(paint, _stroke(points, size, int(rng.integers(0, 3)), float(rng.uniform(0.5, 1))))
        for _ in range(int(rng.integers(0, 6))):  # electrodes
            centre, radius = rng.uniform(0.05, 0.95, 2) * size, float(rng.uniform(2, 6))
            disc = ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2).sqrt() <= radius
            paint = torch.maximum(paint, disc.to(images.dtype) * float(rng.uniform(0.6, 1)))
        if rng.random() < 0.2:  # a pacemaker below a clavicle
            top, left = int(rng.uniform(0.12, 0.3) * size), int(rng.choice([0.12, 0.62]) * size + rng.uniform(0, 0.1) * size)
            paint[top : top + int(size * 0.08), left : left + int(size * 0.12)] = 1.0
        out[index, 0] = torch.maximum(images[index, 0], paint)
    return out


def _stroke(points: np.ndarray, size: int, half_width: int, brightness: float) -> torch.Tensor:
    """A line through (row, col) `points`, 2 * half_width + 1 pixels wide, softened at its edges."""
    line = torch.zeros(1, 1, size, size)
    inside = np.all((points >= 0) & (points < size), axis=1)
    rows, cols = points[inside].astype(int).T
    line[0, 0, rows, cols] = 1.0
    if half_width:
        line = F.max_pool2d(line, 2 * half_width + 1, stride=1, padding=half_width)
    return _gaussian_blur(line, 0.6)[0, 0].clamp(0, 1) * brightness


def _one_lung(labels: torch.Tensor, lung_classes: tuple[int, ...], rng: np.random.Generator) -> torch.Tensor:
    """One side's lung: the lung classes left or right of the lungs' midline column."""
    lungs = torch.isin(labels, torch.as_tensor(lung_classes))
    columns = torch.nonzero(lungs)[:, 1].to(torch.float32)
    middle = float(columns.mean())
    side = torch.zeros_like(lungs)
    if rng.random() < 0.5:
        side[:, : int(middle)] = True
    else:
        side[:, int(middle):] = True
    return lungs & side


def _smooth_blobs(size: int, rng: np.random.Generator) -> torch.Tensor:
    """Patches covering 10-70% of the grid with soft edges, from upsampled coarse noise."""
    coarse = torch.as_tensor(rng.standard_normal((1, 1, 6, 6)), dtype=torch.float32)
    field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0, 0]
    level = torch.quantile(field.flatten(), float(rng.uniform(0.3, 0.9)))
    return ((field - level) / 0.3).clamp(0, 1)


def _lower_part(mask: torch.Tensor, fraction: float, rng: np.random.Generator) -> torch.Tensor:
    """1 below the line at `fraction` of the mask's height from its base, ramping over a few pixels above."""
    rows = torch.nonzero(mask)[:, 0]
    if len(rows) == 0:
        return torch.zeros(mask.shape)
    top, bottom = int(rows.min()), int(rows.max())
    level = bottom - fraction * (bottom - top)
    grid = torch.arange(mask.shape[0], dtype=torch.float32)[:, None].expand(mask.shape)
    columns = torch.arange(mask.shape[1], dtype=torch.float32)[None, :].expand(mask.shape)
    # a meniscus: the fluid line tilts, higher on one side, rather than lying flat
    tilt = float(rng.uniform(-0.4, 0.4)) * (columns - float(torch.nonzero(mask)[:, 1].float().mean()))
    return ((grid - level + tilt) / float(rng.uniform(3, 12)) + 1).clamp(0, 1)
