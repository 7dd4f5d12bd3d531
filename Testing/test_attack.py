"""`certseg attack`: the PGD attack, the contradiction count, and the command on the shipped sample."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from scipy import stats

from certseg.core.stats import radius_from_probability
from certseg.model.segmenter import CertifiedSegmenter
from certseg.request import CertificationRequest
from certseg.research.attack import AttackSettings, AttackTarget, attack, model_space_target, pgd_l2, summarize
from support.cli import run_certseg
from support.dicom_files import SAMPLE_CR

SIDE, SIGMA, TAU = 16, 0.25, 0.75
SLAB = (0.03, 0.05)  # along the unit direction of uniform brightening, measured from the clean image


class SlabSegmenter(torch.nn.Module):
    """Labels every pixel 1, except when the image's brightening t = <x - 0.5, u> (u uniform, unit)
    lies in the thin SLAB, where every pixel is 0.

    The clean image (t = 0) is 0.03 away from the slab, far less than the certified radius
    0.169: the base segmenter is provably broken at epsilon = R (every pixel flips) and provably
    unbreakable at R / 10 = 0.017.  Noise of sigma 0.25 lands in the slab with probability
    ~0.03 wherever t is, so the smoothed segmenter labels 1 everywhere with p ~0.97.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = (x - 0.5).sum(dim=(1, 2, 3)) / SIDE
        centre, half_width = sum(SLAB) / 2, (SLAB[1] - SLAB[0]) / 2
        slab_logit = 1.0 - ((t - centre) / half_width) ** 2  # > 0 exactly inside the slab
        logits = torch.stack([slab_logit, torch.zeros_like(t)], dim=1)
        return logits[:, :, None, None].expand(-1, -1, SIDE, SIDE)


CERTIFICATION = CertificationRequest(sigma=SIGMA, n0=10, n=200, alpha=0.001, tau=TAU)


def _slab_trials(target_for=None, smoothing_sigma=SIGMA):
    segmenter = CertifiedSegmenter(SlabSegmenter(), 2, None, "cpu")
    clean = np.full((SIDE, SIDE), 0.5, dtype=np.float32)
    target = (target_for or model_space_target)("slab", clean, segmenter, CERTIFICATION)
    settings = AttackSettings(steps=20, noise_draws=8, fractions=(0.1, 1.0))
    return attack(target, segmenter, smoothing_sigma, settings, torch.Generator().manual_seed(0))


def test_the_attack_breaks_the_base_segmenter_but_contradicts_no_certified_pixel():
    assert SLAB[0] < radius_from_probability(SIGMA, TAU) and SLAB[0] > radius_from_probability(SIGMA, TAU) / 10
    tenth, full = _slab_trials()
    assert tenth.base_flipped == 0.0  # the slab is out of reach
    assert full.base_flipped == 1.0  # the attack found it: every pixel of the bare network flipped
    assert full.certified_clean == tenth.certified_clean == SIDE * SIDE  # smoothing certifies all (p ~0.97)
    assert full.contradicted == tenth.contradicted == 0
    assert full.perturbation_norm <= full.epsilon * (1 + 1e-6)


def test_a_certificate_claiming_too_much_is_caught():
    """A broken certifier: it smooths with sigma 0.001 but claims sigma 0.25's radius.  Its certified
    labels are the base segmenter's, which the attack flips: every pixel is a contradiction."""

    def overclaiming(name, clean, segmenter, certification):
        honest = model_space_target(name, clean, segmenter, dataclasses.replace(certification, sigma=0.001))

        def certify(x):
            certificate, _ = honest.certify(x)
            return certificate, radius_from_probability(SIGMA, TAU)

        return AttackTarget(name, "model", honest.start, honest.to_model, certify)

    trials = _slab_trials(overclaiming, smoothing_sigma=0.001)  # the attacker knows how it smooths
    assert trials[-1].contradicted == SIDE * SIDE
    check = summarize(trials, alpha=0.001)["guarantee_check"]
    assert check["with_any_contradiction"] == 1 and check["p_value"] < 0.01


def test_pgd_reaches_the_exact_maximiser_of_a_linear_loss():
    """max <w, delta> over ||delta|| <= eps is eps w / ||w||; PGD's normalized steps reach it."""
    w = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    start = torch.rand(8, 8)
    delta = pgd_l2(lambda x: (w * x).sum(), start, 0.3, AttackSettings(steps=10))
    torch.testing.assert_close(delta, 0.3 * w / w.norm(), rtol=1e-5, atol=1e-6)


def test_guarantee_check_p_value_matches_scipys_binomial_tail():
    from certseg.research.attack import Trial

    trials = [Trial(f"image{i}", "model", f, f, 0.0, 100, int(i < 3 and f == 1.0), 0, f)
              for i in range(40) for f in (0.5, 1.0)]
    check = summarize(trials, alpha=0.01)["guarantee_check"]
    assert check["with_any_contradiction"] == 3 and check["allowed_probability_per_image"] == pytest.approx(0.03)
    assert check["p_value"] == pytest.approx(stats.binom.sf(2, 40, 0.03), rel=1e-9)


@pytest.mark.parametrize("args, words", [
    (["--fractions", "1.5"], "fractions must lie in [0, 1]"),
    (["--steps", "0"], "must be >= 1"),
    (["--sequential"], "sequential certification is not supported"),
])
def test_bad_attack_parameters_fail_in_one_line(args, words, tmp_path):
    done = run_certseg("attack", SAMPLE_CR, "--out", tmp_path / "a", *args)
    assert done.returncode == 2 and words in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_attack_command_on_the_shipped_sample_in_both_spaces(tmp_path):
    out = tmp_path / "attack"
    done = run_certseg("attack", SAMPLE_CR, "--out", out, "--no-denoiser", "--fractions", "0", "1", "--steps", "3",
                       "--noise-draws", "2", "--quiet")
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "attack.json").read_text())
    rows = result["summary"]["rows"]
    assert [(r["space"], r["fraction_of_radius"]) for r in rows] == [("model", 0), ("model", 1), ("pixels", 0),
                                                                      ("pixels", 1)]
    pixels = [t for t in result["trials"] if t["space"] == "pixels"]
    model = [t for t in result["trials"] if t["space"] == "model"]
    # the stored-value radius is the model radius over ||A||: thousands of stored units, not ~0.17
    assert model[1]["epsilon"] == pytest.approx(radius_from_probability(0.25, 0.75))
    assert pixels[1]["epsilon"] > 100 * model[1]["epsilon"]
    assert all(t["perturbation_norm"] <= t["epsilon"] * (1 + 1e-5) for t in result["trials"])
    assert all(t["contradicted"] == 0 and t["certified_clean"] > 0 for t in result["trials"])
    assert (out / "attack.png").stat().st_size > 0 and "| model | 1 |" in (out / "attack.md").read_text()
