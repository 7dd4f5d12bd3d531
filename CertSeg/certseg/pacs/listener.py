"""`certseg listen`: a DICOM node that certifies the chest radiographs it receives.

A C-STORE SCP and C-ECHO SCP (pynetdicom).  The event handlers only check and store: an object is
written to the on-disk spool (certseg.pacs.spool) before success is returned.  A worker thread
certifies each study once it has been idle for `idle_s` and sends its results (SEG and SR) to the
destination, retried with a capped backoff for `retry_window_s`, and again after a restart.

What a peer can and cannot do (docs/pacs-administrator.md, "On the hospital network"):
- every UID is checked as a DICOM UID before anything is stored, and no name a peer sends becomes a path;
- objects are limited in bytes received, bytes inflated (Deflated transfer syntax) and pixel bytes
  declared; the bytes held in memory for objects being received are bounded across associations;
- connections are capped per address and in all, idle or silent ones closed after the ACSE timeout;
- every refusal, rejection, dropped connection, retry and failure is one JSON log line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pydicom
from pydicom.uid import DeflatedExplicitVRLittleEndian

from certseg.errors import CertSegError, ParameterError, first_line
from certseg.files import objects_to_send
from certseg.limits import codestream_problem, declared_pixel_bytes, inflates_beyond
from certseg.names import UID_PATH_KEYWORDS, shown, uid_problem
from certseg.pacs.spool import Spool, StudyRecord, StudyState
from certseg.status import Status

if TYPE_CHECKING:
    from certseg.pacs.tls import TlsFiles

SUCCESS, OUT_OF_RESOURCES, DATASET_DOES_NOT_MATCH, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xA900, 0xC210
COMMAND_SLACK_BYTES = 64 * 2**10  # command set and PDU headers around an object
# Claimed objects are certified again after a restart.  An object found being decoded at this many restarts
# (a codec that ran out of memory or crashed) is set aside instead, or the node would die on it for ever.
# Only decoding counts: a node stopped while it runs the models (a restart, a deploy) is no fault of the image.
MAX_DEATHS_IN_DECODING = 2


@dataclass(frozen=True)
class ListenerSettings:
    aet: str
    port: int
    spool: Path
    bind: str = "127.0.0.1"  # loopback unless the administrator names the interface to serve
    allowed_aets: tuple[str, ...] = ()  # empty: any calling AE title
    sop_classes: tuple[str, ...] = ()  # empty: every storage SOP class
    idle_s: float = 30.0
    max_object_bytes: int = 200 * 2**20  # received, and inflated
    max_decoded_bytes: int = 1024 * 2**20  # pixel data a header may declare
    max_in_flight_bytes: int = 1024 * 2**20  # being received, all associations together
    max_queue_bytes: int = 20 * 2**30
    max_associations: int = 32
    max_associations_per_address: int = 4
    acse_timeout_s: float = 10.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 60.0
    pdu_timeout_s: float = 10.0  # from a PDU's first byte to its last (pynetdicom alone waits for ever)
    first_retry_s: float = 2.0
    max_retry_interval_s: float = 300.0
    retry_window_s: float = 24 * 3600.0
    failed_retention_s: float = 7 * 24 * 3600.0
    max_failed_bytes: int | None = None  # failed/ at most; None: a quarter of the queue limit
    finished_retention_s: float = 7 * 24 * 3600.0  # records and results of finished studies
    housekeeping_interval_s: float = 60.0  # pruning failed/ and finished studies
    tls: TlsFiles | None = None
    send_capture: bool = True  # the secondary capture beside each SEG and SR
    send_pdf: bool = True  # the report page as Encapsulated PDF

    def __post_init__(self) -> None:
        """Valid by construction: the listener and the command never check these again."""
        if not 0 < self.port < 65536:
            raise ParameterError(f"listen: port must lie in 1..65535, got {self.port}")
        if not 0 < len(self.aet) <= 16:
            raise ParameterError(f"listen: AE title must have 1 to 16 characters, got {self.aet!r}")
        positive = {"idle time": self.idle_s, "object limit": self.max_object_bytes,
                    "decoded limit": self.max_decoded_bytes, "in-flight limit": self.max_in_flight_bytes,
                    "queue limit": self.max_queue_bytes, "associations": self.max_associations,
                    "associations per address": self.max_associations_per_address,
                    "ACSE timeout": self.acse_timeout_s, "DIMSE timeout": self.dimse_timeout_s,
                    "network timeout": self.network_timeout_s, "PDU timeout": self.pdu_timeout_s, "first retry": self.first_retry_s,
                    "longest retry interval": self.max_retry_interval_s, "failed retention": self.failed_retention_s,
                    "finished retention": self.finished_retention_s, "failed limit": self.failed_limit_bytes,
                    "housekeeping interval": self.housekeeping_interval_s}
        for name, value in positive.items():
            if not value > 0:
                raise ParameterError(f"listen: {name} must be positive, got {value}")
        if self.retry_window_s < 0:
            raise ParameterError(f"listen: retry window must be >= 0, got {self.retry_window_s}")
        if self.max_in_flight_bytes < self.max_object_bytes:
            raise ParameterError("listen: the in-flight limit must hold at least one object of the object limit")
        if self.failed_limit_bytes > self.max_queue_bytes:
            raise ParameterError("listen: the limit on failed objects cannot exceed the queue limit")

    @property
    def failed_limit_bytes(self) -> int:
        return self.max_queue_bytes // 4 if self.max_failed_bytes is None else self.max_failed_bytes


class CertifiedFile(Protocol):
    """What `certify` says of each file it was given (certseg.runner.Outcome)."""

    path: Path
    message: str
    status: Status
    result: Path | None


class Listener:
    """The SCP, and the worker that certifies idle studies and sends their results.

    `certify(objects_folder, results_folder, decoding)` -> one CertifiedFile per file it examined, calling
    `decoding(path, started)` before and after it decodes each object;
    `send(paths, record)` raises on failure (the record names the study and its sender);
    `log(record)` writes one log line.
    """

    def __init__(self, settings: ListenerSettings,
                 certify: Callable[[Path, Path, Callable[[Path, bool], None]], list[CertifiedFile]],
                 send: Callable[[list[Path], StudyRecord], None], log: Callable[[dict], None]):
        self.settings, self.certify, self.send, self.log = settings, certify, send, log
        self.spool = Spool(settings.spool)
        self.server = None
        self.budget = None
        self._next_housekeeping = 0.0
        if self.spool.swept:
            log({"event": "swept", "reason": f"{len(self.spool.swept)} half-written objects or result folders left "
                                              f"by a stopped process removed"})
        self._resume_unsent()

    # -- receiving (pynetdicom's threads) -----------------------------------------------------
    def handle_store(self, event) -> int:
        sender = {"aet": event.assoc.requestor.ae_title, "address": event.assoc.requestor.address}
        try:
            return self._store(event, sender)
        finally:
            if self.budget is not None:
                self.budget.release(event.assoc)

    def _store(self, event, sender: dict) -> int:
        limit = self.settings.max_object_bytes
        try:
            raw = event.request.DataSet.getvalue()
            syntax = pydicom.uid.UID(event.context.transfer_syntax)
        except Exception as error:  # noqa: BLE001 - any peer bytes we cannot read are a refusal
            return self._refuse(sender, None, CANNOT_UNDERSTAND, f"malformed request ({first_line(error, 300)})")
        if len(raw) > limit:
            return self._refuse(sender, None, OUT_OF_RESOURCES, f"object of {len(raw)} bytes over the limit")
        if syntax == DeflatedExplicitVRLittleEndian and inflates_beyond(raw, limit):
            return self._refuse(sender, None, OUT_OF_RESOURCES, f"Deflated object inflates to more than {limit} bytes")
        try:  # everything read from the peer's dataset, so a malformed element is a refusal, never a crash
            dataset = event.dataset
            uids = [str(dataset.get(keyword, "")) for keyword in UID_PATH_KEYWORDS]
            problem = _incomplete(dataset, syntax)
            declared = declared_pixel_bytes(dataset) if "PixelData" in dataset else 0
            mismatch = codestream_problem(dataset, syntax) if declared <= self.settings.max_decoded_bytes else None
            described = {"sop_class": str(dataset.get("SOPClassUID", "")), "modality": str(dataset.get("Modality", ""))}
            command = (str(event.request.AffectedSOPClassUID or ""), str(event.request.AffectedSOPInstanceUID or ""))
        except Exception as error:  # noqa: BLE001
            return self._refuse(sender, None, CANNOT_UNDERSTAND, f"malformed dataset ({first_line(error, 300)})")
        study_uid = uids[0] if uid_problem(uids[0]) is None else None
        if problem:
            return self._refuse(sender, study_uid, CANNOT_UNDERSTAND, f"malformed dataset ({problem})")
        for keyword, value in zip(UID_PATH_KEYWORDS, uids):
            reason = uid_problem(value)
            if reason:
                return self._refuse(sender, study_uid, CANNOT_UNDERSTAND,
                                    f"{keyword} {shown(value)} is not a DICOM UID ({reason})")
        if command[1] != uids[2]:
            return self._refuse(sender, study_uid, CANNOT_UNDERSTAND,
                                f"the command's Affected SOP Instance UID {shown(command[1])} is not the dataset's "
                                f"{shown(uids[2])}")
        if command[0] != described["sop_class"]:
            return self._refuse(sender, study_uid, DATASET_DOES_NOT_MATCH,
                                f"the command's Affected SOP Class UID {shown(command[0])} is not the dataset's "
                                f"{shown(described['sop_class'])}")
        if declared > self.settings.max_decoded_bytes:
            return self._refuse(sender, study_uid, OUT_OF_RESOURCES,
                                f"pixel data declared as {declared} bytes (limit {self.settings.max_decoded_bytes})")
        if mismatch:
            return self._refuse(sender, study_uid, OUT_OF_RESOURCES, mismatch)
        encoded = event.encoded_dataset()
        if self.spool.queued_bytes + len(encoded) > self.settings.max_queue_bytes:
            return self._refuse(sender, study_uid, OUT_OF_RESOURCES, "queue full")
        key = self.spool.add(study_uid, uids[2], encoded, sender)
        self.log({"event": "received", "study": study_uid, "key": key, **described, "from": sender["aet"]})
        return SUCCESS

    def _refuse(self, sender: dict, study_uid: str | None, status: int, reason: str) -> int:
        self.log({"event": "refused", "study": study_uid, "from": sender["aet"], "address": sender["address"],
                  "status": f"0x{status:04X}", "reason": reason})
        return status

    def _count_received_bytes(self, event) -> None:
        """EVT_DATA_RECV: bytes held for an object not yet stored; over budget, the association is aborted."""
        reason = self.budget.add(event.assoc, len(event.data))
        if reason and not getattr(event.assoc, "certseg_aborting", False):
            event.assoc.certseg_aborting = True
            self.log({"event": "aborted", "from": event.assoc.requestor.ae_title,
                      "address": event.assoc.requestor.address, "reason": reason})
            event.assoc.abort(block=False)  # from pynetdicom's own thread: queue the A-ABORT, do not wait

    def _association_event(self, event) -> None:
        """Rejections, aborts and connections that closed before any association: each one a log line."""
        requestor = event.assoc.requestor
        name = event.event.name
        if name == "EVT_ESTABLISHED":
            event.assoc.certseg_established = True
        elif name == "EVT_REJECTED":
            event.assoc.certseg_rejected = True
            self.log({"event": "rejected", "from": requestor.ae_title, "address": requestor.address,
                      "reason": self._rejection_reason(requestor.ae_title)})
        elif name == "EVT_ABORTED" and not getattr(event.assoc, "certseg_aborting", False):
            self.log({"event": "aborted", "from": requestor.ae_title, "address": requestor.address,
                      "reason": "the association was aborted (by the peer or on a protocol error)"})
        elif name == "EVT_CONN_CLOSE":
            if self.budget is not None:
                self.budget.release(event.assoc)
            if not any(getattr(event.assoc, flag, False) for flag in
                       ("certseg_established", "certseg_rejected", "certseg_aborting", "certseg_dropped")):
                self.log({"event": "dropped", "address": requestor.address,
                          "reason": f"no valid association request within the ACSE timeout "
                                    f"({self.settings.acse_timeout_s:g} s): idle, or not DICOM"})

    def _rejection_reason(self, calling_aet: str) -> str:
        allowed = self.settings.allowed_aets
        if allowed and calling_aet.strip() not in allowed:
            return f"calling AE title {shown(calling_aet)} is not allowed"
        return f"association limit reached ({self.settings.max_associations})"

    # -- working (one worker thread) -----------------------------------------------------------
    def work_once(self, now: float | None = None) -> None:
        """Certify every idle study, (re)send every study whose send is due; now and then, prune.

        Only active studies are visited (the spool's `active`): a settled one leaves the set, and a new object
        puts its study back, so a pass costs what the active studies cost, not the whole history."""
        now = time.time() if now is None else now
        for key in sorted(self.spool.active):
            try:
                self._work_on(key, now)
            except Exception as error:  # noqa: BLE001 - one study's bug must not stop the node or loop on it
                self._set_aside_claimed(key, f"internal error: {type(error).__name__}: {first_line(error, 300)}")
            with self.spool.lock:  # under the lock: an object arriving meanwhile keeps its study active
                if self.spool.is_settled(key):
                    self.spool.active.discard(key)
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + self.settings.housekeeping_interval_s
            self._housekeeping(now)

    def _housekeeping(self, now: float) -> None:
        self._prune_failed(now)
        settings = self.settings
        for key in self.spool.prune_finished(settings.finished_retention_s, now):
            self.log({"event": "pruned", "key": key, "reason": "a finished study past its retention time"})

    def _work_on(self, key: str, now: float) -> None:
        record = self.spool.record(key)
        idle = now - record.last_received >= self.settings.idle_s
        if record.decoding is not None:
            self._count_death_in_decoding(key)
        if self.spool.has_claimed(key) or idle and self.spool.has_incoming(key):
            record = self._certify(key)
        if record.pending and record.state == StudyState.SENDING and now >= record.next_send:
            self._send(key, now)

    def _set_aside_claimed(self, key: str, reason: str) -> None:
        """After an unexpected error the claimed objects go to failed/ with the reason: kept, never retried in a loop."""
        record = self.spool.record(key)
        for path in sorted(self.spool.claimed(key).glob("*.dcm")):
            self.spool.set_aside(key, path, reason)
        self.log({"event": "failed", "study": record.study_uid if record else None, "key": key, "reason": reason})

    def _certify(self, key: str) -> StudyRecord:
        claimed = self.spool.claim(key)
        study_uid = self.spool.record(key).study_uid
        try:
            examined = self.certify(claimed, self.spool.results(key), self._decoding_marker(key))
        except CertSegError as error:  # nothing at all could be read: every claimed object fails with this
            reason = first_line(error, 500)
            examined = [_Unexamined(path, reason) for path in sorted(claimed.glob("*.dcm"))]
        by_name = {Path(item.path).name: item for item in examined}
        outputs, certified, notes = [], 0, []
        for path in sorted(claimed.glob("*.dcm")):  # every claimed object ends here, none is lost
            item = by_name.get(path.name) or _Unexamined(path, "not examined by the certification")
            if item.status == Status.FAILED:
                self.spool.set_aside(key, path, item.message)
                notes.append((path.name, "failed", item.message))
                self.log({"event": "failed", "study": study_uid, "key": key, "reason": item.message})
                continue
            self.spool.release(path)
            if item.status in (Status.CERTIFIED, Status.KEPT) and item.result is not None:
                certified += 1
                if getattr(item, "superseded", None):  # the same UIDs came back with other pixels
                    self.log({"event": "superseded", "study": study_uid, "key": key,
                              "reason": f"{item.superseded}: certified anew, the new results sent"})
                outputs += objects_to_send(item.result, capture=self.settings.send_capture, pdf=self.settings.send_pdf)
            else:
                notes.append((path.name, item.status, item.message))
                self.log({"event": "ignored", "study": study_uid, "key": key, "reason": item.message})
        with self.spool.lock:
            latest = self.spool.record(key)  # receiving threads may have changed it meanwhile
            for note in notes:
                latest.note_not_certified(*note)
            latest.certified += certified
            latest.pending = sorted({*latest.pending, *(self.spool.relative(p) for p in outputs)})
            latest.state = self._settled_state(key, latest)
            if outputs:
                latest.next_send, latest.attempts, latest.first_failure = 0.0, 0, None
            self.spool.save(key, latest)
        if certified:
            self.log({"event": "certified", "study": study_uid, "key": key, "radiographs": certified})
        if any(status == "failed" for _, status, _ in notes):
            self._prune_failed(time.time())  # the cap holds at once, not only at the next housekeeping
        return latest

    def _decoding_marker(self, key: str) -> Callable[[Path, bool], None]:
        """What certify calls around each decoding: the object's name is on disk while its codec runs."""
        def mark(path: Path, started: bool) -> None:
            with self.spool.lock:
                record = self.spool.record(key)
                record.decoding = Path(path).name if started else None
                self.spool.save(key, record)
        return mark

    def _count_death_in_decoding(self, key: str) -> None:
        """The node died while decoding `record.decoding` (found at a restart): count it; set it aside at the limit."""
        with self.spool.lock:
            record = self.spool.record(key)
            name, record.decoding = record.decoding, None
            deaths = record.decode_deaths.get(name, 0) + 1
            record.decode_deaths = {**record.decode_deaths, name: deaths}
            self.spool.save(key, record)
        path = self.spool.claimed(key) / name
        if deaths >= MAX_DEATHS_IN_DECODING and path.is_file():
            reason = f"decoding it ended the node {deaths} times (out of memory, or a codec crash): set aside"
            self.spool.set_aside(key, path, reason)
            self.log({"event": "failed", "study": record.study_uid, "key": key, "reason": reason})

    def _prune_failed(self, now: float) -> None:
        settings = self.settings
        for key in self.spool.prune_failed(settings.failed_retention_s, now, settings.failed_limit_bytes):
            self.log({"event": "pruned", "key": key, "reason": "failed objects past their retention time or over "
                                                               f"the {settings.failed_limit_bytes}-byte limit"})

    def _settled_state(self, key: str, record: StudyRecord) -> StudyState:
        if record.pending:
            return StudyState.UNSENT if record.state == StudyState.UNSENT else StudyState.SENDING
        if self.spool.has_incoming(key):
            return StudyState.RECEIVING
        return StudyState.SENT if record.certified else StudyState.DONE

    def _send(self, key: str, now: float) -> None:
        record = self.spool.record(key)
        sending = list(record.pending)
        try:
            self.send([self.spool.absolute(p) for p in sending], record)
        except Exception as error:  # noqa: BLE001 - any send failure is retried, then reported, never dropped
            self._send_failed(key, now, first_line(error, 300))
            return
        with self.spool.lock:
            latest = self.spool.record(key)
            latest.pending = [p for p in latest.pending if p not in sending]
            latest.attempts, latest.first_failure, latest.next_send = 0, None, 0.0
            latest.state = self._settled_state(key, latest)
            self.spool.save(key, latest)
        self.log({"event": "sent", "study": record.study_uid, "key": key, "objects": len(sending)})

    def _send_failed(self, key: str, now: float, reason: str) -> None:
        with self.spool.lock:
            record = self.spool.record(key)
            record.attempts += 1
            record.first_failure = record.first_failure or now
            trying_for = now - record.first_failure
            if trying_for >= self.settings.retry_window_s:
                record.state, record.next_send = StudyState.UNSENT, float("inf")
                event = {"event": "unsent", "reason": f"send failed {record.attempts} times over {trying_for:.0f} s "
                                                      f"({reason}); kept, and tried again when the listener restarts"}
            else:
                delay = min(self.settings.first_retry_s * 2 ** (record.attempts - 1), self.settings.max_retry_interval_s)
                record.next_send = now + delay
                event = {"event": "retry", "attempt": record.attempts, "in_s": round(delay, 1), "reason": reason}
            self.spool.save(key, record)
        self.log({**event, "study": record.study_uid, "key": key})

    def _resume_unsent(self) -> None:
        """At start: sends that ran out of retries are tried again, from a fresh retry window."""
        for key in self.spool.keys():
            record = self.spool.record(key)
            if record.pending and record.state in (StudyState.UNSENT, StudyState.SENDING):
                was = record.state
                record.state, record.next_send, record.attempts, record.first_failure = (
                    StudyState.SENDING, 0.0, 0, None)
                self.spool.save(key, record)
                if was == StudyState.UNSENT:
                    self.log({"event": "resumed", "study": record.study_uid, "key": key, "objects": len(record.pending)})

    # -- running -------------------------------------------------------------------------------
    def start(self) -> None:
        """Serve in the background (returns once the port listens)."""
        import threading

        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        from certseg.pacs.guard import ConnectionLimits, GuardedAssociationServer, ReceiveBudget
        from certseg.pacs.tls import server_context

        settings = self.settings
        ae = AE(ae_title=settings.aet)
        ae.require_calling_aet = list(settings.allowed_aets)
        # The guard (certseg.pacs.guard) holds the cap on connections; pynetdicom's own count also holds the
        # threads of connections already closed to admit new ones (each waits out the ACSE timeout), so it
        # gets room for them to finish.
        ae.maximum_associations = 4 * settings.max_associations
        ae.acse_timeout, ae.dimse_timeout = settings.acse_timeout_s, settings.dimse_timeout_s
        ae.network_timeout = settings.network_timeout_s
        ae.add_supported_context(Verification)
        classes = settings.sop_classes or [c.abstract_syntax for c in AllStoragePresentationContexts]
        for sop_class in classes:
            ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)  # stored as received, never transcoded
        self.budget = ReceiveBudget(settings.max_object_bytes + COMMAND_SLACK_BYTES, settings.max_in_flight_bytes)
        handlers = [(evt.EVT_C_STORE, self.handle_store), (evt.EVT_DATA_RECV, self._count_received_bytes)]
        handlers += [(event, self._association_event) for event in
                     (evt.EVT_ESTABLISHED, evt.EVT_REJECTED, evt.EVT_ABORTED, evt.EVT_CONN_CLOSE)]
        limits = ConnectionLimits(settings.max_associations, settings.max_associations_per_address,
                                  settings.acse_timeout_s, pdu_timeout_s=settings.pdu_timeout_s)
        self.server = ae.make_server((settings.bind, settings.port), evt_handlers=handlers,
                                     ssl_context=server_context(settings.tls) if settings.tls else None,
                                     server_class=GuardedAssociationServer, limits=limits, report=self.log)
        ae._servers.append(self.server)  # noqa: SLF001 - as AE.start_server does, so shutdown() finds it
        threading.Thread(target=self.server.serve_forever, name="certseg-listener", daemon=True).start()

    def run_forever(self, stopping, poll_s: float = 1.0) -> None:
        self.start()
        self.log({"event": "listening", "aet": self.settings.aet, "bind": self.settings.bind,
                  "port": self.settings.port, "tls": self.settings.tls is not None, "spool": str(self.settings.spool)})
        try:
            while not stopping.wait(poll_s):
                self.work_once()
        finally:
            self.server.shutdown()


@dataclass
class _Unexamined:
    path: Path
    message: str
    status: Status = Status.FAILED
    result: Path | None = None


def _incomplete(dataset: pydicom.Dataset, transfer_syntax: pydicom.uid.UID) -> str | None:
    """Why an image cannot be whole (pydicom drops a truncated last element silently)."""
    if "Image Storage" not in pydicom.uid.UID(str(dataset.get("SOPClassUID", ""))).name:
        return None
    if not all(keyword in dataset for keyword in ("Rows", "Columns", "BitsAllocated", "PixelData")):
        return "an image without its pixel description or data (truncated?)"
    if transfer_syntax.is_compressed:
        return None
    expected = declared_pixel_bytes(dataset)
    if len(dataset.PixelData) < expected:
        return f"truncated pixel data ({len(dataset.PixelData)} of {expected} bytes)"
    return None

