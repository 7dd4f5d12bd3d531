"""`certseg listen` as a DICOM node: storescu in, SEG out to a real Orthanc, restarts and hostile peers."""

import json
import signal
import subprocess
import sys
import time

import pydicom
import pytest
from pydicom.uid import generate_uid

from support.dicom_files import write_cr_with_spacing
from support.orthanc import free_port, running_orthanc
from support.tools import require_tool

FAST = ["--no-denoiser", "--n0", "2", "--n", "80", "--quiet", "--force"]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


class RunningListener:
    def __init__(self, folder, orthanc, *extra):
        self.folder, self.port, self.log_path = folder, free_port(), folder / f"listener-{time.time_ns()}.log"
        config = folder / "pacs.json"
        config.write_text(json.dumps({"servers": {"archive": {"dimse": {
            "host": "127.0.0.1", "port": orthanc.dicom_port if orthanc else free_port(), "called_aet": "ORTHANC"}}}}))
        self.args = [sys.executable, "-m", "certseg", "listen", "--aet", "CERTSEG", "--port", str(self.port),
                     "--spool", str(folder / "spool"), "--allow", "STORESCU", "--idle", "2", "--send-to", "archive",
                     "--config", str(config), *extra, *FAST]
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

    def wait_for(self, condition, timeout_s=120, after=0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [r for r in self.records()[after:] if condition(r)]
            if found:
                return found[0]
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            time.sleep(0.2)
        pytest.fail(f"listener never logged what was expected: {self.log_path.read_text()[-3000:]}")

    def stop(self, sig=signal.SIGTERM):
        self.process.send_signal(sig)
        self.process.wait(timeout=30)
        self.log.close()


DCMTK_STORESCU = "/usr/bin/storescu"  # pynetdicom installs a storescu of its own into the environment


def storescu(port, *paths, aet="STORESCU"):
    require_tool("storescu")
    return subprocess.run([DCMTK_STORESCU, "-aet", aet, "-aec", "CERTSEG", "127.0.0.1", str(port),
                           *map(str, paths)], capture_output=True, text=True)


def c_store(port, dataset_or_path, aet="STORESCU"):
    """One C-STORE with pynetdicom; returns the status code (None: association rejected)."""
    from pynetdicom import AE

    ae = AE(ae_title=aet)
    ae.add_requested_context(pydicom.uid.ComputedRadiographyImageStorage, pydicom.uid.ExplicitVRLittleEndian)
    association = ae.associate("127.0.0.1", port, ae_title="CERTSEG")
    if not association.is_established:
        return None
    try:
        status = association.send_c_store(dataset_or_path)
        return int(status.Status) if status else None
    finally:
        association.release()


def second_instance(path, folder):
    """Another radiograph of the same study (new series and instance)."""
    dataset = pydicom.dcmread(path)
    dataset.SeriesInstanceUID, dataset.SOPInstanceUID = generate_uid(), generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.save_as(folder / "second.dcm", enforce_file_format=True)
    return folder / "second.dcm"


@pytest.mark.slow
def test_storescu_in_seg_out_in_the_destination_pacs(orthanc, tmp_path):
    listener = RunningListener(tmp_path, orthanc)
    try:
        source = write_cr_with_spacing(tmp_path / "cr.dcm", "calibrated", seed=21)
        assert storescu(listener.port, source).returncode == 0
        study = str(pydicom.dcmread(source).StudyInstanceUID)
        listener.wait_for(lambda r: r["event"] == "sent" and r["study"] == study)
        assert orthanc.series_modalities(study) == ["SEG", "SR"]  # SEG and measurement SR went to the PACS (the CR never did)
        events = [r["event"] for r in listener.records() if r.get("study") == study]
        assert events == ["received", "certified", "sent"]
        assert not list((tmp_path / "spool" / "studies").rglob("*.dcm"))  # sent: the queue is freed
    finally:
        listener.stop()


@pytest.mark.slow
def test_a_restart_in_the_middle_of_a_study_loses_nothing(orthanc, tmp_path):
    first = write_cr_with_spacing(tmp_path / "first.dcm", "calibrated", seed=22)
    second = second_instance(first, tmp_path)
    study = str(pydicom.dcmread(first).StudyInstanceUID)
    listener = RunningListener(tmp_path, orthanc, "--idle", "5")
    assert storescu(listener.port, first).returncode == 0
    listener.stop(signal.SIGKILL)  # killed before the study was idle
    listener.start()
    assert storescu(listener.port, second).returncode == 0
    try:
        certified = listener.wait_for(lambda r: r["event"] == "certified" and r["study"] == study)
        listener.wait_for(lambda r: r["event"] == "sent" and r["study"] == study)
        assert certified["radiographs"] == 2
        assert orthanc.series_modalities(study) == ["SEG", "SEG", "SR", "SR"]
    finally:
        listener.stop()


def test_hostile_peers_get_clean_refusals_and_the_node_keeps_working(orthanc, tmp_path):
    listener = RunningListener(tmp_path, orthanc, "--max-object-mb", "1")
    try:
        good = write_cr_with_spacing(tmp_path / "good.dcm", "calibrated", seed=23)
        assert c_store(listener.port, pydicom.dcmread(good), aet="INTRUDER") is None  # unknown AE: rejected
        odd = pydicom.dcmread(good)
        odd.SOPInstanceUID = "../../../etc/passwd"
        assert c_store(listener.port, odd) == 0xC210
        big = pydicom.dcmread(good)
        big.SOPInstanceUID = generate_uid()
        big.PixelData = bytes(2 * 2**20)  # an oversized object (the limit is 1 MiB): aborted while it arrives
        assert c_store(listener.port, big) is None
        for cut in (1000, -1000):  # in the header, in the pixel data
            truncated = tmp_path / f"truncated{cut}.dcm"
            truncated.write_bytes(good.read_bytes()[:cut])
            assert c_store(listener.port, truncated) == 0xC210
        assert c_store(listener.port, pydicom.dcmread(good)) == 0x0000  # still serving
        reasons = [r["reason"] for r in listener.records() if r["event"] == "refused"]
        assert ["is not a DICOM UID", "malformed dataset", "malformed dataset"] == [
            next(x for x in ("is not a DICOM UID", "malformed dataset") if x in reason) for reason in reasons]
        aborted = [r for r in listener.records() if r["event"] == "aborted"]
        assert len(aborted) == 1 and "bytes received for one object" in aborted[0]["reason"]
        assert any(r["event"] == "rejected" and "INTRUDER" in r["reason"] for r in listener.records())
        assert all(p.parent.parent.parent == tmp_path / "spool" / "studies"
                   for p in (tmp_path / "spool").rglob("*.dcm"))
    finally:
        listener.stop()


@pytest.mark.slow
def test_a_full_queue_refuses_and_a_dead_destination_is_retried_then_reported(tmp_path):
    listener = RunningListener(tmp_path, None, "--max-queue-mb", "0.15", "--retry-hours", "0.001")
    try:
        first = write_cr_with_spacing(tmp_path / "first.dcm", "calibrated", seed=24)
        second = write_cr_with_spacing(tmp_path / "second.dcm", "calibrated", seed=25)
        assert c_store(listener.port, pydicom.dcmread(first)) == 0x0000
        assert c_store(listener.port, pydicom.dcmread(second)) == 0xA700  # 2 x 96 kB > 0.15 MB
        study = str(pydicom.dcmread(first).StudyInstanceUID)
        unsent = listener.wait_for(lambda r: r["event"] == "unsent" and r["study"] == study)
        assert "send failed" in unsent["reason"] and "tried again when the listener restarts" in unsent["reason"]
        assert any(r["event"] == "retry" and r["study"] == study for r in listener.records())
        assert any(r["event"] == "refused" and r["reason"] == "queue full" for r in listener.records())
    finally:
        listener.stop()
