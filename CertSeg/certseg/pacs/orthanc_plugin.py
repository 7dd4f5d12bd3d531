"""Automatic certification inside Orthanc: a script for Orthanc's Python plugin.

Orthanc runs this file in its own embedded Python (`"PythonScript"` in Orthanc's configuration),
which does not have CertSeg installed.  So CertSeg is never imported here: the script runs the
`certseg` command of CertSeg's own environment as a separate process, named in Orthanc's
configuration:

    "PythonScript": "<this file>",
    "CertSeg": {"Command": ["/opt/certseg/.venv/bin/certseg"],   // required
                "Arguments": ["--no-denoiser"],                    // optional, added to `certify`
                "SendCapture": true, "SendPdf": true,              // optional: the overlay image, the PDF page
                "TimeoutSecondsPerRadiograph": 600}                // optional: then the certification is stopped

When a study becomes stable (STABLE_STUDY), a worker thread downloads its CR and DX instances that
CertSeg has not yet examined, runs `certseg certify` on them (stopped, with its whole process group,
after the timeout) and stores each DICOM SEG and its companions back into Orthanc.

Which radiographs are done is recorded on the radiograph itself, as Orthanc metadata no DICOM peer can
set: EXAMINED_MD5 holds the MD5 of the file CertSeg examined, EXAMINED_OUTCOME what came of it.  A
study is skipped when every radiograph's file is the one examined; a SEG that merely calls itself
CertSeg's (any peer can title a series so) blocks nothing, and a radiograph whose file changed under
the same identifiers is examined again.  Without the record, the stored SEG would make the study
change, become stable again and be certified for ever.
"""

import json
import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
import unicodedata

import orthanc

CHEST_RADIOGRAPH_MODALITIES = ("CR", "DX")
EXAMINED_MD5, EXAMINED_OUTCOME = 1024, 1025  # user-defined metadata indices (Orthanc allows 1024-65535)
DEFAULT_TIMEOUT_S = 600.0

# What goes back into the study per certified radiograph, in order (certseg.files names them for the backend;
# this script cannot import CertSeg): the SEG, the SR, the secondary capture, the report as Encapsulated PDF.
SEG, SR, CAPTURE, PDF = "seg.dcm", "measurements.dcm", "capture.dcm", "report-pdf.dcm"


