"""`certseg listen` as a DICOM node: storescu in, SEG out to a real Orthanc, restarts and hostile peers."""

import copy
import json
import signal

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from support.dicom_files import write_cr_with_spacing
from support.listener import RunningListener, SlowStorageSCP, c_store, second_instance, storescu
from support.orthanc import free_port, running_orthanc

@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.mark.slow
def test_storescu_in_seg_out_in_the_destination_pacs(orthanc, tmp_path):
    listener = RunningListener(tmp_path, orthanc.dicom_port)
    try:
        source = write_cr_with_spacing(tmp_path / "cr.dcm", "calibrated", seed=21)
        assert storescu(listener.port, source).returncode == 0
        study = str(pydicom.dcmread(source).StudyInstanceUID)
        listener.wait_for(lambda r: r["event"] == "sent" and r["study"] == study)
        # SEG, measurement SR, secondary capture (OT) and PDF report (DOC) went to the PACS (the CR never did)
        assert orthanc.series_modalities(study) == ["DOC", "OT", "SEG", "SR"]
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
    listener = RunningListener(tmp_path, orthanc.dicom_port, "--idle", "5", "--no-capture", "--no-pdf")
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
    listener = RunningListener(tmp_path, orthanc.dicom_port, "--max-object-mb", "1")
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


@pytest.mark.slow
def test_an_image_received_while_its_study_is_being_sent_is_certified_and_sent_too(tmp_path):
    """The send of the first image's results is held by a slow destination; a second image of the study
    arrives meanwhile.  It used to be acknowledged, then deleted with the sent study, never certified."""
    destination = SlowStorageSCP()
    listener = RunningListener(tmp_path, destination.port)
    try:
        first = write_cr_with_spacing(tmp_path / "first.dcm", "calibrated", seed=26)
        second = second_instance(first, tmp_path)
        study = str(pydicom.dcmread(first).StudyInstanceUID)
        assert c_store(listener.port, pydicom.dcmread(first)) == 0x0000
        assert destination.first_arrived.wait(timeout=120), listener.log_path.read_text()[-2000:]
        assert c_store(listener.port, pydicom.dcmread(second)) == 0x0000  # while the send is held
        destination.release.set()
        listener.wait_for(lambda r: r["event"] == "sent" and r["study"] == study)
        listener.wait_for(lambda r: r["event"] == "certified" and r["study"] == study, after=0)
        second_sent = listener.wait_for(lambda r: r["event"] == "sent" and r["study"] == study,
                                        after=[i for i, r in enumerate(listener.records()) if r["event"] == "sent"][0] + 1)
        assert second_sent["objects"] == 4  # its SEG, SR, capture and PDF
        sources = {str(pydicom.dcmread(p).SOPInstanceUID) for p in (first, second)}
        assert destination.referenced_instances() == sources
        assert [r["radiographs"] for r in listener.events("certified")] == [1, 1]  # each certified once
        assert not list((tmp_path / "spool" / "studies").rglob("*.dcm"))
    finally:
        listener.stop()
        destination.close()


@pytest.mark.slow
def test_non_chest_and_failed_studies_leave_the_queue_and_failures_carry_the_pipelines_reason(tmp_path):
    """Without --force: CT traffic is acknowledged, logged and removed, so it cannot fill the queue; a CR the
    out-of-distribution check refuses moves to failed/ with that reason; a chest CR still gets in."""
    listener = RunningListener(tmp_path, None, "--max-queue-mb", "0.25", "--max-failed-mb", "0.2", "--retry-hours",
                               "0.0005", force=False)
    try:
        source = pydicom.dcmread(write_cr_with_spacing(tmp_path / "cr.dcm", "calibrated", seed=27))
        for index in range(3):  # each about 96 kB: three together would overflow the 0.25 MB queue
            ct = copy.deepcopy(source)
            ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
            ct.Modality = "CT"
            assert c_store(listener.port, ct) == 0x0000, index
            ignored = listener.wait_for(lambda r: r["event"] == "ignored" and r["study"] == str(ct.StudyInstanceUID))
            assert "modality CT" in ignored["reason"]
        noise = copy.deepcopy(source)
        noise.StudyInstanceUID, noise.SOPInstanceUID = generate_uid(), generate_uid()
        noise.PixelData = np.random.default_rng(5).integers(0, 4096, (240, 200), dtype=np.uint16).tobytes()
        assert c_store(listener.port, noise) == 0x0000
        failed = listener.wait_for(lambda r: r["event"] == "failed" and r["study"] == str(noise.StudyInstanceUID))
        assert "refused by " in failed["reason"]
        kept = list((tmp_path / "spool" / "failed").rglob("*.dcm"))
        assert len(kept) == 1
        reasons = json.loads((kept[0].parent / "reasons.json").read_text())
        assert "refused by " in reasons[kept[0].name]
        assert c_store(listener.port, source) == 0x0000  # the queue is not full of what was never ours
        study_records = [json.loads(p.read_text()) for p in (tmp_path / "spool" / "studies").glob("*/study.json")]
        assert sorted(r["state"] for r in study_records) == ["done", "done", "done", "done", "receiving"]
        assert not list((tmp_path / "spool" / "studies").glob("*/*/*.dcm"))[1:]  # only the chest CR waits
    finally:
        listener.stop()


