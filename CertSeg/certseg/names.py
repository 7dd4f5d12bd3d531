"""Names that come from a file or a network peer: the one rule before any of them becomes part of a path.

A DICOM file or a C-STORE says what its Study, Series and SOP Instance UIDs are; `certify`, `pacs`, the
listener and the Orthanc plugin name result folders after them.  A UID is accepted only as PS3.5 9.1
defines it (digits and dots, components without leading zeros, at most 64 characters), and the folder it
names is checked, resolved, to lie under the root it was meant for.  Either check alone would do for a
UID; both together also hold for any other name a caller joins.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from certseg.errors import CertSegError

MAX_UID_LENGTH = 64  # PS3.5 9.1
UID_COMPONENT = re.compile(r"0|[1-9][0-9]*")


def uid_problem(value: object) -> str | None:
    """Why `value` is not a DICOM UID (PS3.5 9.1), or None when it is one."""
    text = str(value)
    if not text:
        return "empty"
    if len(text) > MAX_UID_LENGTH:
        return f"{len(text)} characters (at most {MAX_UID_LENGTH})"
    if not set(text) <= set("0123456789."):
        return "characters other than digits and dots"
    if not all(UID_COMPONENT.fullmatch(component) for component in text.split(".")):
        return "an empty component or one with a leading zero"
    return None


def printable(text: object) -> str:
    """`text` with every character that could move a terminal's cursor, start a new log line or reorder what is
    shown (control characters such as CR, LF and ESC, line and paragraph separators, bidirectional overrides)
    written as an escape (\\x1b, \\u202e): a file's or a peer's value can never forge a line of CertSeg's."""
    return "".join(_escaped(c) if unicodedata.category(c) in UNPRINTABLE_CATEGORIES else c for c in str(text))


UNPRINTABLE_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}


def _escaped(character: str) -> str:
    code = ord(character)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def shown(value: object, limit: int = 80) -> str:
    """A peer's value as a log line may carry it: repr (no control characters), cut to `limit`."""
    text = repr(str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def checked_uid(value: object, keyword: str) -> str:
    """`value` if it is a DICOM UID, else CertSegError naming the attribute and why."""
    problem = uid_problem(value)
    if problem:
        raise CertSegError(f"{keyword} {shown(value)} is not a DICOM UID ({problem})")
    return str(value)


def contained_path(root: Path, *parts: str) -> Path:
    """root / parts, refused (CertSegError) unless it resolves to a folder strictly inside `root`."""
    root = Path(root)
    target = root.joinpath(*parts)
    resolved_root = root.resolve()
    resolved = target.resolve()
    if resolved == resolved_root or not resolved.is_relative_to(resolved_root):
        raise CertSegError(f"{'/'.join(shown(p, 40) for p in parts)} would lie outside {root}")
    return target


UID_PATH_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def result_folder(root: Path, uids: tuple[str, str, str]) -> Path:
    """root/<study>/<series>/<instance>: every UID checked, and the folder inside `root`."""
    checked = [checked_uid(value, keyword) for value, keyword in zip(uids, UID_PATH_KEYWORDS, strict=True)]
    return contained_path(root, *checked)
