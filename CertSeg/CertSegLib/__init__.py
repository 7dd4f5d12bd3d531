"""Slicer-side helpers of the CertSeg module: background backend process, results for the panel.

`process` and `backend_call` import nothing from Slicer so they are tested outside it.
"""
