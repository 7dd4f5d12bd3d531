"""How long the command line takes to answer what needs no model: help, version, bad input.

    python Testing/benchmarks/cli_startup.py [--repeats 5]

Each case runs the installed `certseg` in a fresh process; prints the median wall time per case as
a Markdown table (the machine is whatever runs it: say which in any figure you quote).
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLE = Path(__file__).parents[2] / "CertSeg" / "Resources" / "SampleData" / "sample_cr.dcm"


def cases(folder: Path) -> dict[str, list[str]]:
    (folder / "x.dcm").write_text("hello")
    out = str(folder / "out")
    return {
        "--version": ["--version"],
        "certify --help": ["certify", "--help"],
        "certify --sigma -1 (bad parameter)": ["certify", str(SAMPLE), "--out", out, "--sigma", "-1"],
        "certify of a missing path": ["certify", str(folder / "missing.dcm"), "--out", out],
        "certify of a text file named .dcm": ["certify", str(folder / "x.dcm"), "--out", out],
        "certify --model-dir of an empty folder": ["certify", str(SAMPLE), "--out", out, "--model-dir", str(folder)],
        "certify --out of a file": ["certify", str(SAMPLE), "--out", str(folder / "x.dcm")],
        "certify-array of a missing image": ["certify-array", str(folder / "missing.png"), "--out", out],
        "listen --port 70000": ["listen", "--port", "70000", "--send-to", "sender", "--spool", out],
        "evaluate --data of a folder without dataset.json": ["evaluate", "--data", str(folder), "--out", out],
    }


def certseg_command() -> str:
    """The `certseg` on PATH, else the one installed beside this Python (a venv that is not activated)."""
    return shutil.which("certseg") or str(Path(sys.executable).with_name("certseg"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    command = certseg_command()
    with tempfile.TemporaryDirectory() as scratch:
        print("| command | median seconds | exit code |\n|---|---|---|")
        for name, argv in cases(Path(scratch)).items():
            times, code = [], None
            for _ in range(args.repeats):
                started = time.perf_counter()
                code = subprocess.run([command, *argv], capture_output=True).returncode
                times.append(time.perf_counter() - started)
            print(f"| `certseg {name}` | {statistics.median(times):.2f} | {code} |")


if __name__ == "__main__":
    main()
