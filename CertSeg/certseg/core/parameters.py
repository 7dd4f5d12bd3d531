"""The parameters a certificate runs with, and the seeds its noise comes from.

`SmoothingParameters` is what core.sampling draws noise with and core.smoothing tests with: the request's
parameters as the report records them (record.Parameters) plus what the machine decides (device, batch
size) and this image's noise seed.  Seeds: a run has one seed (fresh OS entropy unless the user gives one);
each image's noise seed is derived from it and the image's key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from dataclasses import dataclass, field

from certseg.core.devices import default_batch_size, resolve_device
from certseg.errors import ParameterError
from certseg.record import Parameters
from certseg.request import CertificationRequest, Correction, Mode


def fresh_seed() -> int:
    """A 63-bit seed from the operating system's entropy: noise nobody can know before the image is fixed."""
    return secrets.randbits(63)


def image_noise_seed(run_seed: int, image_key: str) -> int:
    """The noise seed of one image of a run (image_key: its SOPInstanceUID, a file name, ...).

    Distinct images of one run never share noise, and the run seed alone reproduces each image.
    The guarantee needs the run seed to be unknown to whoever prepared the image (fresh_seed());
    a seed chosen in advance lets an attacker tune the image to the exact draws.
    """
    digest = hashlib.sha256(f"certseg-noise:{int(run_seed)}:{image_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True)
class SmoothingParameters(Parameters):
    """Everything needed to reproduce a certificate bit for bit (with the same model and device): the
    parameters the report records (record.Parameters, defined there once) and this image's noise seed."""

    noise_seed: int = field(kw_only=True)  # this image's; derived from the run seed and the image key (pipeline)

    def __post_init__(self) -> None:
        """Only what the engine adds to a request is checked here: the request validated its own fields."""
        if self.num_classes < 2:
            raise ParameterError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.batch_size < 1:
            raise ParameterError(f"batch_size must be >= 1, got {self.batch_size}")

    @classmethod
    def resolved(cls, mode: Mode, request: CertificationRequest, num_classes: int, noise_seed: int | None,
                 batch_size: int | None, device, looks: tuple[int, ...] = (), stop_tolerance: float = 0.0):
        """The request as the engine runs it: the device, batch size and noise seed resolved (fresh entropy for None)."""
        resolved = resolve_device(device)
        predict = mode == Mode.PREDICT
        return cls(mode=mode, num_classes=int(num_classes), sigma=request.sigma, n0=0 if predict else request.n0,
                   n=request.n, alpha=request.alpha, tau=None if predict else request.tau,
                   correction=Correction.BONFERRONI if predict else request.correction,
                   noise_seed=fresh_seed() if noise_seed is None else int(noise_seed),
                   batch_size=int(default_batch_size(resolved) if batch_size is None else batch_size),
                   device=str(resolved), looks=looks, stop_tolerance=float(stop_tolerance))

    @property
    def recorded(self) -> Parameters:
        """What report.json states: every field but the noise seed (the report's one seed is the run seed)."""
        return Parameters(**{item.name: getattr(self, item.name) for item in dataclasses.fields(Parameters)})
