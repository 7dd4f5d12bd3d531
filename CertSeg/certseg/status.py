"""What became of one input: the outcome every entry point reports (command line, PACS, listener, Ray).

In the foundation so that `pacs` and `scale` compare outcomes by this enum, never by their spelling.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    CERTIFIED = "certified"
    KEPT = "kept"  # the result exists and was not asked to be replaced
    SKIPPED = "skipped"  # not ours (not a chest radiograph, not the selected series)
    FAILED = "failed"
