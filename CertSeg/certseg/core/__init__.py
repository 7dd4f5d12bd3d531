"""The certification maths: no file or network I/O, no DICOM (imports only certseg.request, progress, errors)."""
