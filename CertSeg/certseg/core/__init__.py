"""The certification maths: no file or network I/O, no DICOM (its place among the layers: docs/architecture.md)."""
