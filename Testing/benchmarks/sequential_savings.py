"""Samples per image against certified Dice: fixed-n SegCertify versus sequential certification.

    python Testing/benchmarks/sequential_savings.py --data DRR_EVAL --limit 20 --sigma 0.5 [--denoiser]

Runs `certseg evaluate`'s protocol (shipped models, n0 10, alpha 0.001, tau 0.75, Holm) once per
design on the same views and seeds, and prints one Markdown row per design as soon as it is done:
fixed n in --fixed, then sequential certification up to --max-n with doubling looks at each
--tolerance.  Samples saved at equal certified Dice are read off the table.
"""

import argparse
import dataclasses
from pathlib import Path

from certseg.core.devices import resolve_device
from certseg.model.execution import Execution
from certseg.model.folder import load_models
from certseg.request import DOUBLING, CertificationRequest
from certseg.research.data import load_drr_dataset
from certseg.research.evaluation.protocol import Configuration, evaluate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True, help="held-out DRR views")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--denoiser", action="store_true")
    parser.add_argument("--fixed", type=int, nargs="+", default=[100, 250, 500, 1000])
    parser.add_argument("--max-n", type=int, default=1000)
    parser.add_argument("--tolerance", type=float, nargs="+", default=[0.01, 0.002, 0.0005])
    args = parser.parse_args()

    samples = load_drr_dataset(args.data)[: args.limit]
    models = load_models(with_denoiser=args.denoiser)
    configuration = Configuration.WITH_DENOISER if args.denoiser else Configuration.SEGMENTER_ALONE
    fixed_seed = CertificationRequest(sigma=args.sigma, run_seed=0)  # n0 10, alpha 0.001, tau 0.75, Holm
    designs = [(f"fixed n={n}", dict(n=n)) for n in args.fixed]
    designs += [(f"sequential n<={args.max_n} tol={t:g}", dict(n=args.max_n, looks=DOUBLING, stop_tolerance=t))
                for t in args.tolerance]
    execution = Execution.default_for(resolve_device("auto"))
    print(f"{len(samples)} views of {args.data}, {configuration}, sigma {args.sigma}, n0 10, alpha 0.001, "
          f"tau 0.75, Holm, {execution}", flush=True)
    header = None
    for name, design in designs:
        request = dataclasses.replace(fixed_seed, **design)
        rows = [r for r in evaluate(samples, models, [request], [configuration], progress=False).rows
                if r.sigma is not None]
        if header is None:
            header = [r.structure for r in rows]
            print("| design | samples / image | " + " | ".join(header) + " | abstained | s / image |")
            print("|---" * (len(header) + 4) + "|")
        dice = " | ".join(f"{r.certified_dice:.3f}" for r in rows)
        print(f"| {name} | {rows[0].samples_per_image:.0f} | {dice} | {rows[0].abstention:.1%} | "
              f"{rows[0].seconds_per_image:.1f} |", flush=True)


if __name__ == "__main__":
    main()
