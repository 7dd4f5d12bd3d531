"""External tools the tests run (DCMTK, dicom3tools), installed by Testing/setup-and-test.sh."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def require_tool(name: str) -> str:
    """The system's tool of that name, never the Python environment's: pynetdicom installs its own storescu,
    echoscu, ... there, with other options, and an activated environment puts them first on PATH."""
    environment_bin = Path(sys.prefix, "bin").resolve()
    search = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and Path(d).resolve() != environment_bin]
    path = shutil.which(name, path=os.pathsep.join(search))
    if path is None:
        pytest.fail(f"{name} is not installed: Testing/setup-and-test.sh installs dcmtk and dicom3tools")
    return path


def run_tool(*args) -> None:
    require_tool(str(args[0]))
    subprocess.run([str(a) for a in args], check=True, capture_output=True)
