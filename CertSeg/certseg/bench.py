"""`certseg bench`: time certification of one image at a given size, n, batch size and device."""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass

import numpy as np
import torch

from .models import DEFAULT_MODEL_DIR, default_denoiser, default_segmenter_network, load_models
from .segmenter import CertifiedSegmenter
from .smoothing import resolve_device


@dataclass
class BenchResult:
    device: str
    size: int
    n0: int
    n: int
    batch_size: int
    denoiser: bool
    models: str
    threads: int
    seconds_per_image: float
    samples_per_second: float
    peak_memory_mib: float

    def line(self) -> str:
        return (
            f"{self.device} {self.size}x{self.size} n0={self.n0} n={self.n} batch={self.batch_size} "
            f"denoiser={'on' if self.denoiser else 'off'} models={self.models} threads={self.threads}: "
            f"{self.seconds_per_image:.2f} s/image, {self.samples_per_second:.1f} samples/s, "
            f"peak memory {self.peak_memory_mib:.0f} MiB"
        )


def run_bench(*, size=256, n0=10, n=100, batch_size=16, device="auto", use_denoiser=True, model_dir=None,
              random_init=False, sigma=0.25, repeats=1, seed=0) -> BenchResult:
    """Certify `repeats` synthetic images (after one warm-up) and report the mean timings."""
    device = resolve_device(device)
    segmenter, models = _segmenter(device, use_denoiser, model_dir, random_init)
    image = np.random.default_rng(seed).uniform(0.0, 1.0, size=(size, size)).astype(np.float32)
    kwargs = dict(sigma=sigma, n=n, n0=n0, alpha=0.001, tau=0.75, batch_size=batch_size, seed=seed)
    segmenter.certify(image, **{**kwargs, "n0": 1, "n": min(n, batch_size)})  # warm-up (allocators, kernels)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(repeats):
        segmenter.certify(image, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - started) / repeats
    return BenchResult(
        device=str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        size=size, n0=n0, n=n, batch_size=batch_size, denoiser=use_denoiser, models=models,
        threads=torch.get_num_threads(), seconds_per_image=seconds, samples_per_second=(n0 + n) / seconds,
        peak_memory_mib=_peak_memory_mib(device),
    )


def _segmenter(device, use_denoiser, model_dir, random_init) -> tuple[CertifiedSegmenter, str]:
    if not random_init and (model_dir is not None or (DEFAULT_MODEL_DIR / "segmenter").is_dir()):
        loaded = load_models(model_dir, with_denoiser=use_denoiser)
        name = loaded.segmenter_card.get("name", "custom")
        return CertifiedSegmenter(loaded.network, loaded.num_classes, loaded.denoiser, device), name
    network, num_classes = default_segmenter_network()
    return CertifiedSegmenter(network, num_classes, default_denoiser() if use_denoiser else None, device), "random-init"


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def bench_json(result: BenchResult) -> str:
    return json.dumps(result.__dict__)
