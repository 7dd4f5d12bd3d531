"""Certified Dice and abstention of the two routes for overlapping structures, on the same samples.

    python Testing/benchmarks/overlap_routes.py --models MODELS --data DATASET --split validation \
        [--sigma 0.25] [--n0 10] [--n 100] [--count 26] [--seed 0]

Route (i): one test per pixel of the class (the set of structures present); route (ii): one
binary test per structure and pixel, Holm over all of them (certseg.research.overlap_routes).
Abstained pixels count as errors; masks are whole (a lung under its clavicle is lung).  Choose on
the validation split; the test split only reports.  Prints a Markdown table.
"""

import argparse
from pathlib import Path

import numpy as np
from tqdm import tqdm

from certseg.core.parameters import image_noise_seed
from certseg.dicom.codes import CLASS_TABLE
from certseg.model.folder import load_models
from certseg.model.segmenter import CertifiedSegmenter
from certseg.request import CertificationRequest
from certseg.research.data import load_dataset, to_model_space
from certseg.research.overlap_routes import certify_both_routes, route_figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="validation", choices=("validation", "test"))
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--n0", type=int, default=10)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--count", type=int, help="the first COUNT images of the split (by name)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    models = load_models(args.models, with_denoiser=False)
    segmenter = CertifiedSegmenter(models.network, models.num_classes, None, "cpu", laterality=models.laterality)
    samples = sorted(load_dataset(args.data, (args.split,)), key=lambda s: s.name)[:args.count]
    request = CertificationRequest(sigma=args.sigma, n0=args.n0, n=args.n)
    figures = []
    for sample in tqdm(samples, desc="certifying both ways"):
        image, truth = to_model_space(sample, models.segmenter_card.input.size, models.segmenter_card.input.percentiles)
        both = certify_both_routes(segmenter, models.class_table, image, request,
                                   image_noise_seed(args.seed, sample.name))
        figures.append(route_figures(both, truth, models.class_table, CLASS_TABLE))
    names = {label.value: label.name for label in models.segmenter_card.structures}
    print(f"{len(samples)} images of {args.data.name} ({args.split}), sigma {args.sigma}, n0 {args.n0}, n {args.n}\n")
    print("| structure | route (i) certified Dice | route (ii) certified Dice | route (ii) abstained |")
    print("|---|---|---|---|")
    for index, value in enumerate(models.class_table.structures):
        print(f"| {names[value]} | {np.mean([f.per_pixel_dice[index] for f in figures]):.4f} | "
              f"{np.mean([f.per_structure_dice[index] for f in figures]):.4f} | "
              f"{np.mean([f.per_structure_abstained[index] for f in figures]):.2%} |")
    print(f"\nabstained pixels: route (i) {np.mean([f.per_pixel_abstained for f in figures]):.2%}; "
          f"route (ii), for at least one structure, {np.mean([f.any_structure_abstained for f in figures]):.2%}")


if __name__ == "__main__":
    main()
