"""Progress reporting: tqdm bars for terminals, one JSON line per step for the Slicer module.

Progress-line protocol (stdout, one line each, flushed):
    CERTSEG_PROGRESS {"done": <samples done>, "total": <samples in all>}
The Slicer module (CertSegLib.process) parses these; every other line is log text.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Iterator

from tqdm import tqdm

from .smoothing import Progress


@contextlib.contextmanager
def sample_bar(total: int, *, disable: bool = False, description: str = "samples") -> Iterator[Progress]:
    """A tqdm bar over noise samples, as an engine progress callback."""
    with tqdm(total=total, desc=description, unit="sample", disable=disable, leave=False) as bar:
        def update(done: int, _total: int) -> None:
            bar.update(done - bar.n)

        yield update


PROGRESS_PREFIX = "CERTSEG_PROGRESS "


@contextlib.contextmanager
def progress_lines(stream=None) -> Iterator[Progress]:
    """Engine progress callback printing the progress-line protocol."""
    out = stream or sys.stdout

    def report(done: int, total: int) -> None:
        out.write(PROGRESS_PREFIX + json.dumps({"done": done, "total": total}) + "\n")
        out.flush()

    yield report
