"""The input check: frontal chest radiographs accepted, everything else refused, each refusal naming its signal."""

import json

import numpy as np
import pydicom
import pytest
import torch

from certseg.model.acceptance import (ANATOMY_SCORE, LAYOUT_SCORE, SPECTRUM, AcceptanceCheck, LinearScore,
                                      MeasureRange, anatomy_measures, fit_linear)
from certseg.model.folder import load_models
from certseg.model.ood import RINGS, SpectralDetector, _ring_powers
from certseg.record import OodVerdict, SignalVerdict
from certseg.research.drr import ViewParameters, load_phantom, render_view
from certseg.research.negatives import inverted, lateral_view, model_space
from certseg.research.sample_cr import cr_dataset
from support.cli import run_certseg as certseg
from support.dicom_files import SAMPLE_CR
from support.ood_corpus import OUT_OF_DOMAIN

# A seed stream neither the fit (its own seed) nor the benchmark draws from.
FRESH = np.random.SeedSequence(99)


@pytest.fixture(scope="module")
def shipped():
    models = load_models(with_denoiser=False)
    assert models.ood_detector is not None, "the shipped segmenter card carries no input check"
    return models


@pytest.fixture(scope="module")
def fresh_views():
    rng = np.random.default_rng(FRESH)
    return np.stack([model_space(render_view(load_phantom(), ViewParameters.draw(rng), 256)[0]) for _ in range(6)])


def verdicts(models, images) -> list[OodVerdict]:
    return [models.ood_detector.verdict(models.network, image, models.anatomy_classes) for image in images]


def sample_image(models) -> np.ndarray:
    from certseg.core.input_map import ModelInputMap
    from certseg.core.window import IntensityWindow
    from certseg.dicom.reading import read_radiograph

    sample = read_radiograph(SAMPLE_CR)
    window = sample.window or IntensityWindow.from_percentiles(sample.pixels, models.segmenter_card.input.percentiles)
    return ModelInputMap(tuple(sample.pixels.shape), 256, window)(sample.pixels)


def test_ring_powers_put_a_sinusoid_in_its_frequency_ring():
    rows, cols = np.indices((32, 32))
    for cycles, ring in [(2, 1), (8, 4), (14, 7)]:  # ring = cycles / (size / 2) * RINGS
        pattern = torch.as_tensor(np.cos(2 * np.pi * cycles * cols / 32), dtype=torch.float32)[None]
        powers = _ring_powers(pattern)
        assert len(powers) == RINGS and int(np.argmax(powers)) == ring


def test_logistic_fit_recovers_the_bayes_direction_of_two_gaussians():
    """Two Gaussians with one covariance: the Bayes log-odds are linear, w = S^-1 (m1 - m0); the fit finds them."""
    rng = np.random.default_rng(0)
    covariance = np.array([[1.0, 0.6], [0.6, 2.0]])
    shift = np.array([1.5, -1.0])
    positives = rng.multivariate_normal(shift, covariance, 20000)
    negatives = rng.multivariate_normal([0, 0], covariance, 20000)
    score = fit_linear(positives, negatives, penalty=0.0)
    effective = score.weights / score.scale  # the weights on the raw inputs
    truth = np.linalg.solve(covariance, shift)
    assert np.allclose(effective, truth, rtol=0.05), (effective, truth)
    middle = shift / 2  # equal priors: the log-odds vanish halfway between the means
    assert abs(float(score(middle[None])[0])) < 0.05


