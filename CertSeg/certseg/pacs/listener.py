"""`certseg listen`: a DICOM node that certifies the chest radiographs it receives.

A C-STORE SCP (pynetdicom).  Every received object is written to an on-disk spool before
success is returned; a study that has been idle for `idle_s` is certified (its CR/DX chest
radiographs; anything else was acknowledged, logged and is never certified) and its SEGs are
sent to the destination, retried with exponential backoff.  The spool is the state:

    SPOOL/studies/<key>/study.json     study UID, sender, state (receiving, certified, sent, failed)
    SPOOL/studies/<key>/objects/*.dcm  received objects, named by a hash of their SOP Instance UID
    SPOOL/results/<key>/...            certify's result folders

so a restart resumes where it stopped: studies still receiving wait out their idle time again,
certified ones are sent again.  `<key>` is a hash of the Study Instance UID: nothing a peer
sends becomes a path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom

from certseg.errors import CertSegError, first_line
from certseg.files import write_json

UID_SYNTAX = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC210


@dataclass(frozen=True)
class ListenerSettings:
    aet: str
    port: int
    spool: Path
    allowed_aets: tuple[str, ...] = ()  # empty: any calling AE title
    sop_classes: tuple[str, ...] = ()  # empty: every storage SOP class
    idle_s: float = 30.0
    max_object_bytes: int = 200 * 2**20
    max_queue_bytes: int = 20 * 2**30
    send_attempts: int = 5
    first_retry_s: float = 2.0

    def validate(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"listen: port must lie in 1..65535, got {self.port}")
        if not 0 < len(self.aet) <= 16:
            raise ValueError(f"listen: AE title must have 1 to 16 characters, got {self.aet!r}")
        if self.idle_s <= 0 or self.send_attempts < 1 or self.max_object_bytes < 1 or self.max_queue_bytes < 1:
            raise ValueError("listen: idle time, send attempts and size limits must be positive")


def study_key(study_uid: str) -> str:
    return hashlib.sha256(study_uid.encode()).hexdigest()[:24]


class Spool:
    """The on-disk queue; every write is a rename, so a crash never leaves half an object."""

    def __init__(self, root: Path):
        self.root = root
        (root / "studies").mkdir(parents=True, exist_ok=True)
        (root / "results").mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        # Counted once here and kept up to date, not re-scanned on every C-STORE of a busy node.
        self.size_bytes = sum(p.stat().st_size for p in (root / "studies").rglob("*.dcm"))

    def add(self, study_uid: str, sop_uid: str, encoded: bytes, sender: dict) -> str:
        key = study_key(study_uid)
        folder = self.root / "studies" / key
        with self.lock:
            (folder / "objects").mkdir(parents=True, exist_ok=True)
            target = folder / "objects" / f"{hashlib.sha256(sop_uid.encode()).hexdigest()[:32]}.dcm"
            partial = target.with_suffix(".partial")
            partial.write_bytes(encoded)
            replaced = target.stat().st_size if target.exists() else 0  # a peer may send an instance again
            os.replace(partial, target)
            self.size_bytes += len(encoded) - replaced
            state = self.state(key) or {"study_uid": study_uid, "sender": sender, "state": "receiving"}
            state.update(state="receiving", last_received=time.time())
            write_json(folder / "study.json", state)
        return key

    def state(self, key: str) -> dict | None:
        path = self.root / "studies" / key / "study.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def set_state(self, key: str, **changes) -> dict:
        with self.lock:
            state = {**(self.state(key) or {}), **changes}
            write_json(self.root / "studies" / key / "study.json", state)
        return state

    def keys(self) -> list[str]:
        return sorted(p.name for p in (self.root / "studies").iterdir() if (p / "study.json").is_file())

    def objects(self, key: str) -> Path:
        return self.root / "studies" / key / "objects"

    def discard_objects(self, key: str) -> None:
        """A sent study's received objects leave the queue (its results stay)."""
        with self.lock:
            folder = self.objects(key)
            self.size_bytes -= sum(p.stat().st_size for p in folder.glob("*.dcm"))
            shutil.rmtree(folder, ignore_errors=True)


