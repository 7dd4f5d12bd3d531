"""Rejection rates of the spectral OOD detector against the entropy baseline, on the same images.

    python Testing/benchmarks/ood_rates.py --models MODELS --held-out DRR_EVAL --in-domain DRR_TEST [--count 20]

The detector's threshold comes from the model card (set on --held-out at its stated false-rejection
rate); the baseline's threshold is set the same way on the same held-out views.  --in-domain must be
views used neither for training nor for the threshold.  Prints a Markdown table.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1]))

from certseg import load_models  # noqa: E402
from certseg.data import load_drr_dataset, to_model_space  # noqa: E402
from certseg.ood import mean_entropy  # noqa: E402
from certseg.preprocess import DEFAULT_PERCENTILES  # noqa: E402
from ood_corpus import OUT_OF_DOMAIN, inverted  # noqa: E402


def images(folder: Path) -> np.ndarray:
    return np.stack([to_model_space(s, 256, DEFAULT_PERCENTILES)[0] for s in load_drr_dataset(folder)])


def auroc(in_scores, out_scores) -> float:
    """P(out score > in score), ties half: the Mann-Whitney form of the ROC area."""
    greater = (np.asarray(out_scores)[:, None] > np.asarray(in_scores)[None]).mean()
    ties = (np.asarray(out_scores)[:, None] == np.asarray(in_scores)[None]).mean()
    return float(greater + ties / 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--held-out", type=Path, required=True)
    parser.add_argument("--in-domain", type=Path, required=True)
    parser.add_argument("--count", type=int, default=20)
    args = parser.parse_args()
    models = load_models(args.models, with_denoiser=False)
    detector, network = models.ood_detector, models.network
    held_out, in_domain = images(args.held_out), images(args.in_domain)
    entropy_threshold = np.quantile(mean_entropy(network, held_out), 1 - detector.false_rejection_rate)
    rng = np.random.default_rng(123)
    sets = {"in-domain DRR views (test)": in_domain, "inverted radiographs": np.stack([inverted(x) for x in in_domain])}
    sets.update({name: np.stack([build(rng) for _ in range(args.count)]) for name, build in OUT_OF_DOMAIN.items()})
    spectral_in, entropy_in = detector.score(network, in_domain), mean_entropy(network, in_domain)
    print(f"| images | n | spectral: rejected | spectral AUROC | entropy: rejected | entropy AUROC |")
    print("|---|---|---|---|---|---|")
    for name, batch in sets.items():
        spectral, entropy = detector.score(network, batch), mean_entropy(network, batch)
        rows = (f"| {name} | {len(batch)} | {np.mean(spectral > detector.threshold):.0%} | "
                f"{'-' if name.startswith('in-domain') else f'{auroc(spectral_in, spectral):.3f}'} | "
                f"{np.mean(entropy > entropy_threshold):.0%} | "
                f"{'-' if name.startswith('in-domain') else f'{auroc(entropy_in, entropy):.3f}'} |")
        print(rows)


if __name__ == "__main__":
    main()
