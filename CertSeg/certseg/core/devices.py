"""Where the engine runs and how many noisy copies go through the network at once, when the caller does not say.

Used by every part that runs networks (the pipeline, the segmenter, training, evaluation, the bench), so it
lives on its own rather than inside the sampling it serves.
"""

from __future__ import annotations

import torch

from certseg.errors import ParameterError


def default_batch_size(device: torch.device) -> int:
    """Noisy copies per forward pass when neither the caller nor the model's own measurement chooses
    (model.segmenter measures the fastest batch on a CPU and the largest that fits on CUDA).

    Measured with the shipped models at 256 x 256 on 2 CPU cores: batch 2 gives 9.7
    samples/s, batch 16 only 4.3 (cache-bound); GPUs want large batches.
    """
    return {"cpu": 2, "mps": 16}.get(device.type, 64)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' (or None) picks CUDA when present, then Apple MPS, else CPU."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError("device 'cuda' was requested but no CUDA GPU is available")
    return resolved
