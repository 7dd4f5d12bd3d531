"""Reload and Test must pick up edits of CertSegLib and of the backend, not only of CertSeg.py.

Slicer's reloadScriptedModule re-executes the module's own file; the packages it imports stay in
sys.modules as they were.  Forgetting them first makes the re-executed file import them afresh.
"""

from __future__ import annotations

import sys

OWN_PACKAGES = ("CertSegLib", "certseg")


def forget_own_modules(modules: dict | None = None) -> list[str]:
    """Remove CertSegLib and certseg (and their submodules) from `modules` (sys.modules); returns their names."""
    modules = sys.modules if modules is None else modules
    names = [name for name in modules if any(name == p or name.startswith(p + ".") for p in OWN_PACKAGES)]
    for name in names:
        del modules[name]
    return names
