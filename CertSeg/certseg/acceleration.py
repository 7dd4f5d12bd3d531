"""How the base segmenter runs on its device: precision, memory layout, compilation, batch size.

The certificate holds for the base segmenter exactly as it ran, so none of this touches the
guarantee.  Reduced precision changes WHICH function is certified (labels of some noisy
samples flip); `certseg bench --precision` measures by how much, against fp32 on the same
noise.  Every choice is recorded in the report, so a certificate can be reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# torch.compile modes; "reduce-overhead" replays CUDA graphs (one per batch shape).
COMPILE_MODES = ("off", "default", "max-autotune", "reduce-overhead")


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

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {self.precision!r}")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES}, got {self.compile!r}")


def _native_cpu_bf16() -> bool:
    # torch.cpu's capability probes are private; a torch without them gets the safe fp32 default.
    probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(probe is not None and probe() for probe in probes)


class BaseSegmenterModule(torch.nn.Module):
    """f: (B, 1, H, W) noisy batch -> (B, H, W) labels, the function randomized smoothing smooths.

    The denoiser, when present, denoises each copy in one step at the timestep matching sigma;
    the network's most likely class is the label.
    """

    def __init__(self, network: torch.nn.Module, denoiser, sigma: float, execution: Execution, device: torch.device):
        super().__init__()
        self.network, self.denoiser, self.execution = network, denoiser, execution
        self.timestep = None if denoiser is None else denoiser.timestep(sigma)
        self.device_type = device.type

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        dtype = PRECISIONS[self.execution.precision]
        with torch.no_grad(), torch.autocast(self.device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
            if self.execution.channels_last:
                noisy = noisy.contiguous(memory_format=torch.channels_last)
            images = noisy if self.denoiser is None else self.denoiser.denoise(noisy, self.timestep)
            logits = self.network(images)
        # max().indices, not argmax(): same first-maximum tie rule, ~14x faster on CPU over the class axis.
        return logits.max(dim=1).indices


def prepare(module: BaseSegmenterModule, execution: Execution):
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
def fit_batch_size(base: BaseSegmenterModule, shape: tuple[int, int], device: torch.device, probe: int = 8) -> int:
    """Noisy copies per pass on a CUDA device: measured peak memory of a probe batch against free memory."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    base(torch.zeros((probe, 1, *shape), device=device))
    torch.cuda.synchronize(device)
    per_sample = (torch.cuda.max_memory_allocated(device) - before) / probe
    free, _ = torch.cuda.mem_get_info(device)
    return batch_size_for_memory(free, per_sample)
