"""Certifying an archive on a Ray cluster (`certseg certify --engine ray`): discovery, a pool of workers that load the models once, resumable."""
