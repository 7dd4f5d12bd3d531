"""A real `certseg listen` process for the tests, and the peers that talk to it (DCMTK, pynetdicom, raw TCP)."""

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from support.orthanc import free_port
from support.tools import require_tool

FAST = ["--no-denoiser", "--n0", "2", "--n", "80", "--quiet"]
DCMTK_STORESCU = "/usr/bin/storescu"  # pynetdicom installs a storescu of its own into the environment


class RunningListener:
    """`certseg listen` on a loopback port, sending to `destination_port` (a DIMSE server called ORTHANC)."""

    def __init__(self, folder: Path, destination_port: int | None, *extra, force: bool = True):
        self.folder, self.port, self.log_path = folder, free_port(), folder / f"listener-{time.time_ns()}.log"
        config = folder / "pacs.json"
        config.write_text(json.dumps({"servers": {"archive": {"dimse": {
            "host": "127.0.0.1", "port": destination_port or free_port(), "called_aet": "ORTHANC"}}}}))
        self.args = [sys.executable, "-m", "certseg", "listen", "--aet", "CERTSEG", "--port", str(self.port),
                     "--spool", str(folder / "spool"), "--allow", "STORESCU", "--idle", "2", "--send-to", "archive",
                     "--config", str(config), *map(str, extra), *FAST, *(["--force"] if force else [])]
        self.start()

    def start(self):
        self.log = open(self.log_path, "a")
        started_after = len(self.records())
        self.process = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_for(lambda r: r["event"] == "listening", after=started_after)

    def records(self):
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.startswith("{")]

    def events(self, name):
        return [r for r in self.records() if r["event"] == name]

    def wait_for(self, condition, timeout_s=120, after=0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [r for r in self.records()[after:] if condition(r)]
            if found:
                return found[0]
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            time.sleep(0.2)
        pytest.fail(f"listener never logged what was expected: {self.log_path.read_text()[-3000:]}")

    def peak_memory_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1024

    def stop(self, sig=signal.SIGTERM):
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=60)
        self.log.close()


def storescu(port, *paths, aet="STORESCU"):
    require_tool("storescu")
    return subprocess.run([DCMTK_STORESCU, "-aet", aet, "-aec", "CERTSEG", "127.0.0.1", str(port),
                           *map(str, paths)], capture_output=True, text=True)


def c_store(port, dataset_or_path, aet="STORESCU", syntax=pydicom.uid.ExplicitVRLittleEndian, host="127.0.0.1",
            sop_class=pydicom.uid.ComputedRadiographyImageStorage):
    """One C-STORE with pynetdicom; returns the status code (None: association rejected or aborted).

    UIDs are not checked on this side: a hostile peer sends whatever it likes."""
    from pynetdicom import AE, _config

    _config.VALIDATORS["UI"] = lambda value: (True, "")

    ae = AE(ae_title=aet)
    ae.add_requested_context(sop_class, syntax)
    association = ae.associate(host, port, ae_title="CERTSEG")
    if not association.is_established:
        return None
    try:
        status = association.send_c_store(dataset_or_path)
        return int(status.Status) if status else None
    finally:
        association.release()


def second_instance(path, folder, name="second.dcm"):
    """Another radiograph of the same study (new series and instance)."""
    dataset = pydicom.dcmread(path)
    dataset.SeriesInstanceUID, dataset.SOPInstanceUID = generate_uid(), generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.save_as(folder / name, enforce_file_format=True)
    return folder / name


@contextlib.contextmanager
def idle_sockets(port: int, count: int, source: str = "127.0.0.2", payload: bytes = b""):
    """`count` TCP connections from `source` that send `payload` (default: not a byte) and then nothing more,
    reopened whenever the node closes one."""
    stop = threading.Event()
    opened = []

    def hold():
        while not stop.is_set():
            with socket.socket() as connection:
                connection.bind((source, 0))
                try:
                    connection.connect(("127.0.0.1", port))
                except OSError:
                    time.sleep(0.1)
                    continue
                opened.append(1)
                with contextlib.suppress(OSError):
                    connection.sendall(payload)
                connection.settimeout(0.2)
                while not stop.is_set():  # until the node closes it (recv returns b"" or fails)
                    try:
                        if connection.recv(64) == b"":
                            break
                    except TimeoutError:
                        continue
                    except OSError:
                        break

    threads = [threading.Thread(target=hold, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield opened
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)


class SlowStorageSCP:
    """A real DICOM storage SCP (pynetdicom) that holds its first C-STORE until `release` is set."""

    def __init__(self):
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

        self.port, self.release, self.first_arrived = free_port(), threading.Event(), threading.Event()
        self.stored: list[pydicom.Dataset] = []
        ae = AE(ae_title="ORTHANC")
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event):
        self.first_arrived.set()
        self.release.wait(timeout=40)  # below the listener's DIMSE timeout
        self.stored.append(event.dataset)
        return 0x0000

    def referenced_instances(self) -> set[str]:
        return {str(item.ReferencedSOPInstanceUID) for seg in self.stored if seg.Modality == "SEG"
                for series in seg.ReferencedSeriesSequence for item in series.ReferencedInstanceSequence}

    def close(self):
        self.release.set()
        self.server.shutdown()
