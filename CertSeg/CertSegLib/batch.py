"""Radiographs certified one after another: a study's radiographs, or the series the DICOM plugin was asked to certify.

No Slicer here: an item's `node` is whatever the caller certifies (a volume node in Slicer).  One image's
refusal or failure never stops the batch, as in the command line's folder runs; Cancel drops what is left.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any


class ItemStatus(Enum):
    PENDING = "waiting"
    RUNNING = "certifying"
    CERTIFIED = "certified"
    REFUSED = "refused"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = (ItemStatus.PENDING, ItemStatus.RUNNING)


@dataclass
class BatchItem:
    node: Any
    name: str
    status: ItemStatus = ItemStatus.PENDING
    detail: str = ""

    def line(self) -> str:
        return f"{self.name}: {self.status.value}" + (f" - {self.detail}" if self.detail else "")


class BatchQueue:
    def __init__(self):
        self.items: list[BatchItem] = []

    def add(self, node: Any, name: str) -> bool:
        """Queue `node` unless it is already waiting or being certified; True when queued."""
        if any(item.node is node and item.status in ACTIVE for item in self.items):
            return False
        self.items.append(BatchItem(node, name))
        return True

    @property
    def current(self) -> BatchItem | None:
        return next((item for item in self.items if item.status == ItemStatus.RUNNING), None)

    def start_next(self) -> BatchItem | None:
        """The next waiting item, now marked running (None: nothing waits, or one is still running)."""
        if self.current is not None:
            return None
        item = next((item for item in self.items if item.status == ItemStatus.PENDING), None)
        if item is not None:
            item.status = ItemStatus.RUNNING
        return item

    def finish(self, status: ItemStatus, detail: str = "") -> None:
        item = self.current
        if item is None:
            raise RuntimeError("no radiograph is being certified")
        item.status, item.detail = status, detail

    def cancel(self) -> None:
        """The running item and every waiting one are cancelled; finished ones keep their outcome."""
        for item in self.items:
            if item.status in ACTIVE:
                item.status = ItemStatus.CANCELLED

    @property
    def done(self) -> bool:
        return all(item.status not in ACTIVE for item in self.items)

    def summary(self) -> str:
        """One line per radiograph, then the counts."""
        counts = {status: sum(item.status == status for item in self.items) for status in ItemStatus}
        total = ", ".join(f"{count} {status.value}" for status, count in counts.items() if count)
        return "\n".join([item.line() for item in self.items] + [f"{len(self.items)} radiographs: {total}"])

    def clear_finished(self) -> None:
        """Forget finished items once a new batch starts after the last one ended."""
        if self.done:
            self.items = []


def kept_result_folder(root: Path, volume_name: str, when: datetime) -> Path:
    """A new folder under `root` for one run's result files: the volume's name and the time, never an existing one."""
    stem = re.sub(r"[^\w.-]+", "_", volume_name).strip("._") or "radiograph"
    base = f"{stem[:60]}-{when:%Y%m%d-%H%M%S}"
    candidate, number = root / base, 2
    while candidate.exists():
        candidate, number = root / f"{base}-{number}", number + 1
    return candidate
