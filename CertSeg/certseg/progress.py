"""Progress reporting for terminals (tqdm)."""

from __future__ import annotations

import contextlib
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