def test_anatomy_measures_read_two_lungs_and_a_heart_between_them():
    labels = np.zeros((100, 100), dtype=np.int64)
    labels[20:80, 10:40] = 1  # right lung: the display's left
    labels[20:80, 60:85] = 2
    labels[50:75, 40:60] = 3
    image = np.where(labels == 3, 0.8, np.where(labels > 0, 0.2, 0.5))
    measured = anatomy_measures(image, labels, {"right lung": {1}, "left lung": {2}, "heart": {3}})
    assert measured["right lung area"] == pytest.approx(0.18) and measured["left lung area"] == pytest.approx(0.15)
    assert measured["lungs in one piece each"] == 1.0
    assert measured["left lung right of right lung"] == pytest.approx((72 - 24.5) / 100)
    assert measured["heart between the lungs"] == pytest.approx((49.5 - 24.5) / (72 - 24.5))
    assert measured["heart brighter than lungs"] == pytest.approx(0.6)
    swapped = anatomy_measures(image, np.where(labels == 1, 2, np.where(labels == 2, 1, labels)),
                               {"right lung": {1}, "left lung": {2}, "heart": {3}})
    assert swapped["left lung right of right lung"] < 0  # a film shown mirrored


def test_a_refusal_names_its_signal_value_and_range():
    signal = SignalVerdict(LAYOUT_SCORE, -4.2, 0.5, None, passed=False)
    verdict = OodVerdict("check", 20.0, 40.0, 0.005, False, signals=(signal,), refused_by=LAYOUT_SCORE)
    assert verdict.refusal_words() == "grey-scale layout score -4.2, accepted at least 0.5"
    missing = SignalVerdict("heart between the lungs", None, 0.1, 0.9, passed=False)
    assert missing.words() == "heart between the lungs not found, accepted 0.1 to 0.9"
    assert not MeasureRange(0.0, 1.0).holds(float("nan"))


def test_a_check_round_trips_through_its_file_and_an_older_detector_file_still_loads(tmp_path, shipped):
    check = shipped.ood_detector
    check.save(tmp_path / "check.safetensors")
    again = AcceptanceCheck.load(tmp_path / "check.safetensors")
    assert again.ranges == check.ranges and set(again.scores) == set(check.scores)
    probe = np.random.default_rng(1).random((1, len(check.scores[ANATOMY_SCORE].mean)))
    assert again.scores[ANATOMY_SCORE](probe) == pytest.approx(check.scores[ANATOMY_SCORE](probe))
    spectral_only = SpectralDetector(check.spectrum.layers, check.spectrum.mean, check.spectrum.precision, 33.0, 0.02)
    spectral_only.save(tmp_path / "old.safetensors")
    old = AcceptanceCheck.load(tmp_path / "old.safetensors")
    assert old.ranges == {SPECTRUM: MeasureRange(None, 33.0)} and old.scores == {}


def test_the_shipped_sample_and_fresh_chest_views_are_accepted(shipped, fresh_views):
    (sample,) = verdicts(shipped, [sample_image(shipped)])
    assert sample.in_distribution, sample.refusal_words()
    assert {s.name for s in sample.signals} == set(shipped.ood_detector.ranges)  # every signal was measured
    accepted = [v.in_distribution for v in verdicts(shipped, fresh_views)]
    assert sum(accepted) >= len(accepted) - 1, accepted


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(OUT_OF_DOMAIN) + ["inverted radiograph"])
def test_each_kind_of_synthetic_negative_is_refused(kind, shipped, fresh_views):
    rng = np.random.default_rng(FRESH)
    batch = inverted(fresh_views) if kind == "inverted radiograph" else np.stack([OUT_OF_DOMAIN[kind](rng) for _ in range(4)])
    refused = [v for v in verdicts(shipped, batch) if not v.in_distribution]
    assert len(refused) == len(batch), (kind, [v.signals for v in verdicts(shipped, batch)])
    assert all(v.refused_by in shipped.ood_detector.ranges for v in refused)


def _pydicom_images(modality: str) -> np.ndarray:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))
    from ood_rates import pydicom_images

    return pydicom_images(modality)


@pytest.mark.parametrize("modality", ["MR", "US", "NM"])
def test_real_mr_ultrasound_and_nuclear_medicine_frames_are_refused_by_their_pixels(modality, shipped):
    """pydicom's own test files: real frames of each modality, judged on their pixels alone."""
    images = _pydicom_images(modality)
    assert len(images) >= 2
    assert not any(v.in_distribution for v in verdicts(shipped, images)), modality


