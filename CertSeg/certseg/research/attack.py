"""`certseg attack`: L2 PGD against what CertSeg certifies, and against the bare network.

For each image and each epsilon up to the certified radius R:

  smoothed   SmoothAdv's attack (Salman et al., NeurIPS 2019) on the smoothed soft segmenter:
             maximise the cross-entropy of the mean softmax over m noise draws (drawn once per
             attack and kept fixed across the T steps) at the clean certificate's certified pixels,
             with L2 steps projected onto the epsilon ball.  The attacked image is then certified
             again with fresh noise; a pixel certified in both certificates with different labels
             CONTRADICTS the clean certificate.
  base       the same PGD on the network alone (no noise, no denoiser) against its own clean
             labels: the fraction of pixels it flips is what the certificate buys.

Two spaces: `model` attacks the model input directly (the certificate covers every perturbation
of norm below R, so the attack is not confined to [0, 1]); `pixels` attacks the image's own
stored values through the real preprocessing (window, padding, resize, clipping) with epsilon a
fraction of the stored-value radius, and certifies the attacked image through the real pipeline.

What the guarantee allows: an image's clean certificate and its K attacked certificates each
hold with probability >= 1 - alpha, so all K + 1 hold (and no certified pixel can be contradicted)
with probability >= 1 - (K + 1) alpha.  The summary compares the images with any contradiction
against that bound.
"""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from certseg.core.labels import ABSTAIN
from certseg.core.parameters import fresh_seed
from certseg.core.smoothing import Certificate
from certseg.core.stats import binomial_upper_tail_pvalue
from certseg.errors import ParameterError
from certseg.model.denoiser import DiffusionDenoiser
from certseg.model.segmenter import CertifiedSegmenter
from certseg.pipeline import CertificationPipeline, StoredImage
from certseg.request import CertificationRequest

