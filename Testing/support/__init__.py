"""Helpers the tests share: real DICOM files written with pydicom, external tools, a real Orthanc, the CLI."""
