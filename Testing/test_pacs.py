"""`certseg pacs` against a real Orthanc: pull, certify and push over DICOMweb and DIMSE, TLS, refusals."""

import json
import os
import subprocess
import sys

import pydicom
import pytest

from support.dicom_files import SAMPLE_CR, write_cr_with_spacing
from support.orthanc import PASSWORD, USER, running_orthanc, tls_proxy

FAST = ["--no-denoiser", "--n0", "2", "--n", "80", "--quiet"]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    folder = tmp_path_factory.mktemp("orthanc")
    with running_orthanc(folder) as server:
        server.upload(SAMPLE_CR)  # JPEG 2000, as a real archive holds it
        server.upload(write_cr_with_spacing(folder / "zero_spacing.dcm", "zero", seed=11))
        yield server


def pacs(config: dict, folder, *args, env=None, timeout_s: float = 600):
    return pacs_measured(config, folder, *args, env=env, timeout_s=timeout_s)[0]


# Runs `certseg` and, as it exits, writes its own peak memory (VmHWM, kB) to the file named first.  Read inside
# the process: a forked child's rusage counts the memory its parent (the test runner) held before the exec.
PEAK_REPORTING_CERTSEG = """
import atexit, runpy, sys
peak_file = sys.argv[1]
def report():
    with open("/proc/self/status") as status, open(peak_file, "w") as out:
        out.write(next(line.split()[1] for line in status if line.startswith("VmHWM")))
atexit.register(report)
sys.argv = ["certseg", *sys.argv[2:]]
runpy.run_module("certseg", run_name="__main__")
"""


def pacs_measured(config: dict, folder, *args, env=None, timeout_s: float = 600):
    """`certseg pacs` in a process of its own: its result, and its own peak memory in kB."""
    config_path = folder / "pacs.json"
    config_path.write_text(json.dumps({"servers": config}))
    environment = {**os.environ, "CERTSEG_PACS_CONFIG": str(config_path), **(env or {})}
    peak_file = folder / "pacs-peak-kb.txt"
    run = subprocess.run([sys.executable, "-c", PEAK_REPORTING_CERTSEG, str(peak_file), "pacs", *map(str, args)],
                         capture_output=True, text=True, env=environment, timeout=timeout_s)
    return run, int(peak_file.read_text()) if peak_file.is_file() else None


CREDENTIALS = {"CERTSEG_PACS_USERNAME": USER, "CERTSEG_PACS_PASSWORD": PASSWORD}


@pytest.mark.slow
def test_dicomweb_pull_certify_push_keeps_jpeg2000_and_puts_the_seg_in_the_study(orthanc, tmp_path):
    source = pydicom.dcmread(SAMPLE_CR, stop_before_pixels=True)
    run = pacs({"web": {"dicomweb": orthanc.dicomweb_url}}, tmp_path, "--server", "web",
               "--study", source.StudyInstanceUID, "--out", tmp_path / "out", *FAST, env=CREDENTIALS)
    assert run.returncode == 0, run.stderr
    assert "1 SEG sent" in run.stdout and "1 studies done, 0 studies failed" in run.stdout
    report = json.loads(next((tmp_path / "out").rglob("report.json")).read_text())
    assert report["source"]["transfer_syntax"] == str(source.file_meta.TransferSyntaxUID)  # never transcoded
    # STOW-RS: SEG, SR, the secondary capture (OT) and the Encapsulated PDF (DOC), all back in the study
    assert orthanc.series_modalities(source.StudyInstanceUID) == ["CR", "DOC", "OT", "SEG", "SR"]


@pytest.mark.slow
def test_dimse_find_get_store_with_odd_spacing_ends_with_a_valid_seg_in_the_study(orthanc, tmp_path):
    config = {"archive": {"dimse": {"host": "127.0.0.1", "port": orthanc.dicom_port, "called_aet": orthanc.aet},
                          "calling_aet": "CERTSEG"}}
    source = pydicom.dcmread(orthanc.folder / "zero_spacing.dcm")
    run = pacs(config, tmp_path, "--server", "archive", "--accession", source.AccessionNumber,
               "--out", tmp_path / "out", "--force", "--no-pdf", *FAST)
    assert run.returncode == 0, run.stderr
    # C-STORE: Orthanc accepted the SEG, the SR and the capture; --no-pdf kept the PDF back
    assert orthanc.series_modalities(source.StudyInstanceUID) == ["CR", "OT", "SEG", "SR"]


