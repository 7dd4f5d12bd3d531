"""What a certification asks for, defined once: the statistics (CertificationRequest) and how it runs (RunOptions).

Both are frozen and validated.  The CLI parses its options into them, the Slicer panel and the
research commands build them, and `arguments()` turns them back into the command line the Slicer
module runs; no entry point restates a default.  Light on purpose (no numpy, no torch): the Slicer
module imports it when it loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from certseg.errors import ParameterError


class Mode(StrEnum):
    """SegCertify's two procedures: CERTIFY (a guarantee per pixel, or abstain) and PREDICT (no radius)."""

    CERTIFY = "certify"
    PREDICT = "predict"


class Correction(StrEnum):
    """Family-wise multiple-testing correction over the pixels."""

    HOLM = "holm"
    BONFERRONI = "bonferroni"


DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")  # auto: the device's default (model.execution)
COMPILE_MODES = ("off", "default", "max-autotune", "reduce-overhead")  # torch.compile; reduce-overhead: CUDA graphs

# Sequential certification stops when going on is expected to add fewer certified pixels than this
# fraction of any structure (measured: docs/model-developer.md, "Sequential certification").
DEFAULT_STOP_TOLERANCE = 0.002
DOUBLING = "doubling"  # looks n/2^j ... n/2, n (core.smoothing.doubling_looks)


def smoothing_problems(*, sigma: float, n: int, alpha: float, correction: str, n0: int | None = None,
                       tau: float | None = None, looks: tuple[int, ...] = (), stop_tolerance: float = 0.0) -> list[str]:
    """Every way these smoothing parameters are out of range (empty when valid); n0 and tau only for CERTIFY."""
    checks = [
        (math.isfinite(sigma) and sigma > 0, f"sigma must be > 0, got {sigma}"),
        (n >= 1, f"n must be >= 1, got {n}"),
        (0 < alpha < 1, f"alpha must lie in (0, 1), got {alpha}"),
        (correction in tuple(Correction), f"correction must be one of {tuple(map(str, Correction))}, got {correction!r}"),
    ]
    if n0 is not None:
        sizes = looks or (n,)
        checks += [
            (n0 >= 1, f"n0 must be >= 1, got {n0}"),
            (tau is not None and 0.5 < tau < 1, f"tau must lie in (0.5, 1), got {tau}"),
            (all(a < b for a, b in zip((0, *sizes), sizes)) and sizes[-1] == n,
             f"looks must increase and end at n = {n}, got {list(sizes)}"),
            (math.isfinite(stop_tolerance) and stop_tolerance >= 0, f"stop_tolerance must be >= 0, got {stop_tolerance}"),
        ]
    return [message for ok, message in checks if not ok]


@dataclass(frozen=True)
class CertificationRequest:
    """SegCertify's parameters for one image, the run seed, and whether a refusal may be overridden.

    looks: () tests once after n samples; "doubling" or explicit cumulative counts ending at n test
    sequentially and stop early (core.smoothing.certify_segmentation).
    run_seed: the run's one seed (`--seed`), from which each image's noise seed is drawn with its key
    (core.parameters.image_noise_seed).  None draws fresh OS entropy, which the guarantee needs; a given
    seed reproduces a run but voids the guarantee against anyone who knew it before the image was fixed.
    force: certify what the metadata gate or the out-of-distribution check refuses (recorded).
    """

    sigma: float = 0.25
    n0: int = 10
    n: int = 100
    alpha: float = 0.001
    tau: float = 0.75
    correction: Correction = Correction.HOLM
    looks: tuple[int, ...] | str = ()
    stop_tolerance: float = DEFAULT_STOP_TOLERANCE
    run_seed: int | None = None
    force: bool = False

    @property
    def sequential(self) -> bool:
        return bool(self.looks)

    @property
    def samples(self) -> int:
        """Noise samples drawn at most (selection and estimation)."""
        return self.n0 + self.n

    def __post_init__(self) -> None:
        self.validate()  # built once, valid once: nothing downstream checks these fields again

    def validate(self) -> None:
        """ParameterError (a ValueError) with the first problem."""
        if isinstance(self.looks, str) and self.looks != DOUBLING:
            raise ParameterError(f"looks must be counts or {DOUBLING!r}, got {self.looks!r}")
        problems = smoothing_problems(sigma=self.sigma, n=self.n, alpha=self.alpha, correction=self.correction,
                                      n0=self.n0, tau=self.tau, looks=() if isinstance(self.looks, str) else self.looks,
                                      stop_tolerance=self.stop_tolerance)
        if problems:
            raise ParameterError(problems[0])

    def arguments(self) -> list[str]:
        """The certification options of the `certseg` command line that ask for exactly this request."""
        args = ["--sigma", repr(self.sigma), "--n0", str(self.n0), "--n", str(self.n), "--alpha", repr(self.alpha),
                "--tau", repr(self.tau), "--correction", str(self.correction)]
        if self.looks == DOUBLING:
            args += ["--sequential", "--stop-tolerance", repr(self.stop_tolerance)]
        elif self.looks:
            args += ["--looks", *map(str, self.looks), "--stop-tolerance", repr(self.stop_tolerance)]
        if self.run_seed is not None:
            args += ["--seed", str(self.run_seed)]
        return args + (["--force"] if self.force else [])


@dataclass(frozen=True)
class RunOptions:
    """Which models, and how they run.  None of it changes what the certificate guarantees."""

    model_dir: Path | None = None  # None: the shipped models
    use_denoiser: bool = True
    device: str = "auto"
    batch_size: int | None = None  # noisy copies per pass; None: chosen for the device
    precision: str = "auto"
    compile: str = "off"

    def __post_init__(self) -> None:
        self.validate()  # like the request: an instance is valid by construction

    def validate(self) -> None:
        for name, value, choices in (("device", self.device, DEVICES), ("precision", self.precision, PRECISION_CHOICES),
                                     ("compile", self.compile, COMPILE_MODES)):
            if value not in choices:
                raise ParameterError(f"{name} must be one of {choices}, got {value!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ParameterError(f"batch_size must be >= 1, got {self.batch_size}")

    def arguments(self) -> list[str]:
        """The run options of the `certseg` command line that ask for exactly these."""
        args = ["--device", self.device, "--precision", self.precision, "--compile", self.compile]
        if self.model_dir is not None:
            args += ["--model-dir", str(self.model_dir)]
        if self.batch_size is not None:
            args += ["--batch-size", str(self.batch_size)]
        return args + ([] if self.use_denoiser else ["--no-denoiser"])