def printable(text):
    """Control, format and separator characters escaped: a file's values never forge a line of Orthanc's log."""
    return "".join(c if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp") else repr(c)[1:-1] for c in str(text))


def _settings():
    settings = json.loads(orthanc.GetConfiguration()).get("CertSeg", {})
    command = settings.get("Command")
    if not command:
        raise RuntimeError('CertSeg plugin: set "CertSeg": {"Command": [...]} in Orthanc\'s configuration')
    sent = [SEG, SR] + [CAPTURE] * bool(settings.get("SendCapture", True)) + [PDF] * bool(settings.get("SendPdf", True))
    timeout = float(settings.get("TimeoutSecondsPerRadiograph", DEFAULT_TIMEOUT_S))
    return list(command), list(settings.get("Arguments", [])), sent, timeout


def _get(uri):
    return json.loads(orthanc.RestApiGet(uri))


def _md5(instance):
    return orthanc.RestApiGet(f"/instances/{instance}/attachments/dicom/md5").decode().strip()


def _examined_md5(instance):
    try:
        return orthanc.RestApiGet(f"/instances/{instance}/metadata/{EXAMINED_MD5}").decode()
    except Exception:  # noqa: BLE001 - Orthanc raises when the metadata is not set
        return None


def _record(instance, md5, outcome):
    orthanc.RestApiPut(f"/instances/{instance}/metadata/{EXAMINED_MD5}", md5)
    orthanc.RestApiPut(f"/instances/{instance}/metadata/{EXAMINED_OUTCOME}", outcome)


def not_yet_examined(study_id):
    """{instance: md5} of the study's CR and DX instances whose present file CertSeg has not examined."""
    pending = {}
    for series in _get(f"/studies/{study_id}/series"):
        if series["MainDicomTags"].get("Modality") not in CHEST_RADIOGRAPH_MODALITIES:
            continue
        for instance in series["Instances"]:
            md5 = _md5(instance)
            if _examined_md5(instance) != md5:
                pending[instance] = md5
    return pending


def _run(command, timeout_s):
    """The certify process, stopped with its whole process group when it runs past `timeout_s`."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                               start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=timeout_s)
        return process.returncode, stderr
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return None, ""


def certify_study(study_id, command, arguments, sent=(SEG, SR, CAPTURE, PDF), timeout_s=DEFAULT_TIMEOUT_S):
    pending = not_yet_examined(study_id)
    if not pending:
        orthanc.LogWarning(f"CertSeg: study {study_id}: every radiograph already examined; skipped")
        return
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="certseg-orthanc-") as folder:
        inputs, results = os.path.join(folder, "in"), os.path.join(folder, "out")
        os.mkdir(inputs)
        for index, instance in enumerate(pending):
            with open(os.path.join(inputs, f"{index:05d}.dcm"), "wb") as stream:
                stream.write(orthanc.RestApiGet(f"/instances/{instance}/file"))
        limit = timeout_s * len(pending)
        code, stderr = _run([*command, "certify", inputs, "--out", results, "--quiet", "--no-zip", *arguments], limit)
        stored = _store_results(results, sent) if code is not None else 0
    for instance, md5 in pending.items():  # examined, whatever came of it: never examined again unless it changes
        _record(instance, md5, "timed out" if code is None else f"exit {code}")
    if code is None:
        orthanc.LogWarning(f"CertSeg: study {study_id}: certification stopped after {limit:g} s "
                           f"({len(pending)} radiographs, {timeout_s:g} s each); set aside")
        return
    message = f"CertSeg: study {study_id}: {stored} SEG stored (exit {code}, {time.monotonic() - started:.0f} s)"
    if code != 0:  # certify's own one-line reasons (each refused file, or why nothing was certified)
        reasons = stderr.strip().splitlines()[-20:] or ["no reason given"]
        orthanc.LogWarning(printable(f"{message}: " + " | ".join(line.strip() for line in reasons)))
    else:
        orthanc.LogWarning(message)


def _store_results(results, sent):
    stored = 0
    for root, _, files in os.walk(results):
        if SEG not in files:
            continue
        for name in sent:
            if name in files:
                with open(os.path.join(root, name), "rb") as stream:
                    orthanc.RestApiPost("/instances", stream.read())
        stored += 1
    return stored


def _work(jobs, queued, command, arguments, sent, timeout_s):
    while True:
        study_id = jobs.get()
        if study_id is None:
            return
        queued.discard(study_id)
        try:
            certify_study(study_id, command, arguments, sent, timeout_s)
        except Exception as error:  # noqa: BLE001 - one study's failure must not stop the worker
            orthanc.LogError(printable(f"CertSeg: study {study_id} failed: {error}"))


def _install():
    command, arguments, sent, timeout_s = _settings()
    jobs, queued = queue.Queue(), set()
    worker = threading.Thread(target=_work, args=(jobs, queued, command, arguments, sent, timeout_s), daemon=True)
    worker.start()

    def on_change(change_type, level, resource_id):
        # Orthanc's callback thread must return quickly: the work happens in the worker.  A study already
        # waiting is not queued twice: a peer that keeps changing a study cannot fill the queue with it.
        if change_type == orthanc.ChangeType.STABLE_STUDY and resource_id not in queued:
            queued.add(resource_id)
            jobs.put(resource_id)
        elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
            jobs.put(None)

    orthanc.RegisterOnChangeCallback(on_change)
    orthanc.LogWarning(f"CertSeg: certifying stable studies with {command}")


_install()