def test_real_ct_frames_are_refused(tmp_path, shipped):
    """pydicom's CT frames, the head CT inside its circular field of view among them, are refused by their pixels
    alone; a CT file is also refused by the metadata gate before its pixels are judged."""
    from pydicom.data import get_testdata_files

    ct_verdicts = verdicts(shipped, _pydicom_images("CT"))
    assert len(ct_verdicts) >= 3 and not any(v.in_distribution for v in ct_verdicts), [v.signals for v in ct_verdicts]
    for path in get_testdata_files("CT_small.dcm"):
        result = certseg("certify", path, "--out", tmp_path / "out", "--quiet")
        assert result.returncode == 2 and "CT Image Storage is not a CR or DX image" in result.stderr, result.stderr


def _cr_file(path, stored: np.ndarray, modality="CR"):
    ds = cr_dataset(stored.astype(np.uint16), imager_spacing_mm=0.5, source_to_detector_mm=1800, magnification=1.1,
                    seed=1)
    ds.Modality = modality
    ds.save_as(path, enforce_file_format=True)


def test_a_lateral_view_stored_as_a_chest_cr_is_refused_naming_the_signal(tmp_path, shipped):
    view = lateral_view(np.random.default_rng(FRESH))
    _cr_file(tmp_path / "lateral.dcm", np.round(view * 4000))
    refused = certseg("certify", tmp_path / "lateral.dcm", "--out", tmp_path / "out", "--n0", "1", "--n", "4",
                      "--no-denoiser", "--quiet")
    assert refused.returncode == 1, refused.stderr  # a DICOM input that fails: exit 1, like a batch
    line = refused.stderr.strip().splitlines()[-1]
    assert "does not look like a frontal chest radiograph (refused by " in line and "accepted" in line
    assert any(name in line for name in shipped.ood_detector.ranges), line
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.dcm"))


def test_an_image_the_check_refuses_gets_no_certificate_unless_forced(tmp_path):
    _cr_file(tmp_path / "noise.dcm", np.random.default_rng(0).integers(0, 4096, (300, 300)))
    refused = certseg("certify", tmp_path / "noise.dcm", "--out", tmp_path / "out", "--n0", "1", "--n", "4",
                      "--no-denoiser", "--quiet")
    assert refused.returncode == 1 and "does not look like a frontal chest radiograph" in refused.stderr
    assert not list((tmp_path / "out").rglob("*.dcm"))
    forced = certseg("certify", tmp_path / "noise.dcm", "--out", tmp_path / "out", "--n0", "1", "--n", "4",
                     "--no-denoiser", "--quiet", "--force")
    assert forced.returncode == 0, forced.stderr
    (report,) = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("report.json")]
    verdict = report["out_of_distribution"]
    assert verdict["forced"] and not verdict["in_distribution"] and verdict["refused_by"]
    refusing = [s for s in verdict["signals"] if s["name"] == verdict["refused_by"]]
    assert len(refusing) == 1 and refusing[0]["passed"] is False


def test_force_overrides_the_metadata_gate_and_says_so(tmp_path, small_cr):
    ds = pydicom.dcmread(small_cr)
    ds.BodyPartExamined = "KNEE"
    ds.save_as(tmp_path / "knee.dcm")
    skipped = certseg("certify", tmp_path / "knee.dcm", "--out", tmp_path / "out", "--quiet")
    assert skipped.returncode == 2 and "body part KNEE" in skipped.stderr
    forced = certseg("certify", tmp_path / "knee.dcm", "--out", tmp_path / "out", "--n0", "1", "--n", "4",
                     "--no-denoiser", "--quiet", "--force")
    assert forced.returncode == 0, forced.stderr
    (report,) = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("report.json")]
    assert any("metadata gate overridden by --force: body part KNEE" in note for note in report["source"]["notes"])


def test_a_linear_score_is_its_formula():
    score = LinearScore(np.array([1.0, 2.0]), np.array([2.0, 4.0]), np.array([0.5, -1.0]), 0.25)
    assert score(np.array([[3.0, 6.0]]))[0] == pytest.approx(0.5 * 1 - 1.0 * 1 + 0.25)