class Listener:
    """The SCP and the worker that certifies idle studies and sends their results.

    `certify(objects_folder, results_folder)` -> result folders of certified radiographs;
    `send(paths, state)` raises on failure (the state names the study and its sender).
    """

    def __init__(self, settings: ListenerSettings, certify: Callable[[Path, Path], list[Path]],
                 send: Callable[[list[Path], dict], None], log: Callable[[dict], None]):
        settings.validate()
        self.settings, self.certify, self.send, self.log = settings, certify, send, log
        self.spool = Spool(settings.spool)
        self.stopping = threading.Event()
        self.server = None

    # -- receiving ---------------------------------------------------------------------------
    def handle_store(self, event) -> int:
        sender = {"aet": event.assoc.requestor.ae_title, "address": event.assoc.requestor.address}
        try:
            encoded = event.encoded_dataset()
        except Exception as error:  # noqa: BLE001 - any peer bytes pydicom cannot read are a refusal
            return self._refuse(sender, None, CANNOT_UNDERSTAND, f"malformed dataset ({first_line(error, 300)})")
        if len(encoded) > self.settings.max_object_bytes:
            return self._refuse(sender, None, OUT_OF_RESOURCES, f"object of {len(encoded)} bytes over the limit")
        try:
            dataset = event.dataset
            study_uid, sop_uid = str(dataset.StudyInstanceUID), str(dataset.SOPInstanceUID)
            incomplete = _incomplete(dataset, pydicom.uid.UID(event.context.transfer_syntax))
        except Exception as error:  # noqa: BLE001
            return self._refuse(sender, None, CANNOT_UNDERSTAND, f"malformed dataset ({first_line(error, 300)})")
        if incomplete:
            return self._refuse(sender, study_uid[:80], CANNOT_UNDERSTAND, f"malformed dataset ({incomplete})")
        if not (UID_SYNTAX.match(study_uid) and UID_SYNTAX.match(sop_uid)) or max(map(len, (study_uid, sop_uid))) > 64:
            return self._refuse(sender, study_uid[:80], CANNOT_UNDERSTAND, "invalid Study or SOP Instance UID")
        if self.spool.size_bytes + len(encoded) > self.settings.max_queue_bytes:
            return self._refuse(sender, study_uid, OUT_OF_RESOURCES, "queue full")
        key = self.spool.add(study_uid, sop_uid, encoded, sender)
        self.log({"event": "received", "study": study_uid, "key": key, "sop_class": str(dataset.SOPClassUID),
                  "modality": str(dataset.get("Modality", "")), "from": sender["aet"]})
        return SUCCESS

    def _refuse(self, sender: dict, study_uid: str | None, status: int, reason: str) -> int:
        self.log({"event": "refused", "study": study_uid, "from": sender["aet"], "status": f"0x{status:04X}",
                  "reason": reason})
        return status

    # -- working -----------------------------------------------------------------------------
    def work_once(self, now: float | None = None) -> None:
        """Certify every idle study and (re)send every study whose send is due."""
        now = time.time() if now is None else now
        for key in self.spool.keys():
            state = self.spool.state(key)
            if state["state"] == "receiving" and now - state["last_received"] >= self.settings.idle_s:
                state = self._certify(key, state)
            if state["state"] == "certified" and now >= state.get("next_send", 0):
                self._send(key, state, now)

    def _certify(self, key: str, state: dict) -> dict:
        objects = self.spool.objects(key)
        try:
            results = self.certify(objects, self.spool.root / "results" / key)
        except CertSegError as error:
            results, reason = [], str(error)
        else:
            reason = ""
        latest = self.spool.state(key)
        if latest["last_received"] > state["last_received"]:  # more arrived meanwhile: certify again when idle
            return latest
        outputs = [str(folder / "seg.dcm") for folder in results]  # each SEG, and its SR of certified measurements
        outputs += [str(folder / "measurements.dcm") for folder in results if (folder / "measurements.dcm").is_file()]
        if not outputs:
            self.log({"event": "failed", "study": state["study_uid"], "key": key,
                      "reason": reason or "no chest radiograph certified"})
            return self.spool.set_state(key, state="failed", reason=reason or "no chest radiograph certified")
        self.log({"event": "certified", "study": state["study_uid"], "key": key, "radiographs": len(results)})
        return self.spool.set_state(key, state="certified", outputs=outputs, attempts=0, next_send=0)

    def _send(self, key: str, state: dict, now: float) -> None:
        try:
            self.send([Path(p) for p in state["outputs"]], state)
        except Exception as error:  # noqa: BLE001 - any send failure is retried, then reported
            attempts = state.get("attempts", 0) + 1
            if attempts >= self.settings.send_attempts:
                self.log({"event": "failed", "study": state["study_uid"], "key": key,
                          "reason": f"send failed {attempts} times: {first_line(error, 300)}"})
                self.spool.set_state(key, state="failed", attempts=attempts, reason=first_line(error, 300))
            else:
                delay = self.settings.first_retry_s * 2 ** (attempts - 1)
                self.spool.set_state(key, attempts=attempts, next_send=now + delay)
            return
        self.log({"event": "sent", "study": state["study_uid"], "key": key, "objects": len(state["outputs"])})
        self.spool.set_state(key, state="sent")
        self.spool.discard_objects(key)

    # -- running -----------------------------------------------------------------------------
    def start(self) -> None:
        """Serve in the background (returns once the port listens)."""
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

        ae = AE(ae_title=self.settings.aet)
        ae.require_calling_aet = list(self.settings.allowed_aets)
        classes = self.settings.sop_classes or [c.abstract_syntax for c in AllStoragePresentationContexts]
        for sop_class in classes:
            ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)  # stored as received, never transcoded
        self.server = ae.start_server(("0.0.0.0", self.settings.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self.handle_store)])

    def run_forever(self, poll_s: float = 1.0) -> None:
        self.start()
        self.log({"event": "listening", "aet": self.settings.aet, "port": self.settings.port,
                  "spool": str(self.settings.spool)})
        try:
            while not self.stopping.wait(poll_s):
                self.work_once()
        finally:
            self.server.shutdown()


def _incomplete(dataset: pydicom.Dataset, transfer_syntax: pydicom.uid.UID) -> str | None:
    """Why an image cannot be whole (pydicom drops a truncated last element silently)."""
    if "Image Storage" not in pydicom.uid.UID(str(dataset.get("SOPClassUID", ""))).name:
        return None
    if not all(keyword in dataset for keyword in ("Rows", "Columns", "BitsAllocated", "PixelData")):
        return "an image without its pixel description or data (truncated?)"
    if transfer_syntax.is_compressed:
        return None
    expected = (int(dataset.Rows) * int(dataset.Columns) * int(dataset.get("SamplesPerPixel", 1))
                * int(dataset.get("NumberOfFrames", 1) or 1) * ((int(dataset.BitsAllocated) + 7) // 8))
    if len(dataset.PixelData) < expected:
        return f"truncated pixel data ({len(dataset.PixelData)} of {expected} bytes)"
    return None