def test_a_wrong_password_is_one_clear_line(orthanc, tmp_path):
    run = pacs({"web": {"dicomweb": orthanc.dicomweb_url}}, tmp_path, "--server", "web", "--patient-id", "X",
               "--out", tmp_path / "out", *FAST, env={"CERTSEG_PACS_USERNAME": USER, "CERTSEG_PACS_PASSWORD": "wrong"})
    assert run.returncode == 2 and "401" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()


def test_an_unreachable_dimse_peer_is_one_clear_line(tmp_path):
    from support.orthanc import free_port

    config = {"gone": {"dimse": {"host": "127.0.0.1", "port": free_port(), "called_aet": "NOBODY"}}}
    run = pacs(config, tmp_path, "--server", "gone", "--study", "1.2.3", "--out", tmp_path / "out", *FAST)
    assert run.returncode == 2 and "association refused or no answer" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, words", [
    ([], "give a study UID"),
    (["--date-from", "2026-01-01"], "dates are YYYYMMDD"),
    (["--study", "1.2", "--server", "nowhere"], "no server named 'nowhere'"),
])
def test_bad_queries_and_servers_fail_in_one_line(args, words, tmp_path):
    run = pacs({"web": {"dicomweb": "http://127.0.0.1:9/dicom-web"}}, tmp_path, "--server", "web", *args,
               "--out", tmp_path / "out")
    assert run.returncode == 2 and words in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_a_password_in_a_config_file_others_can_read_is_refused(tmp_path):
    config = tmp_path / "pacs.json"
    config.write_text(json.dumps({"servers": {"web": {"dicomweb": "http://127.0.0.1:9/dicom-web", "password": "x"}}}))
    config.chmod(0o644)
    run = subprocess.run([sys.executable, "-m", "certseg", "pacs", "--config", str(tmp_path / "pacs.json"),
                          "--server", "web", "--study", "1.2", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "chmod 600" in run.stderr


@pytest.mark.slow
def test_tls_verifies_the_certificate_by_default_and_trusts_a_given_ca_bundle(orthanc, tmp_path):
    with tls_proxy(tmp_path, orthanc.http_url) as (https_url, certificate):
        source = pydicom.dcmread(SAMPLE_CR, stop_before_pixels=True)
        args = ["--server", "web", "--study", source.StudyInstanceUID, "--no-send", *FAST]
        refused = pacs({"web": {"dicomweb": f"{https_url}/dicom-web"}}, tmp_path, *args, "--out", tmp_path / "a",
                       env=CREDENTIALS)
        assert refused.returncode == 2 and "certificate verify failed" in refused.stderr.lower()
        trusted = pacs({"web": {"dicomweb": f"{https_url}/dicom-web", "ca_bundle": str(certificate)}}, tmp_path,
                       *args, "--out", tmp_path / "b", env=CREDENTIALS)
        assert trusted.returncode == 0, trusted.stderr
        assert "1 retrieved, 1 certified, 0 SEG sent" in trusted.stdout


def orthanc_with_the_plugin(folder, **plugin_settings):
    import certseg.pacs
    from support.orthanc import DICOMWEB_PLUGIN, PYTHON_PLUGIN

    script = os.path.join(os.path.dirname(certseg.pacs.__file__), "orthanc_plugin.py")
    settings = {"PythonScript": script, "CertSeg": {"Command": [sys.executable, "-m", "certseg"],
                                                    "Arguments": [*FAST, "--force"], **plugin_settings}}
    return running_orthanc(folder, plugins=(DICOMWEB_PLUGIN, PYTHON_PLUGIN), extra=settings)


@pytest.mark.slow
def test_the_orthanc_plugin_never_writes_where_a_series_uid_points(tmp_path):
    """Orthanc stores a CR whose SeriesInstanceUID is a path; the plugin's certify refuses it, the log says why."""
    import time

    from support.dicom_files import traversal_uids, write_with_uid

    source = write_cr_with_spacing(tmp_path / "cr.dcm", "calibrated", seed=32)
    escaped = tmp_path / "escaped"
    with orthanc_with_the_plugin(tmp_path / "orthanc") as server:
        for case in ("relative", "absolute"):
            hostile = write_with_uid(source, tmp_path / f"{case}.dcm", "SeriesInstanceUID", traversal_uids(escaped)[case])
            hostile_dataset = pydicom.dcmread(hostile)
            hostile_dataset.StudyInstanceUID = pydicom.uid.generate_uid()
            with pydicom.config.disable_value_validation():
                hostile_dataset.save_as(hostile, enforce_file_format=True)
            server.upload(hostile)
        log = server.folder / "orthanc.log"
        deadline = time.monotonic() + 120
        while log.read_text().count("0 SEG stored (exit 2,") < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        refusals = [line for line in log.read_text().splitlines() if "0 SEG stored (exit 2," in line]
        assert len(refusals) == 2, log.read_text()[-3000:]
        assert all("SeriesInstanceUID" in line and "is not a DICOM UID" in line for line in refusals)
    assert not escaped.exists() and not list(tmp_path.glob("escaped*"))


@pytest.mark.slow
def test_the_orthanc_plugin_certifies_a_new_study_exactly_once(tmp_path):
    import time

    with orthanc_with_the_plugin(tmp_path / "orthanc") as server:
        source = write_cr_with_spacing(tmp_path / "cr.dcm", "calibrated", seed=31)
        study = str(pydicom.dcmread(source).StudyInstanceUID)
        server.upload(source)
        deadline = time.monotonic() + 120
        every = ["CR", "DOC", "OT", "SEG", "SR"]
        while server.series_modalities(study) != every and time.monotonic() < deadline:
            time.sleep(0.5)
        assert server.series_modalities(study) == every, (server.folder / "orthanc.log").read_text()[-3000:]
        log = server.folder / "orthanc.log"
        while "every radiograph already examined; skipped" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)  # the stored SEG made the study change and become stable again (StableAge 2 s)
        assert "every radiograph already examined; skipped" in log.read_text()
        assert server.series_modalities(study) == every


def test_environment_secrets_win_over_the_file_and_a_token_becomes_a_bearer_header(tmp_path):
    from certseg.pacs.config import load_server
    from certseg.pacs.dicomweb import DicomWebPacs

    config = tmp_path / "pacs.json"
    config.write_text(json.dumps({"servers": {"web": {"dicomweb": "https://pacs.example/dicom-web",
                                                      "username": "file-user", "password": "file-secret"}}}))
    config.chmod(0o600)
    server = load_server("web", config, environ={"CERTSEG_PACS_PASSWORD": "env-secret", "CERTSEG_PACS_TOKEN": "t0k"})
    assert (server.username, server.password, server.token, server.verify) == ("file-user", "env-secret", "t0k", True)
    session = DicomWebPacs(server).client._session
    assert session.headers["Authorization"] == "Bearer t0k" and session.auth is None


@pytest.mark.slow
def test_one_failing_study_never_stops_the_others(orthanc, tmp_path):
    """A date range matching the good studies and one whose pixel data is cut short: exit 1, the rest done."""
    broken = pydicom.dcmread(write_cr_with_spacing(tmp_path / "broken.dcm", "calibrated", seed=41))
    broken.PixelData = broken.PixelData[: len(broken.PixelData) // 2]
    broken.save_as(tmp_path / "broken.dcm", enforce_file_format=True)
    orthanc.upload(tmp_path / "broken.dcm")
    run = pacs({"web": {"dicomweb": orthanc.dicomweb_url}}, tmp_path, "--server", "web", "--date-from", "20260101",
               "--date-to", "20260131", "--out", tmp_path / "out", "--no-send", "--force", *FAST, env=CREDENTIALS)
    assert run.returncode == 1, run.stderr
    assert "studies done, 1 studies failed" in run.stdout and "Traceback" not in run.stderr
    assert f"study {broken.StudyInstanceUID}: failed" in run.stderr


@pytest.mark.slow
def test_a_series_uid_that_is_a_path_never_leaves_the_output_folder(orthanc, tmp_path):
    """Pulled over DIMSE from a real Orthanc, a CR whose SeriesInstanceUID is an absolute path: refused, named."""
    from support.dicom_files import traversal_uids, write_with_uid

    escaped = tmp_path / "escaped"
    source = write_cr_with_spacing(tmp_path / "cr.dcm", "calibrated", seed=42)
    hostile = write_with_uid(source, tmp_path / "hostile.dcm", "SeriesInstanceUID", traversal_uids(escaped)["absolute"])
    dataset = pydicom.dcmread(hostile)
    dataset.AccessionNumber, dataset.StudyInstanceUID = "HOSTILE1", pydicom.uid.generate_uid()
    with pydicom.config.disable_value_validation():
        dataset.save_as(hostile, enforce_file_format=True)
    orthanc.upload(hostile)
    config = {"archive": {"dimse": {"host": "127.0.0.1", "port": orthanc.dicom_port, "called_aet": orthanc.aet},
                          "calling_aet": "CERTSEG"}}
    run = pacs(config, tmp_path, "--server", "archive", "--accession", "HOSTILE1", "--out", tmp_path / "out",
               "--force", *FAST)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "SeriesInstanceUID" in run.stderr and "is not a DICOM UID" in run.stderr and "Traceback" not in run.stderr
    assert not escaped.exists() and not list((tmp_path / "out").rglob("seg.dcm"))


@pytest.mark.parametrize("command", ["pacs", "listen"])
def test_without_the_pacs_extra_one_line_names_it_and_nothing_is_made(command, tmp_path):
    args = {"pacs": ["pacs", "--server", "x", "--study", "1.2.3", "--out", str(tmp_path / "out")],
            "listen": ["listen", "--spool", str(tmp_path / "spool"), "--send-to", "sender"]}[command]
    code = ("import sys, runpy; sys.modules['pynetdicom'] = None; sys.modules['dicomweb_client'] = None; "
            f"sys.argv = ['certseg', *{args!r}]; runpy.run_module('certseg', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f'certseg: error: certseg {command} needs the pacs extra (pynetdicom, dicomweb_client missing): '
        'pip install "certseg[pacs]"']
    assert not (tmp_path / "out").exists() and not (tmp_path / "spool").exists()


def test_secrets_are_never_printed_and_any_password_works(orthanc, tmp_path):
    """A token ending in a carriage return was printed whole (the HTTP library quotes the header), a user:password
    in the server URL was printed in 401 errors, and a non-Latin-1 password ended in exit 70."""
    token = "s3cr3t-token-value"
    run = pacs({"web": {"dicomweb": orthanc.dicomweb_url}}, tmp_path, "--server", "web", "--patient-id", "X",
               "--out", tmp_path / "out", *FAST, env={"CERTSEG_PACS_TOKEN": token + "\r"})
    assert run.returncode == 2 and token not in run.stdout + run.stderr, run.stderr
    assert "$CERTSEG_PACS_TOKEN" in run.stderr and "control character" in run.stderr
    password = "url-pass-word"
    in_url = orthanc.dicomweb_url.replace("http://", f"http://someone:{password}@")
    run = pacs({"web": {"dicomweb": in_url}}, tmp_path, "--server", "web", "--patient-id", "X",
               "--out", tmp_path / "out", *FAST)
    assert run.returncode == 2 and "401" in run.stderr and password not in run.stdout + run.stderr, run.stderr
    for wrong in ("pässwörd-€", "密码"):
        run = pacs({"web": {"dicomweb": orthanc.dicomweb_url}}, tmp_path, "--server", "web", "--patient-id", "X",
                   "--out", tmp_path / "out", *FAST, env={"CERTSEG_PACS_USERNAME": USER, "CERTSEG_PACS_PASSWORD": wrong})
        assert run.returncode == 2 and "401" in run.stderr and wrong not in run.stderr, run.stderr
        assert len(run.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("behaviour, limits, words", [
    ("ignores-offset", {}, "repeats its results"),
    ("drips", {"query_seconds": 5}, "took longer than 5 s in all"),
    ("huge", {"max_response_mb": 20}, "exceeds the 20971520-byte limit"),
])
def test_a_misbehaving_dicomweb_server_meets_overall_limits(behaviour, limits, words, tmp_path):
    """A server ignoring `offset` kept pacs querying (1,895 requests in 90 s), one sending a byte a second hung it
    past 150 s, and a 2 GB answer took 8.9 GB of memory: each now ends in one line, in bounded time and memory."""
    import time

    from support.dicomweb_server import MisbehavingDicomWeb

    server = MisbehavingDicomWeb(behaviour)
    try:
        started = time.monotonic()
        run, peak_kb = pacs_measured({"web": {"dicomweb": server.url, **({"limits": limits} if limits else {})}},
                                     tmp_path, "--server", "web", "--patient-id", "X", "--out", tmp_path / "out",
                                     *FAST, timeout_s=60)
        took = time.monotonic() - started
    finally:
        server.close()
    assert run.returncode == 2 and words in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and took < 30
    assert len(server.requests) < 10
    # The client's own peak: about 530 MB of libraries (torch loads before the query), plus at most the 20 MB limit;
    # holding the 200 MB answer (bytes, then text) would add at least 400 MB.
    assert peak_kb < 700_000


def test_an_instance_that_is_not_dicom_fails_its_study_only(tmp_path):
    from support.dicomweb_server import MisbehavingDicomWeb

    server = MisbehavingDicomWeb("bad-part", write_cr_with_spacing(tmp_path / "good.dcm", "calibrated", seed=5))
    try:
        run = pacs({"web": {"dicomweb": server.url}}, tmp_path, "--server", "web", "--patient-id", "X",
                   "--out", tmp_path / "out", "--no-send", "--force", *FAST, timeout_s=300)
    finally:
        server.close()
    assert run.returncode == 1, run.stderr  # one study failed, the other was certified
    assert "study 1.2.3.1: failed" in run.stderr and "not a DICOM object" in run.stderr
    assert "1 studies done, 1 studies failed" in run.stdout and len(list((tmp_path / "out").rglob("seg.dcm"))) == 1


@pytest.mark.slow
def test_a_forged_certseg_seg_does_not_block_its_study_and_a_slow_study_does_not_block_the_next(tmp_path):
    """A SEG titled like CertSeg's blocked its study for ever (the plugin recognised CertSeg's SEG by its title
    alone), and the plugin's one worker ran certify without a time limit."""
    import time

    from pydicom.uid import SegmentationStorage, generate_uid

    source = write_cr_with_spacing(tmp_path / "cr.dcm", "calibrated", seed=33)
    forged = pydicom.dcmread(source)
    forged.Modality, forged.SOPClassUID = "SEG", SegmentationStorage
    forged.SeriesDescription = "CertSeg certified segmentation"
    forged.SeriesInstanceUID, forged.SOPInstanceUID = generate_uid(), generate_uid()
    forged.file_meta.MediaStorageSOPClassUID = SegmentationStorage
    forged.file_meta.MediaStorageSOPInstanceUID = forged.SOPInstanceUID
    forged.save_as(tmp_path / "forged.dcm", enforce_file_format=True)
    study = str(forged.StudyInstanceUID)
    with orthanc_with_the_plugin(tmp_path / "orthanc") as server:
        server.upload(tmp_path / "forged.dcm")
        server.upload(source)
        deadline = time.monotonic() + 120
        while "SR" not in server.series_modalities(study) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert {"CR", "SEG", "SR"} <= set(server.series_modalities(study)), (server.folder / "orthanc.log").read_text()[-3000:]
    slow = write_cr_with_spacing(tmp_path / "slow.dcm", "calibrated", seed=34)
    with orthanc_with_the_plugin(tmp_path / "orthanc-slow", TimeoutSecondsPerRadiograph=1) as server:
        server.upload(slow)
        log = server.folder / "orthanc.log"
        deadline = time.monotonic() + 60
        while "certification stopped after 1 s" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "certification stopped after 1 s" in log.read_text(), log.read_text()[-3000:]
        started = time.monotonic()
        server.upload(write_cr_with_spacing(tmp_path / "next.dcm", "calibrated", seed=35))
        while log.read_text().count("certification stopped after 1 s") < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert log.read_text().count("certification stopped after 1 s") == 2 and time.monotonic() - started < 30
