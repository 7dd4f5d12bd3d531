"""Execution choices (precision, NHWC, compilation, batch size) on the shipped models and the sample CR.

On this CPU-only machine these run through the same code the GPU path uses; what they must keep
is the base segmenter's labels, within the tolerance measured for reduced precision.
"""

import json

import numpy as np
import pytest
import torch

from certseg.core.input_map import ModelInputMap
from certseg.dicom.reading import read_radiograph
import time

from certseg.model.execution import CPU_BATCH_CANDIDATES, Execution, batch_size_for_memory, fastest_cpu_batch_size
from certseg.model.folder import load_models
from certseg.model.segmenter import CertifiedSegmenter
from certseg.request import CertificationRequest
from support.cli import run_certseg
from support.dicom_files import SAMPLE_CR


@pytest.fixture(scope="module")
def chest_image() -> np.ndarray:
    radiograph = read_radiograph(SAMPLE_CR)
    return ModelInputMap(tuple(radiograph.pixels.shape), 256, radiograph.window)(radiograph.pixels)


def noisy_copies(image: np.ndarray, sigma: float, count: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.as_tensor(image)[None, None] + sigma * torch.randn((count, 1, *image.shape), generator=generator)


def test_fp32_base_is_the_network_on_the_one_step_denoised_image(chest_image):
    models = load_models(with_denoiser=True)
    noisy = noisy_copies(chest_image, 0.5, 2)
    with torch.no_grad():
        expected = models.network(models.denoiser(noisy, 0.5)).argmax(dim=1)
    segmenter = CertifiedSegmenter(models.network, models.num_classes, models.denoiser, "cpu", Execution())
    assert torch.equal(segmenter.base_segmenter(0.5)(noisy), expected)


@pytest.mark.slow
def test_bf16_in_nhwc_changes_few_labels_of_samples_and_certificates(chest_image):
    """Measured on the sample CR: bf16 autocast flips ~0.05% of a noisy sample's pixel labels."""
    models = load_models(with_denoiser=True)
    fp32 = CertifiedSegmenter(models.network, models.num_classes, models.denoiser, "cpu", Execution())
    noisy = noisy_copies(chest_image, 0.25, 4)
    reference = fp32.base_segmenter(0.25)(noisy)
    fast_models = load_models(with_denoiser=True)  # NHWC rewrites the weights' layout in place
    fast = CertifiedSegmenter(fast_models.network, models.num_classes, fast_models.denoiser, "cpu",
                              Execution("bf16", channels_last=True))
    flipped = (fast.base_segmenter(0.25)(noisy) != reference).float().mean().item()
    assert flipped < 0.005

    plain = CertifiedSegmenter(models.network, models.num_classes, None, "cpu", Execution())
    plain_fast = CertifiedSegmenter(fast_models.network, models.num_classes, None, "cpu", Execution("bf16", True))
    request = CertificationRequest(sigma=0.25, n0=10, n=100, alpha=0.001, tau=0.75)
    certificate = plain.certify(chest_image, request, noise_seed=3)
    fast_certificate = plain_fast.certify(chest_image, request, noise_seed=3)
    assert certificate.abstain_fraction < 0.2
    assert np.mean(certificate.labels != fast_certificate.labels) < 0.005


def test_compiled_base_gives_the_eager_labels(chest_image):
    models = load_models(with_denoiser=False)
    noisy = noisy_copies(chest_image[::4, ::4].copy(), 0.25, 2)
    eager = CertifiedSegmenter(models.network, models.num_classes, None, "cpu", Execution())
    compiled = CertifiedSegmenter(models.network, models.num_classes, None, "cpu", Execution(compile="default"))
    assert torch.equal(compiled.base_segmenter(0.25)(noisy), eager.base_segmenter(0.25)(noisy))


@pytest.mark.parametrize("free, per_sample, expected", [
    (80e9, 30e6, 1024),  # capped
    (80e9, 100e6, 512),  # 0.8 * 80e9 / 100e6 = 640 -> 512
    (1e9, 100e6, 8),  # 8 fit exactly
    (1e9, 2e9, 1),  # nothing fits: one at a time
])
def test_batch_size_is_the_largest_power_of_two_that_fits(free, per_sample, expected):
    assert batch_size_for_memory(free, per_sample) == expected


class FixedCostPerPass(torch.nn.Module):
    """A network whose pass costs `per_pass` seconds plus `per_sample` per copy: the shapes CPUs show."""

    def __init__(self, per_pass: float, per_sample: float):
        super().__init__()
        self.per_pass, self.per_sample = per_pass, per_sample

    def forward(self, batch):
        time.sleep(self.per_pass + self.per_sample * len(batch) ** 1.5)
        return batch


@pytest.mark.parametrize("per_pass, per_sample, expected", [
    (0.05, 0.0, 4),  # overhead per pass dominates: the largest candidate wins
    (0.0, 0.02, 1),  # each copy costs more in a larger batch (cache-bound): one at a time wins
])
def test_a_cpu_runs_the_batch_it_measures_fastest_per_sample(per_pass, per_sample, expected):
    assert fastest_cpu_batch_size(FixedCostPerPass(per_pass, per_sample), (8, 8)) == expected


def test_a_cpu_certification_without_a_batch_size_runs_a_measured_one_and_the_report_records_it(tmp_path):
    run = run_certseg("certify", str(SAMPLE_CR), "--out", str(tmp_path / "out"), "--no-denoiser", "--n0", "4",
                      "--n", "8", "--seed", "1", "--device", "cpu")
    assert run.returncode == 0, run.stderr
    report = json.loads(next((tmp_path / "out").rglob("report.json")).read_text())
    assert report["parameters"]["batch_size"] in CPU_BATCH_CANDIDATES


@pytest.mark.parametrize("choice, words", [({"precision": "int8"}, "precision"), ({"compile": "fast"}, "compile")])
def test_unknown_execution_choices_are_refused_when_the_record_is_built(choice, words):
    with pytest.raises(ValueError, match=words):
        Execution(**choice)


def test_bench_reports_speed_reference_and_the_cost_of_bf16():
    run = run_certseg("bench", "--size", "64", "--n0", "2", "--n", "8", "--no-denoiser", "--precision", "bf16",
                      "--reference", "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["execution"]["precision"] == "bf16" and result["execution"]["compile"] == "off"
    assert result["samples_per_second"] > 0 and result["reference_seconds_per_image"] > 0
    assert result["gflops_per_sample"] > 0
    assert 0 <= result["sample_label_flips"] < 0.05 and 0 <= result["certificate_label_changes"] < 0.05
