"""Soak the DICOM node: many studies through `certseg listen` while it and its destination are killed at random.

    python Testing/benchmarks/listener_soak.py [--studies 30] [--chaos-every 10] [--chaos-seconds 180] [--seed 0]
                                               [--out DIR]

A real Orthanc (Debian's package) is the destination PACS; senders are pynetdicom SCUs that, as a modality
does, send each object until the node answers.  Each study has one or two chest CRs (copies of the shipped
2048 x 2048 JPEG 2000 sample, new UIDs) and, one study in three, a CT object the node must acknowledge and drop.  Meanwhile, for the first
`--chaos-seconds` (while studies arrive, are certified and sent), a chaos thread SIGKILLs the listener or
Orthanc every `--chaos-every` seconds on average and starts it again (same spool, same storage, same ports).
Then both stay up until every acknowledged chest radiograph has a SEG in Orthanc or `--drain-minutes` pass.  Prints:

    acknowledged   objects the node answered 0x0000 (chest CRs and CTs)
    refused        C-STOREs answered with an error status
    unanswered     attempts that met a dead or restarting node (tried again)
    certified      acknowledged chest CRs whose SEG is in Orthanc (each counted once)
    duplicates     SEGs in Orthanc beyond one per chest CR (a resend after a kill; harmless, reported)
    lost           acknowledged chest CRs with no SEG at the end: must be 0

Not a test: it runs for minutes and its figures go into the release notes.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).parents[1]))  # Testing/, for support/
from support.dicom_files import SAMPLE_CR  # noqa: E402
from support.orthanc import DICOMWEB_PLUGIN, PASSWORD, USER, free_port  # noqa: E402

FAST = ["--no-denoiser", "--n0", "2", "--n", "80", "--quiet"]  # no --force: the metadata gate and OOD check apply


class Restartable:
    """A process that chaos may SIGKILL and the soak starts again with the same arguments."""

    def __init__(self, name: str, args: list[str], log: Path, ready):
        self.name, self.args, self.log_path, self.ready = name, args, log, ready
        self.process: subprocess.Popen | None = None
        self.kills = 0

    def start(self) -> None:
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not self.ready() and time.monotonic() < deadline:
            time.sleep(0.3)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.kills += 1

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def orthanc(folder: Path) -> tuple[Restartable, int, str]:
    http_port, dicom_port = free_port(), free_port()
    config = {"Name": "CertSegSoak", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
              "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
              "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD}, "DicomAlwaysAllowStore": True,
              "Plugins": [str(DICOMWEB_PLUGIN)]}
    (folder / "orthanc.json").write_text(json.dumps(config))
    url = f"http://127.0.0.1:{http_port}"

    def ready() -> bool:
        import requests

        try:
            return requests.get(f"{url}/system", auth=(USER, PASSWORD), timeout=2).ok
        except requests.RequestException:
            return False

    return Restartable("orthanc", ["Orthanc", str(folder / "orthanc.json")], folder / "orthanc.log", ready), dicom_port, url


def listener(folder: Path, destination_port: int) -> tuple[Restartable, int]:
    port = free_port()
    (folder / "pacs.json").write_text(json.dumps({"servers": {"archive": {"dimse": {
        "host": "127.0.0.1", "port": destination_port, "called_aet": "ORTHANC"}}}}))
    args = [sys.executable, "-m", "certseg", "listen", "--port", str(port), "--spool", str(folder / "spool"),
            "--idle", "3", "--send-to", "archive", "--config", str(folder / "pacs.json"), "--max-retry-interval", "5",
            *FAST]
    log = folder / "listener.log"

    def ready() -> bool:
        return log.exists() and log.read_text().count('"listening"') > node.kills

    node = Restartable("listener", args, log, ready)
    return node, port


def send_until_answered(port: int, dataset: pydicom.Dataset, counts: dict, stop: threading.Event) -> None:
    from pynetdicom import AE

    ae = AE(ae_title="SOAKSCU")
    ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)  # as stored
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    while not stop.is_set():
        association = ae.associate("127.0.0.1", port, ae_title="CERTSEG")
        if association.is_established:
            status = association.send_c_store(dataset)
            association.release()
            if status and int(status.Status) == 0x0000:
                counts["acknowledged"] += 1
                return
            if status:
                counts["refused"] += 1
                return
        counts["unanswered"] += 1
        time.sleep(1.0)


def studies(folder: Path, count: int, rng: random.Random) -> list[list[pydicom.Dataset]]:
    (folder / "template.dcm").write_bytes(SAMPLE_CR.read_bytes())
    result = []
    for _ in range(count):
        study, objects = generate_uid(), []
        for index in range(rng.choice((1, 2)) + (1 if rng.random() < 1 / 3 else 0)):
            dataset = pydicom.dcmread(folder / "template.dcm")
            dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, generate_uid()
            dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            if index == 2:
                dataset.Modality = "CT"  # acknowledged, never certified
            objects.append(dataset)
        result.append(objects)
    return result


def chaos(nodes: list[Restartable], every_s: float, until: float, stop: threading.Event, rng: random.Random,
          events: list) -> None:
    while not stop.wait(rng.expovariate(1 / every_s)) and time.monotonic() < until:
        node = rng.choice(nodes)
        node.kill()
        events.append((round(time.monotonic()), f"killed {node.name}"))
        time.sleep(rng.uniform(0, 4))
        node.start()


def segs_in_orthanc(url: str) -> dict[str, int]:
    """SOP Instance UID of each referenced source -> number of SEGs referencing it."""
    import requests

    auth = (USER, PASSWORD)
    found = requests.post(f"{url}/tools/find", auth=auth, timeout=60,
                          json={"Level": "Instance", "Query": {"Modality": "SEG"}}).json()
    references: dict[str, int] = {}
    for instance in found:
        seg = pydicom.dcmread(io.BytesIO(requests.get(f"{url}/instances/{instance}/file", auth=auth,
                                                                     timeout=60).content))
        for series in seg.ReferencedSeriesSequence:
            for item in series.ReferencedInstanceSequence:
                references[str(item.ReferencedSOPInstanceUID)] = references.get(str(item.ReferencedSOPInstanceUID), 0) + 1
    return references


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=30)
    parser.add_argument("--chaos-every", type=float, default=10.0, help="mean seconds between two kills")
    parser.add_argument("--chaos-seconds", type=float, default=180.0, help="how long the kills go on")
    parser.add_argument("--drain-minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="keep logs and spool here (default: a temporary folder)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    folder = args.out or Path(tempfile.mkdtemp(prefix="certseg-soak-"))
    folder.mkdir(parents=True, exist_ok=True)
    pacs, dicom_port, url = orthanc(folder)
    node, port = listener(folder, dicom_port)
    pacs.start()
    node.start()
    counts = {"acknowledged": 0, "refused": 0, "unanswered": 0}
    stop_chaos, stop_sending, events = threading.Event(), threading.Event(), []
    started = time.monotonic()
    chaos_thread = threading.Thread(target=chaos, args=([node, pacs], args.chaos_every, started + args.chaos_seconds,
                                                        stop_chaos, random.Random(args.seed + 1), events))
    chaos_thread.start()
    chest = []
    try:
        for objects in studies(folder, args.studies, rng):
            for dataset in objects:
                send_until_answered(port, dataset, counts, stop_sending)
                if dataset.Modality != "CT":
                    chest.append(str(dataset.SOPInstanceUID))
            time.sleep(rng.uniform(0, 2))
        chaos_thread.join()  # the kills go on while the node certifies and sends, until --chaos-seconds
        deadline = time.monotonic() + 60 * args.drain_minutes
        while time.monotonic() < deadline:
            if node.process.poll() is not None:
                node.start()
            if pacs.process.poll() is not None:
                pacs.start()
            references = segs_in_orthanc(url)
            if all(sop in references for sop in chest):
                break
            time.sleep(5)
    finally:
        stop_chaos.set()
        stop_sending.set()
        node.stop()
        pacs.stop()
    references = segs_in_orthanc_safe(pacs, url)
    certified = sum(sop in references for sop in chest)
    duplicates = sum(max(references.get(sop, 0) - 1, 0) for sop in chest)
    print(f"soak: {args.studies} studies, {len(chest)} chest CRs, {time.monotonic() - started:.0f} s, "
          f"{node.kills} listener kills, {pacs.kills} Orthanc kills; logs in {folder}")
    for key, value in {**counts, "certified": certified, "duplicates": duplicates, "lost": len(chest) - certified}.items():
        print(f"  {key:13s} {value}")


def segs_in_orthanc_safe(pacs: Restartable, url: str) -> dict[str, int]:
    """Count once more with Orthanc up (it was stopped with the listener)."""
    pacs.start()
    try:
        return segs_in_orthanc(url)
    finally:
        pacs.stop()


if __name__ == "__main__":
    main()
