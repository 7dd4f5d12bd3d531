"""Throughput of `certseg certify --engine ray` with 1 and 2 workers against one-process `certify`, same images.

    python Testing/benchmarks/ray_throughput.py [--images 20] [--sample] [--denoiser]

Writes N chest CRs (small synthetic 240 x 200 ones, certified with --force; with --sample, copies of the shipped
2048 x 2048 JPEG 2000 sample), then times each configuration as a whole process (Ray start, model loading and
all images included) and prints seconds in all, images per second, and the overhead per image against one
process.  Not a test: the figures go into docs/pacs-administrator.md and the release notes, with the machine.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom

sys.path.insert(0, str(Path(__file__).parents[1]))  # Testing/, for support/
from support.dicom_files import SAMPLE_CR, write_cr_with_spacing  # noqa: E402


def images(folder: Path, count: int, sample: bool) -> None:
    folder.mkdir()
    for index in range(count):
        if sample:
            dataset = pydicom.dcmread(SAMPLE_CR)
            dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
            dataset.save_as(folder / f"cr{index:03d}.dcm", enforce_file_format=True)
        else:
            write_cr_with_spacing(folder / f"cr{index:03d}.dcm", "calibrated", seed=index)


def timed(args: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "certseg", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--sample", action="store_true", help="copies of the shipped sample instead of small CRs")
    parser.add_argument("--denoiser", action="store_true", help="with the diffusion denoiser (default: without)")
    args = parser.parse_args()
    options = ["--n0", "10", "--n", "100", "--quiet", "--force"] + ([] if args.denoiser else ["--no-denoiser"])
    with tempfile.TemporaryDirectory() as folder:
        export = Path(folder) / "export"
        images(export, args.images, args.sample)
        runs = {"one process (certify)": ["certify", str(export), "--out", f"{folder}/a", *options],
                "ray, 1 worker": ["certify", str(export), "--out", f"{folder}/b", "--engine", "ray", "--workers", "1",
                                  *options],
                "ray, 2 workers": ["certify", str(export), "--out", f"{folder}/c", "--engine", "ray", "--workers", "2",
                                   *options]}
        seconds = {name: timed(command) for name, command in runs.items()}
    base = seconds["one process (certify)"]
    kind = "sample 2048 x 2048 JPEG 2000" if args.sample else "synthetic 240 x 200"
    print(f"{args.images} images ({kind}), n0 10, n 100, denoiser {'on' if args.denoiser else 'off'}")
    print("| configuration | s in all | images/s | overhead per image vs one process |")
    print("|---|---|---|---|")
    for name, value in seconds.items():
        print(f"| {name} | {value:.1f} | {args.images / value:.2f} | {(value - base) / args.images:+.2f} s |")


if __name__ == "__main__":
    main()
