"""`certseg certify` (a DICOM export) and `certseg certify-array` (one image file; the Slicer module's call)."""

from __future__ import annotations

import sys
from pathlib import Path

from certseg.commands.options import (add_certification_options, certification_request, output_folder, positive_int,
                                      run_options)
from certseg.errors import EXIT_OK, CertSegError
from certseg.names import printable


def add_parsers(commands) -> None:
    certify = commands.add_parser("certify", help="certify every chest radiograph in a DICOM export")
    certify.add_argument("input", type=Path, nargs="+", help="DICOM files, folders, DICOMDIRs or zips")
    certify.add_argument("--out", type=output_folder, required=True, help="results in OUT/<study>/<series>/<instance>/")
    certify.add_argument("--study", help="only this StudyInstanceUID")
    certify.add_argument("--series", help="only this SeriesInstanceUID")
    certify.add_argument("--no-zip", action="store_true",
                         help="read zip archives as the files they are, never unpacked (for objects a network peer "
                              "sent, as the Orthanc plugin does)")
    scale = certify.add_argument_group("certifying an archive (pip install \"certseg[scale]\")")
    scale.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local: one image after another in this process (default); ray: a pool of workers on a "
                            "Ray cluster, resumable, with OUT/certseg-outcomes.csv")
    scale.add_argument("--ray-address", help="join this Ray cluster (e.g. ray://head:10001 or auto); default: start "
                                             "a local Ray on this machine")
    scale.add_argument("--workers", type=positive_int,
                       help="Ray workers, each loading the models once (default: one per GPU, else one per CPU)")
    add_certification_options(certify)
    certify.set_defaults(run=run_certify)

    array = commands.add_parser("certify-array", help="certify one image file (.npy, PNG, TIFF, NRRD, NIfTI)")
    array.add_argument("image", type=Path)
    array.add_argument("--out", type=output_folder, required=True, help="result folder (created atomically)")
    array.add_argument("--reference-dicom", type=Path,
                       help="the DICOM file IMAGE was loaded from: pixel values, photometry and spacing come from "
                            "it, geometry from IMAGE, and a DICOM SEG is written too (used by the Slicer module)")
    array.add_argument("--progress-lines", action="store_true",
                       help="machine-readable progress on stdout (for the Slicer module) instead of a bar")
    add_certification_options(array)
    array.set_defaults(run=run_certify_array)


def run_certify(args) -> int:
    request, options = certification_request(args), run_options(args)
    for source in args.input:  # a mistyped path is one line at once, before anything heavy is imported
        if not source.exists():
            raise CertSegError(f"{source}: no such file or folder")
    if args.engine == "ray":
        return _run_on_ray(args, request, options)
    from certseg.runner import certify_selection, discovered, nothing_to_certify

    with discovered(args.input, request, series=args.series, study=args.study,
                    unpack_archives=not args.no_zip) as selection:
        if not selection.radiographs:  # said before the models load
            raise nothing_to_certify(", ".join(map(str, args.input)), selection.others)
        from certseg.pipeline import CertificationPipeline  # torch, MONAI and diffusers: only now

        code, outcomes = certify_selection(selection, args.out, CertificationPipeline.from_folder(options), request,
                                           overwrite=args.overwrite, quiet=args.quiet)
    _print_outcomes([(o.path, o.status, o.message) for o in outcomes])
    return code


def _run_on_ray(args, request, options) -> int:
    from certseg.scale.engine import certify_on_ray
    from certseg.scale.pool import ClusterSettings
    from certseg.scale.table import TABLE_FILE

    cluster = ClusterSettings(address=args.ray_address, workers=args.workers)
    code, rows = certify_on_ray(args.input, args.out, request, options, cluster, overwrite=args.overwrite,
                                quiet=args.quiet, series=args.series, study=args.study)
    _print_outcomes([(row.file, row.status, row.reason) for row in rows])
    print(f"certseg: outcome table {args.out / TABLE_FILE}")
    return code


def _print_outcomes(outcomes) -> None:
    from certseg.status import Status

    for path, status, message in outcomes:
        print(printable(f"{path}: {status}: {message}"), file=sys.stderr if status == Status.FAILED else sys.stdout)
    counts = {s: sum(status == s for _, status, _ in outcomes) for s in Status}
    print("certseg: " + ", ".join(f"{v} {k}" for k, v in counts.items()))


def run_certify_array(args) -> int:
    from certseg.runner import certify_image_file_input, read_image_file_input

    request, options = certification_request(args), run_options(args)
    given = read_image_file_input(args.image, args.out, request, reference_dicom=args.reference_dicom,
                                  overwrite=args.overwrite)  # every refusal of the inputs before torch loads
    from certseg.pipeline import CertificationPipeline

    pipeline = CertificationPipeline.from_folder(options)
    line = certify_image_file_input(given, args.out, pipeline, request, overwrite=args.overwrite, quiet=args.quiet,
                                    progress_protocol=args.progress_lines)
    print(printable(f"{args.image}: {line}"), flush=True)
    return EXIT_OK