@pytest.mark.slow
def test_results_outlive_a_maintenance_window_and_are_sent_after_a_restart(tmp_path):
    """The destination is down longer than the retry window: the results are kept as unsent, every retry is
    logged, and once the PACS is back a restarted listener sends them (they used to be dropped as failed)."""
    port = free_port()
    listener = RunningListener(tmp_path, port, "--retry-hours", "0.002", "--max-retry-interval", "2", "--no-capture")
    source = write_cr_with_spacing(tmp_path / "cr.dcm", "calibrated", seed=28)
    study = str(pydicom.dcmread(source).StudyInstanceUID)
    try:
        assert storescu(listener.port, source).returncode == 0
        unsent = listener.wait_for(lambda r: r["event"] == "unsent" and r["study"] == study)
        assert "tried again when the listener restarts" in unsent["reason"]
        retries = [r for r in listener.events("retry") if r["study"] == study]
        assert len(retries) >= 2 and all(r["in_s"] <= 2 for r in retries)
    finally:
        listener.stop()
    with running_orthanc(tmp_path / "orthanc", extra={"DicomPort": port}) as orthanc:
        after = len(listener.records())
        listener.start()
        try:
            listener.wait_for(lambda r: r["event"] == "resumed" and r["study"] == study, after=after)
            listener.wait_for(lambda r: r["event"] == "sent" and r["study"] == study, after=after)
            assert orthanc.series_modalities(study) == ["DOC", "SEG", "SR"]  # --no-capture: no OT
        finally:
            listener.stop()
    assert [r["radiographs"] for r in listener.events("certified")] == [1]  # certified once, sent after restart


def test_an_instance_sent_again_with_other_pixels_is_certified_anew_not_answered_with_its_old_seg(tmp_path, small_cr):
    """The same SOP Instance UID received again with different pixels after its study was sent: the old SEG used
    to be sent again as the certificate of the new pixels."""
    archive = SlowStorageSCP()
    archive.release.set()
    listener = RunningListener(tmp_path, archive.port)
    try:
        assert c_store(listener.port, small_cr) == 0x0000
        listener.wait_for(lambda r: r["event"] == "sent", timeout_s=120)
        changed = pydicom.dcmread(small_cr)
        pixels = changed.pixel_array.copy()
        pixels[: pixels.shape[0] // 2] = pixels[: pixels.shape[0] // 2] // 2  # other pixels, same UIDs
        changed.PixelData = pixels.tobytes()
        before = len(listener.records())
        assert c_store(listener.port, changed) == 0x0000
        listener.wait_for(lambda r: r["event"] == "sent", after=before, timeout_s=120)
        superseded = listener.events("superseded")
        assert superseded and "certified other pixels" in superseded[0]["reason"]
        segs = [d for d in archive.stored if d.Modality == "SEG"]
        assert len(segs) == 2 and segs[0].SOPInstanceUID != segs[1].SOPInstanceUID
        from certseg.dicom.reading import read_radiograph
        from certseg.record import Report

        changed.save_as(tmp_path / "changed.dcm", enforce_file_format=True)
        report = Report.read(next((tmp_path / "spool" / "results").rglob("report.json")))
        assert report.source.pixel_sha256 == read_radiograph(tmp_path / "changed.dcm", force=True).pixel_sha256
    finally:
        listener.stop()
        archive.close()
