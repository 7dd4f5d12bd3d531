"""`certseg bench`: time certification of one image at a given size, n, batch size and device.

With `reference=True` it also times the way the published research code certifies
(one noisy sample per forward pass, fp32, counts accumulated on the host) over the
same models, and reports the speed-up.  FLOPs per sample come from torch's flop
counter; on a GPU whose bf16 dense peak is known the achieved fraction is reported.
With a reduced precision it also measures what that costs: the fraction of pixel labels
of noisy samples that differ from fp32 on the same noise, and of certificate labels
that differ from an fp32 certificate with the same seed.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from certseg.core.devices import resolve_device
from certseg.model.execution import Execution
from certseg.model.cards import DEFAULT_MODEL_DIR
from certseg.model.folder import load_models
from certseg.model.segmenter import CertifiedSegmenter
from certseg.request import CertificationRequest, RunOptions
from certseg.research.architectures import default_denoiser, default_segmenter_network

# Dense bf16 tensor-core peaks (FLOP/s, no sparsity) by device-name fragment, most specific first.
BF16_PEAK_FLOPS = {"H100 PCIe": 756e12, "H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L4": 121e12}


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
    gflops_per_sample: float
    achieved_tflops: float
    execution: dict | None = None
    bf16_peak_fraction: float | None = None
    reference_seconds_per_image: float | None = None
    sample_label_flips: float | None = None  # vs fp32 on the same noisy copies
    certificate_label_changes: float | None = None  # vs an fp32 certificate with the same seed

    def line(self) -> str:
        text = (
            f"{self.device} {self.size}x{self.size} n0={self.n0} n={self.n} batch={self.batch_size} "
            f"denoiser={'on' if self.denoiser else 'off'} models={self.models} threads={self.threads} "
            f"execution={self.execution}: "
            f"{self.seconds_per_image:.2f} s/image, {self.samples_per_second:.1f} samples/s, "
            f"peak memory {self.peak_memory_mib:.0f} MiB, {self.gflops_per_sample:.2f} GFLOP/sample, "
            f"{self.achieved_tflops * 1000:.1f} GFLOP/s achieved"
        )
        if self.bf16_peak_fraction is not None:
            text += f" ({self.bf16_peak_fraction:.1%} of bf16 peak)"
        if self.reference_seconds_per_image is not None:
            text += (f"; reference loop {self.reference_seconds_per_image:.2f} s/image "
                     f"(engine {self.reference_seconds_per_image / self.seconds_per_image:.1f}x faster)")
        if self.sample_label_flips is not None:
            text += (f"; vs fp32: {self.sample_label_flips:.4%} of sample labels flip, "
                     f"{self.certificate_label_changes:.4%} of certificate labels change")
        return text


def run_bench(request: CertificationRequest = CertificationRequest(run_seed=0), options: RunOptions = RunOptions(), *,
              size: int = 256, random_init: bool = False, repeats: int = 1, reference: bool = False,
              image: np.ndarray | None = None, execution: Execution | None = None) -> BenchResult:
    """Certify `image` (a model-space array; default the sample CR, else noise) `repeats` times after
    a warm-up, and report the mean timings.  The warm-up is a whole certification when compiling,
    so that every batch shape is compiled before the clock starts.  `execution`: one the options cannot
    name (bf16 without NHWC, for the execution matrix); default: what the options ask for."""
    device = resolve_device(options.device)
    execution = execution or Execution.requested(options.precision, options.compile, device)
    seed = 0 if request.run_seed is None else request.run_seed
    segmenter, models = _segmenter(device, options, random_init, execution)
    image = _bench_image(size, seed) if image is None else np.asarray(image, dtype=np.float32)
    size = image.shape[0]
    sigma, n0, n = request.sigma, request.n0, request.n
    run = dict(batch_size=options.batch_size, noise_seed=seed)
    compiling = segmenter.execution.compile != "off"
    warm_up = request if compiling else dataclasses.replace(request, n0=1, n=4, looks=())
    segmenter.certify(image, warm_up, **run)  # allocators, kernels
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(repeats):
        certificate = segmenter.certify(image, request, **run)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - started) / repeats
    peak_memory = _peak_memory_mib(device)
    # The research code's way to run the same models: fp32, contiguous, eager, on fresh copies.
    reference_segmenter, _ = _segmenter(device, options, random_init, Execution())
    reference_base = reference_segmenter.base_segmenter(sigma)
    flops = _flops_per_sample(reference_base, image, device)  # the same arithmetic in any precision
    name = str(device) if device.type != "cuda" else torch.cuda.get_device_name(device)
    achieved = flops * (n0 + n) / seconds
    peak = next((value for key, value in BF16_PEAK_FLOPS.items() if key in name), None)
    reference_seconds = None
    if reference:
        started = time.perf_counter()
        reference_certify_counts(reference_base, image, segmenter.num_classes, sigma, n0 + n, seed, device)
        reference_seconds = time.perf_counter() - started
    flips = changes = None
    if segmenter.execution.precision != "fp32":
        flips, changes = _precision_cost(segmenter, reference_segmenter, image, request, run)
    return BenchResult(
        device=name, size=size, n0=n0, n=n, batch_size=certificate.parameters.batch_size, denoiser=options.use_denoiser, models=models,
        threads=torch.get_num_threads(), seconds_per_image=seconds, samples_per_second=(n0 + n) / seconds,
        peak_memory_mib=peak_memory, gflops_per_sample=flops / 1e9, achieved_tflops=achieved / 1e12,
        execution=dataclasses.asdict(segmenter.execution),
        bf16_peak_fraction=None if peak is None else achieved / peak, reference_seconds_per_image=reference_seconds,
        sample_label_flips=flips, certificate_label_changes=changes,
    )


def _bench_image(size: int, seed: int) -> np.ndarray:
    """The sample CR on the model grid when this is a source checkout at 256 px, else uniform noise."""
    sample = Path(__file__).parents[2] / "Resources" / "SampleData" / "sample_cr.dcm"
    if size == 256 and sample.is_file():
        from certseg.core.input_map import ModelInputMap
        from certseg.dicom.reading import read_radiograph

        radiograph = read_radiograph(sample)
        return ModelInputMap(tuple(radiograph.pixels.shape), size, radiograph.window)(radiograph.pixels)
    return np.random.default_rng(seed).uniform(0.0, 1.0, size=(size, size)).astype(np.float32)


def _precision_cost(segmenter, reference, image, request, run: dict) -> tuple[float, float]:
    """Fractions of sample labels and of certificate labels that differ from fp32 on the same noise."""
    sigma, device = request.sigma, segmenter.device
    generator = torch.Generator(device=device).manual_seed(run["noise_seed"])
    x = torch.as_tensor(image, device=device)[None, None]
    noisy = x + sigma * torch.randn((8, *x.shape[1:]), generator=generator, device=device)
    flips = (segmenter.base_segmenter(sigma)(noisy) != reference.base_segmenter(sigma)(noisy)).float().mean().item()
    changes = np.mean(segmenter.certify(image, request, **run).labels != reference.certify(image, request, **run).labels)
    return flips, float(changes)


@torch.no_grad()
def reference_certify_counts(base, image: np.ndarray, num_classes: int, sigma: float, samples: int, seed: int,
                             device: torch.device) -> np.ndarray:
    """The research code's loop: one noisy copy per forward pass, fp32, votes counted in numpy."""
    generator = torch.Generator(device=device).manual_seed(seed)
    x = torch.as_tensor(image, device=device)[None, None]
    pixels = np.arange(image.size)
    counts = np.zeros((num_classes, image.size), dtype=np.int64)
    for _ in range(samples):
        noisy = x + sigma * torch.randn(x.shape, generator=generator, device=device)
        counts[base(noisy)[0].cpu().numpy().ravel(), pixels] += 1
    return counts


@torch.no_grad()
def _flops_per_sample(base, image: np.ndarray, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        base(torch.as_tensor(image, device=device)[None, None])
    return float(counter.get_total_flops())


def _segmenter(device, options: RunOptions, random_init: bool, execution: Execution) -> tuple[CertifiedSegmenter, str]:
    """Freshly loaded models (NHWC rewrites weights in place, so runs never share them)."""
    use_denoiser = options.use_denoiser
    if not random_init and (options.model_dir is not None or (DEFAULT_MODEL_DIR / "segmenter").is_dir()):
        loaded = load_models(options.model_dir, with_denoiser=use_denoiser)
        name = loaded.segmenter_card.name
        return CertifiedSegmenter(loaded.network, loaded.num_classes, loaded.denoiser, device, execution), name
    torch.manual_seed(0)  # the same untrained weights in every copy
    network, num_classes = default_segmenter_network()
    denoiser = default_denoiser() if use_denoiser else None
    return CertifiedSegmenter(network, num_classes, denoiser, device, execution), "random-init"


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def bench_json(result: BenchResult) -> str:
    return json.dumps(result.__dict__)
