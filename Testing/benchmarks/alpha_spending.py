"""What splitting alpha by sample count (instead of equally) recovers in sequential certification.

    python Testing/benchmarks/alpha_spending.py [--n 1000] [--trials 3]

The analytic threshold model f_i(x) = [x_i > 0.5] on a 256 x 256 ramp image whose true vote
probabilities run from 0.5 to 1; doubling looks; the same noise for both splits.  Prints the share
of pixels certified and the estimation samples drawn per image (early stopping on), per split.
"""

import argparse
from unittest import mock

import numpy as np
import torch

from certseg.core import smoothing
from certseg.core.smoothing import certify_segmentation
from certseg.request import CertificationRequest


def threshold_model(batch: torch.Tensor) -> torch.Tensor:
    return (batch[:, 0] > 0.5).long()


def equal_split(alpha, looks):
    return np.full(len(looks), alpha / len(looks))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    sigma = 0.25
    image = 0.5 + sigma * np.linspace(0.0, 3.0, 256 * 256).reshape(256, 256)  # p from 0.5 to 0.9987
    rows = []
    for name, patch in (("equal (1/K each)", mock.patch.object(smoothing, "_look_alphas", equal_split)),
                        ("by sample count", mock.patch.object(smoothing, "_look_alphas", smoothing._look_alphas))):
        with patch:
            certified, drawn = [], []
            for trial in range(args.trials):
                request = CertificationRequest(sigma=sigma, n0=10, n=args.n, alpha=0.001, tau=0.75, looks="doubling",
                                               stop_tolerance=0.002)
                cert = certify_segmentation(threshold_model, image, request, num_classes=2, batch_size=256, noise_seed=trial,
                                            device="cpu")
                certified.append(cert.decided.mean())
                drawn.append(cert.estimation_samples)
            looks = cert.parameters.looks
        rows.append(f"| {name} | {list(looks)} | {np.mean(certified):.4%} | {np.mean(drawn):.0f} |")
    print("| alpha split | looks | pixels certified | estimation samples / image |")
    print("|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
