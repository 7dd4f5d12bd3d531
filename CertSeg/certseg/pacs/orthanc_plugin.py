"""Automatic certification inside Orthanc: a script for Orthanc's Python plugin.

Orthanc runs this file in its own embedded Python (`"PythonScript"` in Orthanc's configuration),
which does not have CertSeg installed.  So CertSeg is never imported here: the script runs the
`certseg` command of CertSeg's own environment as a separate process, named in Orthanc's
configuration:

    "PythonScript": "<this file>",
    "CertSeg": {"Command": ["/opt/certseg/.venv/bin/certseg"],   // required
                "Arguments": ["--no-denoiser"],                    // optional, added to `certify`
                "SendCapture": true, "SendPdf": true}              // optional: the overlay image, the PDF page

When a study becomes stable (STABLE_STUDY), a worker thread downloads its CR and DX instances,
runs `certseg certify` on them and stores each DICOM SEG back into Orthanc.  A study that already
holds a CertSeg SEG is skipped: without that check the stored SEG would make the study change,
become stable again and be certified forever.
"""

import json
import os
import queue
import subprocess
import tempfile
import threading

import orthanc

CHEST_RADIOGRAPH_MODALITIES = ("CR", "DX")
CERTSEG_SERIES_DESCRIPTION = "CertSeg certified segmentation"  # as certseg's SEG writer names its series


# What goes back into the study per certified radiograph, in order (certseg.files names them for the backend;
# this script cannot import CertSeg): the SEG, the SR, the secondary capture, the report as Encapsulated PDF.
SEG, SR, CAPTURE, PDF = "seg.dcm", "measurements.dcm", "capture.dcm", "report-pdf.dcm"


def _settings():
    settings = json.loads(orthanc.GetConfiguration()).get("CertSeg", {})
    command = settings.get("Command")
    if not command:
        raise RuntimeError('CertSeg plugin: set "CertSeg": {"Command": [...]} in Orthanc\'s configuration')
    sent = [SEG, SR] + [CAPTURE] * bool(settings.get("SendCapture", True)) + [PDF] * bool(settings.get("SendPdf", True))
    return list(command), list(settings.get("Arguments", [])), sent


def _get(uri):
    return json.loads(orthanc.RestApiGet(uri))


def already_certified(series):
    return any(s["MainDicomTags"].get("Modality") == "SEG"
               and s["MainDicomTags"].get("SeriesDescription") == CERTSEG_SERIES_DESCRIPTION for s in series)


def certify_study(study_id, command, arguments, sent=(SEG, SR, CAPTURE, PDF)):
    series = _get(f"/studies/{study_id}/series")
    if already_certified(series):
        orthanc.LogWarning(f"CertSeg: study {study_id} already holds a CertSeg SEG; skipped")
        return
    radiographs = [instance for s in series if s["MainDicomTags"].get("Modality") in CHEST_RADIOGRAPH_MODALITIES
                   for instance in s["Instances"]]
    if not radiographs:
        return
    with tempfile.TemporaryDirectory(prefix="certseg-orthanc-") as folder:
        inputs, results = os.path.join(folder, "in"), os.path.join(folder, "out")
        os.mkdir(inputs)
        for index, instance in enumerate(radiographs):
            with open(os.path.join(inputs, f"{index:05d}.dcm"), "wb") as stream:
                stream.write(orthanc.RestApiGet(f"/instances/{instance}/file"))
        done = subprocess.run([*command, "certify", inputs, "--out", results, "--quiet", "--no-zip", *arguments],
                              capture_output=True, text=True, errors="replace")
        stored = 0
        for root, _, files in os.walk(results):
            if SEG not in files:
                continue
            for name in sent:
                if name in files:
                    with open(os.path.join(root, name), "rb") as stream:
                        orthanc.RestApiPost("/instances", stream.read())
            stored += 1
    message = f"CertSeg: study {study_id}: {stored} SEG stored (exit {done.returncode})"
    if done.returncode != 0:  # certify's own one-line reasons (each refused file, or why nothing was certified)
        reasons = done.stderr.strip().splitlines()[-20:] or ["no reason given"]
        orthanc.LogWarning(f"{message}: " + " | ".join(line.strip() for line in reasons))
    else:
        orthanc.LogWarning(message)


def _work(jobs, command, arguments, sent):
    while True:
        study_id = jobs.get()
        if study_id is None:
            return
        try:
            certify_study(study_id, command, arguments, sent)
        except Exception as error:  # noqa: BLE001 - one study's failure must not stop the worker
            orthanc.LogError(f"CertSeg: study {study_id} failed: {error}")


def _install():
    command, arguments, sent = _settings()
    jobs = queue.Queue()
    worker = threading.Thread(target=_work, args=(jobs, command, arguments, sent), daemon=True)
    worker.start()

    def on_change(change_type, level, resource_id):
        # Orthanc's callback thread must return quickly: the work happens in the worker.
        if change_type == orthanc.ChangeType.STABLE_STUDY:
            jobs.put(resource_id)
        elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
            jobs.put(None)

    orthanc.RegisterOnChangeCallback(on_change)
    orthanc.LogWarning(f"CertSeg: certifying stable studies with {command}")


_install()
