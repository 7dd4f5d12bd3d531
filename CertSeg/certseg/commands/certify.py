"""`certseg certify` (a DICOM export) and `certseg certify-array` (one image file; the Slicer module's call)."""

from __future__ import annotations

import sys
from pathlib import Path

from certseg.commands.options import add_certification_options, certification_request, run_options
from certseg.errors import EXIT_OK


def add_parsers(commands) -> None:
    certify = commands.add_parser("certify", help="certify every chest radiograph in a DICOM export")
    certify.add_argument("input", type=Path, help="DICOM file, folder, DICOMDIR or zip")
    certify.add_argument("--out", type=Path, required=True, help="results in OUT/<study>/<series>/<instance>/")
    certify.add_argument("--study", help="only this StudyInstanceUID")
    certify.add_argument("--series", help="only this SeriesInstanceUID")
    add_certification_options(certify)
    certify.set_defaults(run=run_certify)

    array = commands.add_parser("certify-array", help="certify one image file (.npy, PNG, TIFF, NRRD, NIfTI)")
    array.add_argument("image", type=Path)
    array.add_argument("--out", type=Path, required=True, help="result folder (created atomically)")
    array.add_argument("--reference-dicom", type=Path,
                       help="the DICOM file IMAGE was loaded from: pixel values, photometry and spacing come from "
                            "it, geometry from IMAGE, and a DICOM SEG is written too (used by the Slicer module)")
    array.add_argument("--progress-lines", action="store_true",
                       help="machine-readable progress on stdout (for the Slicer module) instead of a bar")
    add_certification_options(array)
    array.set_defaults(run=run_certify_array)


def run_certify(args) -> int:
    from certseg.pipeline import CertificationPipeline
    from certseg.runner import Status, certify_input

    request, options = certification_request(args), run_options(args)
    pipeline = CertificationPipeline.from_folder(options)
    code, outcomes = certify_input(args.input, args.out, pipeline, request, overwrite=args.overwrite,
                                   quiet=args.quiet, series=args.series, study=args.study)
    for outcome in outcomes:
        stream = sys.stderr if outcome.status == Status.FAILED else sys.stdout
        print(f"{outcome.path}: {outcome.status}: {outcome.message}", file=stream)
    counts = {s: sum(o.status == s for o in outcomes) for s in Status}
    print("certseg: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return code


def run_certify_array(args) -> int:
    from certseg.pipeline import CertificationPipeline
    from certseg.runner import certify_image_file

    request, options = certification_request(args), run_options(args)
    pipeline = CertificationPipeline.from_folder(options)
    line = certify_image_file(args.image, args.out, pipeline, request, reference_dicom=args.reference_dicom,
                              overwrite=args.overwrite, quiet=args.quiet, progress_protocol=args.progress_lines)
    print(f"{args.image}: {line}", flush=True)
    return EXIT_OK
