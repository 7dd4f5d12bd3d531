"""Zip archives a user gave to `certify`, unpacked under limits; nothing received from a peer is ever unpacked.

A zip bomb turns a megabyte into terabytes (one member at a ratio of 1,000:1, or zips nested in zips), and a
valid DICOM file can also be a valid zip (a zip's directory sits at its end, where a DICOM file's last element
may hold any bytes).  So: a file with the DICOM preamble is DICOM, never an archive; archives are opened only
where the caller asks (a path a user named); and each archive is unpacked member by member, counting the bytes
actually written, under limits on their total, on the number of members, on the nesting depth and on each
member's inflation ratio.  Every refusal is one line (CertSegError) naming the archive and the limit.
"""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from certseg.errors import CertSegError
from certseg.names import shown

COPY_CHUNK = 2**20
DICOM_MAGIC_OFFSET, DICOM_MAGIC = 128, b"DICM"


@dataclass(frozen=True)
class ArchiveLimits:
    max_total_bytes: int = 16 * 2**30  # all archives of one input together, as unpacked
    max_members: int = 100_000
    max_depth: int = 3  # a zip in a zip in a zip
    max_ratio: float = 200.0  # bytes unpacked per byte stored, for members over RATIO_FLOOR_BYTES
    ratio_floor_bytes: int = 2**20  # tiny members may compress further (headers, text)


@dataclass
class UnpackBudget:
    """What the archives of one input have used so far (shared across nested archives)."""

    limits: ArchiveLimits = field(default_factory=ArchiveLimits)
    written: int = 0
    members: int = 0


def has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as stream:
            stream.seek(DICOM_MAGIC_OFFSET)
            return stream.read(4) == DICOM_MAGIC
    except OSError:
        return False


def is_archive(path: Path) -> bool:
    """A zip archive that is not a DICOM file (a DICOM file whose last bytes look like a zip stays DICOM)."""
    return not has_dicom_preamble(path) and zipfile.is_zipfile(path)


def unpack(path: Path, target: Path, budget: UnpackBudget, depth: int, shown_as: str | None = None) -> None:
    """Unpack the archive `path` into `target` (a new folder) within the budget; CertSegError names what was
    refused, and the archive as `shown_as` (the user's name for it, when it was itself unpacked)."""
    limits, archive = budget.limits, shown_as or str(path)
    if depth > limits.max_depth:
        raise CertSegError(f"{archive}: zip nested deeper than {limits.max_depth} archives: refused")
    try:
        with zipfile.ZipFile(path) as opened:
            members = [m for m in opened.infolist() if not m.is_dir()]
            budget.members += len(members)
            if budget.members > limits.max_members:
                raise CertSegError(f"{archive}: more than {limits.max_members} files in its archives: refused")
            for member in members:
                _unpack_member(archive, opened, member, _destination(archive, target, member.filename), budget)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, OSError, EOFError) as error:
        raise CertSegError(f"{archive}: unreadable zip archive ({shown(error, 200)})") from None


def _destination(archive: str, target: Path, name: str) -> Path:
    """Where a member goes: inside `target` (zip slip refused), its name never shown raw."""
    destination = (target / name).resolve()
    if not destination.is_relative_to(target.resolve()) or destination == target.resolve():
        raise CertSegError(f"{archive}: member {shown(name)} points outside the archive")
    return destination


def _unpack_member(archive: str, opened: zipfile.ZipFile, member: zipfile.ZipInfo, destination: Path,
                   budget: UnpackBudget) -> None:
    """Copy one member, counting what is written: the sizes a zip declares are the attacker's to choose."""
    limits = budget.limits
    allowed = max(limits.ratio_floor_bytes, int(member.compress_size * limits.max_ratio))
    destination.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with opened.open(member) as source, open(destination, "wb") as sink:
        while chunk := source.read(COPY_CHUNK):
            written += len(chunk)
            budget.written += len(chunk)
            if written > allowed:
                raise CertSegError(f"{archive}: member {shown(member.filename)} inflates more than "
                                   f"{limits.max_ratio:g} times its stored size: refused (a zip bomb?)")
            if budget.written > limits.max_total_bytes:
                raise CertSegError(f"{archive}: its archives unpack to more than "
                                   f"{limits.max_total_bytes // 2**30} GiB: refused")
            sink.write(chunk)


def remove_quietly(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
