"""How the base segmenter runs on its device: precision, memory layout, compilation, batch size.

The certificate holds for the base segmenter exactly as it ran, so none of this touches the
guarantee.  Reduced precision changes WHICH function is certified (labels of some noisy
samples flip); `certseg bench --precision` measures by how much, against fp32 on the same
noise.  Every choice is recorded in the report, so a certificate can be reproduced.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from certseg.errors import ParameterError
from certseg.request import COMPILE_MODES

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Execution:
    """precision: autocast dtype of the networks ("fp32": none); channels_last: NHWC tensors for
    tensor-core convolutions; compile: a torch.compile mode or "off"."""

    precision: str = "fp32"
    channels_last: bool = False
    compile: str = "off"

    @classmethod
    def default_for(cls, device: torch.device) -> Execution:
        """bf16 autocast in NHWC where the hardware computes in bf16 natively, else fp32 as trained.

        CUDA (tensor cores) and CPUs with AVX512-BF16 or AMX: on the 2-core AVX512-BF16 dev machine
        this certifies 2.5x faster with the denoiser (1.6x without) and changes 0.07% of the sample
        CR's certificate labels; a CPU without native bf16 would emulate it, slower than fp32.
        Compilation stays opt-in: it costs tens of seconds per batch shape and pays only over many
        images (a batch job), never for one image in Slicer.
        """
        if device.type == "cuda" or (device.type == "cpu" and _native_cpu_bf16()):
            return cls("bf16", True)
        return cls()

    @classmethod
    def requested(cls, precision: str, compile: str, device: torch.device) -> Execution:
        """What RunOptions ask for: precision "auto" keeps the device's default; NHWC goes with reduced
        precision where the device's default uses it."""
        default = cls.default_for(device)
        chosen = default.precision if precision == "auto" else precision
        return cls(chosen, default.channels_last and chosen != "fp32", compile)

    def __post_init__(self) -> None:
        """Valid by construction: nothing downstream checks the choices again."""
        if self.precision not in PRECISIONS:
            raise ParameterError(f"precision must be one of {tuple(PRECISIONS)}, got {self.precision!r}")
        if self.compile not in COMPILE_MODES:
            raise ParameterError(f"compile must be one of {COMPILE_MODES}, got {self.compile!r}")


def _native_cpu_bf16() -> bool:
    # torch.cpu's capability probes are private; a torch without them gets the safe fp32 default.
    probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(probe is not None and probe() for probe in probes)


def prepare(module: torch.nn.Module, execution: Execution):
    """The module as it will run: compiled when asked (its weights are already in their layout)."""
    if execution.compile == "off":
        return module
    return torch.compile(module, mode=execution.compile, dynamic=False)


def batch_size_for_memory(free_bytes: float, bytes_per_sample: float, *, headroom: float = 0.8,
                          largest: int = 1024) -> int:
    """The largest power of two (at most `largest`) whose batch fits in headroom x free memory."""
    fitting = int(headroom * free_bytes // max(bytes_per_sample, 1.0))
    if fitting < 1:
        return 1
    return min(largest, 1 << (fitting.bit_length() - 1))


@torch.no_grad()
def fit_batch_size(base: torch.nn.Module, shape: tuple[int, int], device: torch.device, probe: int = 8) -> int:
    """Noisy copies per pass on a CUDA device: measured peak memory of a probe batch against free memory."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    base(torch.zeros((probe, 1, *shape), device=device))
    torch.cuda.synchronize(device)
    per_sample = (torch.cuda.max_memory_allocated(device) - before) / probe
    free, _ = torch.cuda.mem_get_info(device)
    return batch_size_for_memory(free, per_sample)


# Batch sizes a CPU tries; beyond 4 a few cores are cache-bound (batch 16 ran at less than half batch 2's speed).
CPU_BATCH_CANDIDATES = (1, 2, 4)


@torch.no_grad()
def fastest_cpu_batch_size(base: torch.nn.Module, shape: tuple[int, int], candidates=CPU_BATCH_CANDIDATES,
                           timed_samples: int = 4) -> int:
    """Noisy copies per pass on a CPU: the candidate with the least time per sample, measured here.

    Which batch is fastest depends on the CPU (caches, AVX2 or AVX-512, native bf16): batches of 2
    beat one sample at a time on one machine and lose on another. Each candidate runs once to build
    its kernels, then at least twice and over at least `timed_samples` samples timed; its best pass
    counts, since a pass can only be slowed by other work, never sped up. (One timed pass each
    picked batch 1 on a machine where batch 4 is 15-20% faster: passes vary by 10%.) About 20
    samples in all, once per sigma and image shape. The batch changes only the speed, never which
    noise an image gets; the report records it.
    """
    generator = torch.Generator().manual_seed(0)
    per_sample = {}
    for size in candidates:
        batch = torch.rand((size, 1, *shape), generator=generator)
        base(batch)  # kernel selection and allocation, not timed
        passes = []
        for _ in range(max(2, -(-timed_samples // size))):
            started = time.perf_counter()
            base(batch)
            passes.append((time.perf_counter() - started) / size)
        per_sample[size] = min(passes)
    return min(per_sample, key=per_sample.get)
