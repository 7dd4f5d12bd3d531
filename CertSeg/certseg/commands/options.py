"""The options every certifying command shares, parsed into a CertificationRequest and RunOptions.

Defaults come from certseg.request; nothing here restates one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from certseg.files import output_folder_problem
from certseg.model.cards import model_folder
from certseg.request import (
    COMPILE_MODES,
    DEVICES,
    DOUBLING,
    PRECISION_CHOICES,
    CertificationRequest,
    Correction,
    RunOptions,
)

DEFAULT_REQUEST, DEFAULT_OPTIONS = CertificationRequest(), RunOptions()


def output_folder(text: str) -> Path:
    """An --out or --spool folder: refused at once when it, or the part of it that exists, is a file or
    cannot be written."""
    path = Path(text)
    problem = output_folder_problem(path)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return path


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_certification_options(parser: argparse.ArgumentParser, *, sigmas: bool = False) -> None:
    if sigmas:
        parser.add_argument("--sigma", type=float, nargs="+", default=[0.25, 0.5, 1.0], help="noise levels")
    else:
        parser.add_argument("--sigma", type=float, default=DEFAULT_REQUEST.sigma,
                            help="noise level on [0, 1] model inputs")
    parser.add_argument("--n0", type=int, default=DEFAULT_REQUEST.n0, help="selection samples")
    parser.add_argument("--n", type=int, default=DEFAULT_REQUEST.n, help="estimation samples")
    parser.add_argument("--alpha", type=float, default=DEFAULT_REQUEST.alpha, help="family-wise error level")
    parser.add_argument("--tau", type=float, default=DEFAULT_REQUEST.tau, help="per-pixel probability threshold")
    parser.add_argument("--correction", default=DEFAULT_REQUEST.correction, choices=list(map(str, Correction)),
                        help="multiple-testing correction over the pixels")
    parser.add_argument("--sequential", action="store_true",
                        help="test after n/8, n/4, n/2, n ... samples (alpha split between the looks) and stop "
                             "once more samples would certify little more")
    parser.add_argument("--looks", type=positive_int, nargs="+",
                        help="explicit cumulative sample counts to test at, the last one --n (implies --sequential)")
    parser.add_argument("--stop-tolerance", type=float, default=DEFAULT_REQUEST.stop_tolerance,
                        help="sequential: stop when the expected further gain is below this fraction of "
                             "every structure's pixels")
    parser.add_argument("--seed", type=int,
                        help="reproduce a run (its report's noise.run_seed). Default: fresh OS entropy per image, "
                             "which the guarantee needs: a seed known before the image is fixed voids it")
    parser.add_argument("--force", action="store_true",
                        help="certify images the metadata gate or the out-of-distribution detector refuses "
                             "(recorded in the report)")
    add_run_options(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing result")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=positive_int,
                        help="noisy copies per forward pass (default: 2 on CPU, fitted to free memory on CUDA; results "
                             "do not depend on it)")
    parser.add_argument("--device", default=DEFAULT_OPTIONS.device, choices=DEVICES,
                        help="where the networks run (auto: CUDA when present, else MPS where it works, else CPU)")
    parser.add_argument("--precision", default=DEFAULT_OPTIONS.precision, choices=PRECISION_CHOICES,
                        help="network arithmetic (auto: bf16 in channels-last on CUDA and on CPUs with native bf16, "
                             "else fp32); recorded in the report")
    parser.add_argument("--compile", default=DEFAULT_OPTIONS.compile, choices=COMPILE_MODES,
                        help="torch.compile mode (reduce-overhead: CUDA graphs); pays off over many images")
    parser.add_argument("--no-denoiser", action="store_true", help="plain smoothing of the segmenter")
    parser.add_argument("--model-dir", type=Path, help="a model folder (default: the shipped models)")


def certification_request(args, sigma: float | None = None) -> CertificationRequest:
    """The request the options ask for, checked before any file is read (ParameterError: one line)."""
    return CertificationRequest(  # validated as it is built
        sigma=args.sigma if sigma is None else sigma, n0=args.n0, n=args.n, alpha=args.alpha, tau=args.tau,
        correction=Correction(args.correction), looks=tuple(args.looks or ()) or (DOUBLING if args.sequential else ()),
        stop_tolerance=args.stop_tolerance, run_seed=args.seed, force=args.force)


def run_options(args, *, needs_models: bool = True) -> RunOptions:
    """The models and execution the options ask for; a missing GPU or model folder is a bad parameter, not one
    failure per image, and is told before torch is imported."""
    options = RunOptions(model_dir=getattr(args, "model_dir", None),
                         use_denoiser=not getattr(args, "no_denoiser", False), device=args.device,
                         batch_size=args.batch_size, precision=args.precision, compile=args.compile)
    if needs_models:
        model_folder(options.model_dir, with_denoiser=options.use_denoiser)
    if options.device not in ("auto", "cpu"):  # asking torch for a GPU costs its import: only when one is named
        from certseg.core.devices import resolve_device

        resolve_device(options.device)
    return options