SPACES = ("model", "pixels")
# 0: no attack, the clean image certified again; its losses to abstention are fresh noise's own churn.
DEFAULT_FRACTIONS = (0.0, 0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class AttackSettings:
    """steps: PGD steps T; noise_draws: m, the noise samples the smoothed loss averages over;
    step_scale: each step moves step_scale * epsilon / T (Madry et al.'s 2.5 reaches the sphere)."""

    steps: int = 20
    noise_draws: int = 8
    step_scale: float = 2.5
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS  # epsilons as fractions of the certified radius

    def __post_init__(self) -> None:
        """Valid by construction."""
        if self.steps < 1 or self.noise_draws < 1:
            raise ParameterError(f"steps and noise draws must be >= 1, got {self.steps} and {self.noise_draws}")
        if not self.step_scale > 0:
            raise ParameterError(f"step scale must be > 0, got {self.step_scale}")
        if not self.fractions or not all(0 <= f <= 1 for f in self.fractions):
            raise ParameterError(f"epsilon fractions must lie in [0, 1] (the certificate says nothing beyond its "
                             f"radius), got {list(self.fractions)}")


@dataclass
class Trial:
    """One attack at one epsilon on one image."""

    image: str
    space: str
    fraction: float  # epsilon / certified radius
    epsilon: float  # in the space's units (model input, or stored values)
    base_flipped: float  # fraction of all pixels whose bare-network label the base attack changed
    certified_clean: int  # pixels the clean certificate certifies
    contradicted: int  # certified in both, with different labels: forbidden but with probability (K + 1) alpha
    lost: int  # certified clean, abstained after the attack: allowed (the certificate promises no abstention)
    perturbation_norm: float  # of the smoothed attack's final perturbation (<= epsilon)


def pgd_l2(loss: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, epsilon: float,
           settings: AttackSettings) -> torch.Tensor:
    """The perturbation of L2 norm <= epsilon with the highest loss among the PGD iterates."""
    if epsilon == 0:
        return torch.zeros_like(start)
    step = settings.step_scale * epsilon / settings.steps
    delta = torch.zeros_like(start)
    best, best_loss = delta, -torch.inf
    for _ in range(settings.steps):
        delta.requires_grad_(True)
        value = loss(start + delta)
        (gradient,) = torch.autograd.grad(value, delta)
        with torch.no_grad():
            if value.item() > best_loss:
                best, best_loss = delta.detach().clone(), value.item()
            delta = delta + step * gradient / gradient.norm().clamp_min(1e-12)
            # the norm in float64: float32 sums over a 2048^2 image overshoot the ball by ~1e-4
            delta = delta * min(1.0, epsilon / max(delta.double().norm().item(), 1e-12))
    with torch.no_grad():
        if loss(start + delta).item() > best_loss:
            best = delta.detach()
    return best


def base_loss(network: torch.nn.Module, to_model: Callable, targets: torch.Tensor) -> Callable:
    """Mean cross-entropy of the bare network against `targets` (its own clean labels)."""
    return lambda x: F.cross_entropy(network(to_model(x)[None, None]), targets[None])


def smoothed_loss(network: torch.nn.Module, denoiser: DiffusionDenoiser | None, sigma: float, to_model: Callable,
                  targets: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor) -> Callable:
    """SmoothAdv's objective: -log of the mean softmax (over the fixed noise) of the targets, on `mask`."""
    timestep = None if denoiser is None else denoiser.timestep(sigma)

    def loss(x: torch.Tensor) -> torch.Tensor:
        noisy = to_model(x)[None, None] + sigma * noise
        images = noisy if denoiser is None else denoiser.denoise(noisy, timestep)
        mean_softmax = network(images).softmax(dim=1).mean(dim=0)
        chosen = mean_softmax.gather(0, targets[None]).squeeze(0)
        return -chosen.clamp_min(1e-12).log()[mask].mean()

    return loss


@dataclass
class AttackTarget:
    """One image as the attacker sees it: a start point, its map onto the model input, how it is
    certified, and the certified radius in its own units."""

    name: str
    space: str
    start: torch.Tensor
    to_model: Callable[[torch.Tensor], torch.Tensor]
    certify: Callable[[np.ndarray], tuple[Certificate, float]]  # fresh noise; the radius in this space's units


def model_space_target(name: str, model_image: np.ndarray, segmenter: CertifiedSegmenter,
                       request: CertificationRequest) -> AttackTarget:
    def certify(x: np.ndarray) -> tuple[Certificate, float]:
        certificate = segmenter.certify(x, request, noise_seed=fresh_seed())
        return certificate, certificate.radius

    return AttackTarget(name, "model", torch.as_tensor(model_image, dtype=torch.float32), lambda x: x, certify)


def pixel_space_target(image: StoredImage, pipeline: CertificationPipeline,
                       request: CertificationRequest) -> AttackTarget:
    """Stored values through the real preprocessing; the attacker's gradient holds the clean image's window
    (a percentile window moves with the image when it is certified again, which the radius accounts for)."""
    input_map = pipeline.input_map(image)
    clean_window = input_map.window
    fresh_and_forced = dataclasses.replace(request, run_seed=None, force=True)

    def certify(values: np.ndarray) -> tuple[Certificate, float]:
        result = pipeline.certify(dataclasses.replace(image, pixels=values), fresh_and_forced)
        return result.certificate, result.radius.stored_values_l2

    return AttackTarget(image.key, "pixels", torch.as_tensor(image.pixels, dtype=torch.float32),
                        lambda x: input_map.linear(x - clean_window.low).clamp(0.0, 1.0), certify)


def attack(target: AttackTarget, segmenter: CertifiedSegmenter, sigma: float, settings: AttackSettings,
           generator: torch.Generator) -> list[Trial]:
    """Certify the clean image, then attack base and smoothed segmenter at every epsilon."""
    network, denoiser = segmenter.network, segmenter.denoiser
    clean, radius = target.certify(target.start.numpy())
    with torch.no_grad():
        base_clean = network(target.to_model(target.start)[None, None]).argmax(dim=1)[0]
    certified = torch.as_tensor(clean.labels != ABSTAIN)
    targets = torch.as_tensor(np.where(clean.labels == ABSTAIN, 0, clean.labels))
    trials = []
    for fraction in settings.fractions:
        epsilon = fraction * radius
        base_delta = pgd_l2(base_loss(network, target.to_model, base_clean), target.start, epsilon, settings)
        with torch.no_grad():
            attacked_base = network(target.to_model(target.start + base_delta)[None, None]).argmax(dim=1)[0]
        noise = torch.randn((settings.noise_draws, 1, *clean.labels.shape), generator=generator)
        delta = torch.zeros_like(target.start)
        if certified.any() and epsilon > 0:
            loss = smoothed_loss(network, denoiser, sigma, target.to_model, targets, certified, noise)
            delta = pgd_l2(loss, target.start, epsilon, settings)
        attacked = target.certify((target.start + delta).numpy())[0].labels
        both = (clean.labels != ABSTAIN) & (attacked != ABSTAIN)
        trials.append(Trial(
            target.name, target.space, fraction, epsilon,
            base_flipped=float((attacked_base != base_clean).float().mean()),
            certified_clean=int(certified.sum()),
            contradicted=int(np.sum(both & (attacked != clean.labels))),
            lost=int(np.sum((clean.labels != ABSTAIN) & (attacked == ABSTAIN))),
            perturbation_norm=float(delta.double().norm())))
    return trials


def run_attacks(images: list[StoredImage], pipeline: CertificationPipeline, request: CertificationRequest,
                settings: AttackSettings, spaces: tuple[str, ...],
                log: Callable[[str], None] | None = None) -> tuple[list[Trial], dict[str, Any]]:
    """Attack every image in every space; trials and summary.

    request.run_seed fixes only the attacker's own noise draws; every certificate draws fresh noise."""
    generator = torch.Generator().manual_seed(fresh_seed() if request.run_seed is None else request.run_seed)
    trials: list[Trial] = []
    for image in images:
        for space in spaces:
            if space == "model":
                model_image = pipeline.input_map(image)(image.pixels)
                target = model_space_target(image.key, model_image, pipeline.segmenter, request)
            else:
                target = pixel_space_target(image, pipeline, request)
            done = attack(target, pipeline.segmenter, request.sigma, settings, generator)
            trials += done
            if log is not None:
                log(f"{image.key} ({space}): " + "; ".join(
                    f"{t.fraction:g}R: base {t.base_flipped:.1%} flipped, {t.contradicted} of {t.certified_clean} "
                    f"certified contradicted, {t.lost} lost" for t in done))
    return trials, summarize(trials, request.alpha)


def summarize(trials: list[Trial], alpha: float) -> dict[str, Any]:
    """Per space and fraction: flipped and contradicted fractions; and the contradiction check against alpha."""
    rows = []
    for space in dict.fromkeys(t.space for t in trials):
        for fraction in sorted({t.fraction for t in trials if t.space == space}):
            group = [t for t in trials if t.space == space and t.fraction == fraction]
            certified = sum(t.certified_clean for t in group)
            rows.append({
                "space": space, "fraction_of_radius": fraction, "images": len(group),
                "mean_epsilon": float(np.mean([t.epsilon for t in group])),
                "base_flipped_fraction": float(np.mean([t.base_flipped for t in group])),
                "certified_contradicted_fraction": sum(t.contradicted for t in group) / max(certified, 1),
                "certified_lost_to_abstention_fraction": sum(t.lost for t in group) / max(certified, 1),
                "images_with_contradiction": sum(t.contradicted > 0 for t in group),
            })
    return {"rows": rows, "guarantee_check": _guarantee_check(trials, alpha)}


def _guarantee_check(trials: list[Trial], alpha: float) -> dict[str, Any]:
    """Images (per space) with any contradiction against the (K + 1) alpha per image the guarantee allows."""
    groups: dict[tuple[str, str], list[Trial]] = {}
    for t in trials:
        groups.setdefault((t.image, t.space), []).append(t)
    looks = max((len(g) for g in groups.values()), default=0)
    allowed_rate = min(1.0, (looks + 1) * alpha)
    contradicted = sum(any(t.contradicted > 0 for t in g) for g in groups.values())
    return {
        "image_attacks": len(groups),
        "with_any_contradiction": contradicted,
        "allowed_probability_per_image": allowed_rate,
        "p_value": float(binomial_upper_tail_pvalue(contradicted, len(groups), allowed_rate)) if groups else 1.0,
        "meaning": "p_value: chance of at least this many contradicted images if each image's certificates "
                   "failed with the allowed probability; a small value means the guarantee is broken",
    }


def markdown_table(summary: dict[str, Any]) -> str:
    lines = ["| space | epsilon / R | images | base network: pixels flipped | certified: pixels contradicted | "
             "certified: lost to abstention | images with a contradiction |", "|---|---|---|---|---|---|---|"]
    for row in summary["rows"]:
        lines.append(f"| {row['space']} | {row['fraction_of_radius']:g} | {row['images']} | "
                     f"{row['base_flipped_fraction']:.2%} | {row['certified_contradicted_fraction']:.3%} | "
                     f"{row['certified_lost_to_abstention_fraction']:.2%} | {row['images_with_contradiction']} |")
    check = summary["guarantee_check"]
    lines.append(f"\nImages with any contradiction: {check['with_any_contradiction']} of {check['image_attacks']} "
                 f"(the guarantee allows each with probability <= {check['allowed_probability_per_image']:.3g}; "
                 f"p = {check['p_value']:.3g}).")
    return "\n".join(lines) + "\n"


def write_outputs(trials: list[Trial], summary: dict[str, Any], settings: dict[str, Any], out: Path) -> None:
    """attack.json (settings, every trial, summary), attack.md (the table), attack.png (the plot)."""
    from certseg.files import write_json

    machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    write_json(out / "attack.json", {"settings": settings, "machine": machine, "summary": summary,
                                     "trials": [dataclasses.asdict(t) for t in trials]})
    (out / "attack.md").write_text(markdown_table(summary))
    _plot(summary, out / "attack.png")


def _plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4))
    for index, space in enumerate(dict.fromkeys(r["space"] for r in summary["rows"])):
        rows = [r for r in summary["rows"] if r["space"] == space]
        fractions = [r["fraction_of_radius"] for r in rows]
        axis.plot(fractions, [r["base_flipped_fraction"] for r in rows], "--o", color=f"C{index}",
                  label=f"base network, {space} space (pixels flipped)")
        axis.plot(fractions, [r["certified_contradicted_fraction"] for r in rows], "-s", color=f"C{index}",
                  label=f"CertSeg, {space} space (certified pixels contradicted)")
    axis.set_xlabel("attack budget epsilon / certified radius R (L2)")
    axis.set_ylabel("fraction of pixels")
    axis.set_ylim(-0.02, 1.0)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
