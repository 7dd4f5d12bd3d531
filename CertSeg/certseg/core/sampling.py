"""Monte Carlo sampling for randomized smoothing: where the noise comes from, and counting the base segmenter's votes.

Sample j's noise depends only on (seed, stage, j), never on the batch size, so a certificate can be
reproduced from its seed and stopping early merely leaves samples unseen (core.smoothing relies on both).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from certseg.core.parameters import SmoothingParameters
from certseg.progress import Progress

BaseSegmenter = Callable[[torch.Tensor], torch.Tensor]
"""(B, 1, H, W) float batch on the engine's device -> (B, H, W) integer labels."""

SELECTION_STAGE, ESTIMATION_STAGE = 0, 1


_NOISE_CHUNK = 64
"""Noise is drawn in chunks of this many samples, each from its own seed: one kernel per chunk
instead of one per sample, and still independent of the batch size."""


class NoiseStream:
    """N(0, sigma^2 I) noise for the samples of one stage; sample j's noise depends only on (seed, stage, j).

    On the CPU each chunk comes from numpy's PCG64 seeded with the whole (seed, stage, chunk): torch's
    CPU generator (mt19937) keeps only the low 32 bits of a seed, so seeds differing above bit 32
    would give identical noise.  Other devices draw on the device with torch's Philox generator,
    whose 64-bit seed is a SeedSequence hash of the same entropy.
    """

    def __init__(self, shape: tuple[int, int], params: SmoothingParameters, stage: int):
        self._shape, self._params, self._stage = shape, params, stage
        self._on_cpu = torch.device(params.device).type == "cpu"
        self._generator = None if self._on_cpu else torch.Generator(device=params.device)
        self._chunk_index, self._chunk = -1, torch.empty(0)

    def take(self, first: int, size: int) -> torch.Tensor:
        """(size, 1, H, W) noise of samples first .. first + size - 1."""
        parts, j = [], first
        while j < first + size:
            self._load(j // _NOISE_CHUNK)
            offset = j - self._chunk_index * _NOISE_CHUNK
            stop = min(_NOISE_CHUNK, first + size - self._chunk_index * _NOISE_CHUNK)
            parts.append(self._chunk[offset:stop])
            j += stop - offset
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _load(self, index: int) -> None:
        if index == self._chunk_index:
            return
        entropy = np.random.SeedSequence([self._params.noise_seed, self._stage, index])  # all 63 bits of the seed
        shape = (_NOISE_CHUNK, 1, *self._shape)
        if self._on_cpu:
            draws = np.random.Generator(np.random.PCG64(entropy)).standard_normal(shape, dtype=np.float32)
            self._chunk = torch.from_numpy(draws).mul_(self._params.sigma)
        else:
            self._generator.manual_seed(int(entropy.generate_state(1, np.uint64)[0]) >> 1)
            self._chunk = torch.randn(shape, generator=self._generator, device=self._params.device
                                      ).mul_(self._params.sigma)
        self._chunk_index = index


@torch.no_grad()
def count_votes(
    base: BaseSegmenter,
    image: torch.Tensor,
    params: SmoothingParameters,
    stage: int,
    first: int,
    stop: int,
    progress: Progress | None,
) -> torch.Tensor:
    """(num_classes, H, W) int64 vote counts of `base` over noise samples first .. stop - 1 of `stage`.

    Nothing here waits for the device (counts stay on it, the label range is checked once), so
    on a GPU the host queues the next batch while the current one runs.
    """
    height, width = image.shape
    votes = torch.zeros((params.num_classes, height * width), dtype=torch.int64, device=image.device)
    noise = NoiseStream((height, width), params, stage)
    for start in range(first, stop, params.batch_size):
        size = min(params.batch_size, stop - start)
        labels = base(image.expand(size, 1, height, width) + noise.take(start, size))
        labels = labels.reshape(size, height * width).to(torch.int64)
        if start == first:
            _check_label_range(labels, params.num_classes)
        votes.scatter_add_(0, labels, torch.ones_like(labels))
        if progress is not None:
            progress(start + size - first, stop - first)
    return votes.reshape(params.num_classes, height, width)


def _check_label_range(labels: torch.Tensor, num_classes: int) -> None:
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"base segmenter returned labels outside [0, {num_classes})")
