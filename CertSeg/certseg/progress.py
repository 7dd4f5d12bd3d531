"""Progress reporting: tqdm bars for terminals, and the progress-line protocol the Slicer module reads.

Progress-line protocol (stdout, one line each, flushed):
    CERTSEG_PROGRESS {"done": <samples done>, "total": <samples in all>}
The backend writes it (progress_lines) and the Slicer module parses it (parse_progress_line, from
CertSegLib.process); every other line is log text.  Light on purpose: the Slicer module imports it.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator

Progress = Callable[[int, int], None]
"""Called with (samples done, samples in total) after every batch."""

PROGRESS_PREFIX = "CERTSEG_PROGRESS "


@contextlib.contextmanager
def sample_bar(total: int, *, disable: bool = False, description: str = "samples") -> Iterator[Progress]:
    """A tqdm bar over noise samples, as an engine progress callback."""
    from tqdm import tqdm

    with tqdm(total=total, desc=description, unit="sample", disable=disable, leave=False) as bar:
        def update(done: int, _total: int) -> None:
            bar.update(done - bar.n)

        yield update


@contextlib.contextmanager
def progress_lines(stream=None) -> Iterator[Progress]:
    """Engine progress callback printing the progress-line protocol."""
    out = stream or sys.stdout

    def report(done: int, total: int) -> None:
        out.write(PROGRESS_PREFIX + json.dumps({"done": done, "total": total}) + "\n")
        out.flush()

    yield report


def parse_progress_line(line: str) -> tuple[int, int] | None:
    """(done, total) of a progress line; None for log text, malformed progress lines included."""
    if line.startswith(PROGRESS_PREFIX):
        try:
            data = json.loads(line[len(PROGRESS_PREFIX):])
            return int(data["done"]), int(data["total"])
        except (ValueError, KeyError, TypeError):
            pass
    return None
