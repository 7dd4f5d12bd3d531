"""External tools the tests run (DCMTK, dicom3tools), installed by Testing/setup-and-test.sh."""

import shutil
import subprocess

import pytest


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: Testing/setup-and-test.sh installs dcmtk and dicom3tools")
    return path


def run_tool(*args) -> None:
    require_tool(str(args[0]))
    subprocess.run([str(a) for a in args], check=True, capture_output=True)
