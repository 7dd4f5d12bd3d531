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
.venv/bin/python -m pytest Testing "$@"
