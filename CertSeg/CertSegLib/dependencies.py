"""What the Slicer module installs, and what it must never replace.

Design (the choice the module makes): Slicer 5.12 or later, which ships pydicom 3 and highdicom
(5.10 ships pydicom 2.4.4, which the backend cannot use), and slicer.packaging.pip_ensure with a
constraints file that pins every package Slicer or the PyTorch extension ships to the version
installed.  pip then refuses, rather than performs, any change to them: monai can never pull a
torch from PyPI over the PyTorch extension's, nor anything replace Slicer's numpy or pydicom.
A private environment would also isolate them, but would duplicate torch (GBs) beside Slicer's.
"""

from __future__ import annotations

from collections.abc import Callable

MINIMUM_SLICER = (5, 12)
# Shipped by Slicer (numpy, scipy, SimpleITK, pydicom, highdicom, pillow, requests, packaging) or by the
# PyTorch extension (torch): pinned, never upgraded or downgraded by CertSeg.
PROTECTED_PACKAGES = ("torch", "numpy", "scipy", "SimpleITK", "pydicom", "highdicom", "pillow", "requests",
                      "packaging")


def protected_constraints(installed_version: Callable[[str], str | None]) -> str:
    """A pip constraints file pinning each protected package that is installed to its installed version."""
    lines = []
    for name in PROTECTED_PACKAGES:
        version = installed_version(name)
        if version:
            lines.append(f"{name}=={version}")
    return "\n".join(lines) + "\n"


def installed_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None
