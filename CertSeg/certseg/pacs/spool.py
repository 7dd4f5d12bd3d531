"""The listener's on-disk queue: what was received, what is being certified, what waits to be sent.

    SPOOL/studies/<key>/study.json   the study's record (StudyRecord), rewritten by rename
    SPOOL/studies/<key>/incoming/    objects received and not yet taken for certification
    SPOOL/studies/<key>/claimed/     objects taken by the certification that is running (or was, before a crash)
    SPOOL/results/<key>/...          certify's result folders (kept: a rerun never certifies an image twice)
    SPOOL/failed/<key>/              chest radiographs that could not be certified, with reasons.json;
                                     counted in the queue's size, capped, pruned after the retention time

`<key>` is a hash of the Study Instance UID and objects are named by a hash of their SOP Instance UID:
nothing a peer sends becomes a path.  An object moves incoming -> claimed -> (deleted | failed/) and only
the certification that claimed it may delete it, so an object received while its study is being certified
or sent waits in incoming/ for a certification of its own; nothing is deleted uncertified.  Every write is
a rename, so a crash leaves whole files, and a restart resumes: claimed objects are certified again (their
results are kept, not recomputed) and pending sends are sent again; staging left by a killed write
(`*.partial`, `.*.old`) is swept.  The worker visits only active studies (`active`); finished ones are pruned
after their retention time by the housekeeping pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

from certseg.files import write_json

REASONS_KEPT = 50  # per study, the latest reasons an object was not certified


class StudyState(StrEnum):
    RECEIVING = "receiving"  # objects wait in incoming/ for the study to be idle
    SENDING = "sending"  # results are pending, (re)tried with backoff
    UNSENT = "unsent"  # the retry window ran out; tried again after a restart, never dropped
    SENT = "sent"  # nothing incoming, nothing pending
    DONE = "done"  # nothing to send: every object was not a chest radiograph, or failed


@dataclass
class StudyRecord:
    study_uid: str
    sender: dict  # aet, address of the peer that sent the latest object
    state: StudyState = StudyState.RECEIVING
    last_received: float = 0.0
    received: int = 0  # objects received, over the study's life
    certified: int = 0  # radiographs certified or found already certified
    pending: list[str] = field(default_factory=list)  # result files to send, relative to the spool
    attempts: int = 0  # failed sends since the last success
    first_failure: float | None = None
    next_send: float = 0.0
    not_certified: list[dict] = field(default_factory=list)  # {"object", "status", "reason"}, latest last
    decoding: str | None = None  # the claimed object being decoded; still set at a restart: it killed the node
    decode_deaths: dict[str, int] = field(default_factory=dict)  # object -> restarts that found it being decoded

    @classmethod
    def from_json(cls, data: dict) -> StudyRecord:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        record = cls(**known)
        record.state = StudyState(record.state)
        return record

    def note_not_certified(self, name: str, status: str, reason: str) -> None:
        self.not_certified = [*self.not_certified, {"object": name, "status": status, "reason": reason}][-REASONS_KEPT:]


def study_key(study_uid: str) -> str:
    return hashlib.sha256(study_uid.encode()).hexdigest()[:24]


def object_name(sop_uid: str) -> str:
    return f"{hashlib.sha256(sop_uid.encode()).hexdigest()[:32]}.dcm"


class Spool:
    """The queue on disk.  `lock` guards the records and the object folders against the receiving threads."""

    def __init__(self, root: Path):
        self.root = root
        for part in ("studies", "results", "failed"):
            (root / part).mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.swept = self._sweep_staging()
        # Counted once here and kept up to date, not re-scanned on every C-STORE of a busy node.
        self.size_bytes = sum(p.stat().st_size for p in (root / "studies").glob("*/*/*.dcm"))
        self.failed_bytes = sum(p.stat().st_size for p in (root / "failed").glob("*/*.dcm"))
        self.active: set[str] = set(self.keys())  # studies the worker must visit; all of them until it has

    @property
    def queued_bytes(self) -> int:
        """What counts against the queue limit: objects waiting or being certified, and those set aside."""
        return self.size_bytes + self.failed_bytes

    def _sweep_staging(self) -> list[Path]:
        """Remove what a killed process left half-written: objects being stored, result folders being written."""
        stale = [*self.root.glob("studies/*/incoming/*.partial"), *self.root.glob("results/**/.*.partial"),
                 *self.root.glob("results/**/.*.old")]
        for path in stale:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return stale

    # -- paths -------------------------------------------------------------------------------
    def study_folder(self, key: str) -> Path:
        return self.root / "studies" / key

    def incoming(self, key: str) -> Path:
        return self.study_folder(key) / "incoming"

    def claimed(self, key: str) -> Path:
        return self.study_folder(key) / "claimed"

    def results(self, key: str) -> Path:
        return self.root / "results" / key

    # -- records -----------------------------------------------------------------------------
    def record(self, key: str) -> StudyRecord | None:
        path = self.study_folder(key) / "study.json"
        return StudyRecord.from_json(json.loads(path.read_text())) if path.is_file() else None

    def save(self, key: str, record: StudyRecord) -> None:
        write_json(self.study_folder(key) / "study.json", asdict(record))

    def keys(self) -> list[str]:
        return sorted(p.name for p in (self.root / "studies").iterdir() if (p / "study.json").is_file())

    # -- receiving (any thread) --------------------------------------------------------------
    def add(self, study_uid: str, sop_uid: str, encoded: bytes, sender: dict) -> str:
        key = study_key(study_uid)
        with self.lock:
            incoming = self.incoming(key)
            incoming.mkdir(parents=True, exist_ok=True)
            target = incoming / object_name(sop_uid)
            partial = target.with_suffix(".partial")
            partial.write_bytes(encoded)
            replaced = target.stat().st_size if target.exists() else 0  # a peer may send an instance again
            os.replace(partial, target)
            self.size_bytes += len(encoded) - replaced
            self.active.add(key)
            record = self.record(key) or StudyRecord(study_uid, sender)
            record.sender, record.last_received, record.received = sender, time.time(), record.received + 1
            if record.state in (StudyState.SENT, StudyState.DONE):
                record.state = StudyState.RECEIVING
            self.save(key, record)
        return key

    # -- working (the worker thread) ---------------------------------------------------------
    def has_incoming(self, key: str) -> bool:
        folder = self.incoming(key)
        return folder.is_dir() and any(folder.glob("*.dcm"))

    def claim(self, key: str) -> Path:
        """Move every incoming object into claimed/ (joining any left there by a crash); returns claimed/."""
        with self.lock:
            claimed = self.claimed(key)
            claimed.mkdir(parents=True, exist_ok=True)
            for path in self.incoming(key).glob("*.dcm"):
                os.replace(path, claimed / path.name)
        return claimed

    def has_claimed(self, key: str) -> bool:
        folder = self.claimed(key)
        return folder.is_dir() and any(folder.glob("*.dcm"))

    def release(self, path: Path) -> None:
        """A claimed object is done with (certified, or not ours): it leaves the queue."""
        with self.lock:
            size = path.stat().st_size
            path.unlink()
            self.size_bytes -= size

    def set_aside(self, key: str, path: Path, reason: str) -> Path:
        """A claimed object that could not be certified moves to failed/<key>/ (out of the count), reason beside it."""
        folder = self.root / "failed" / key
        folder.mkdir(parents=True, exist_ok=True)
        reasons_file = folder / "reasons.json"
        reasons = json.loads(reasons_file.read_text()) if reasons_file.is_file() else {}
        with self.lock:
            size = path.stat().st_size
            replaced = (folder / path.name).stat().st_size if (folder / path.name).exists() else 0
            os.replace(path, folder / path.name)
            self.size_bytes -= size
            self.failed_bytes += size - replaced
        write_json(reasons_file, {**reasons, path.name: reason})
        return folder / path.name

    def prune_failed(self, older_than_s: float, now: float, max_bytes: int | None = None) -> list[str]:
        """Remove failed/<key>/ folders untouched for `older_than_s`, then the oldest until they hold at most
        `max_bytes`; returns their keys."""
        folders = sorted((f for f in (self.root / "failed").iterdir() if f.is_dir()), key=lambda f: f.stat().st_mtime)
        pruned = []
        for folder in folders:
            too_old = now - folder.stat().st_mtime > older_than_s
            if not too_old and (max_bytes is None or self.failed_bytes <= max_bytes):
                continue
            size = sum(p.stat().st_size for p in folder.glob("*.dcm"))
            shutil.rmtree(folder, ignore_errors=True)
            with self.lock:
                self.failed_bytes -= size
            pruned.append(folder.name)
        return pruned

    def is_settled(self, key: str) -> bool:
        """Nothing for the worker to do until a new object arrives (or a restart resumes an unsent study)."""
        record = self.record(key)
        return (record is None or record.state in (StudyState.SENT, StudyState.DONE, StudyState.UNSENT)) \
            and not self.has_incoming(key) and not self.has_claimed(key)

    def prune_finished(self, older_than_s: float, now: float) -> list[str]:
        """Remove the records and results of studies finished (sent, or nothing to send) more than `older_than_s`
        ago; returns their keys.  A study that arrives again later is a new study."""
        pruned = []
        for key in self.keys():
            with self.lock:
                record = self.record(key)
                if key in self.active or record is None or record.state not in (StudyState.SENT, StudyState.DONE) \
                        or now - record.last_received <= older_than_s or not self.is_settled(key):
                    continue
                shutil.rmtree(self.study_folder(key), ignore_errors=True)
                shutil.rmtree(self.results(key), ignore_errors=True)
            pruned.append(key)
        return pruned

    def relative(self, path: Path) -> str:
        return str(Path(path).resolve().relative_to(self.root.resolve()))

    def absolute(self, relative: str) -> Path:
        return self.root / relative
