"""`certseg certify --engine ray` on a local Ray (this machine's CPUs), against the one-process path.

Same outcomes, exit code and certificates with --seed; a rerun resumes; a worker killed in the middle of an
image loses nothing and certifies nothing twice.  Each run is a real `certseg` process starting a real Ray."""

import csv
import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pydicom
import pytest

from support.dicom_files import SAMPLE_CR, write_cr_with_spacing

FAST = ["--no-denoiser", "--n0", "2", "--n", "80", "--quiet", "--force"]
pytestmark = pytest.mark.slow


def certseg(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "certseg", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def export_with_radiographs(folder, count, broken=False):
    folder.mkdir()
    for index in range(count):
        write_cr_with_spacing(folder / f"cr{index}.dcm", "calibrated", seed=80 + index)
    if broken:
        ct = pydicom.dcmread(folder / "cr0.dcm")
        ct.Modality, ct.SOPInstanceUID = "CT", pydicom.uid.generate_uid()
        ct.file_meta.MediaStorageSOPInstanceUID = ct.SOPInstanceUID
        ct.save_as(folder / "ct.dcm", enforce_file_format=True)
        data = (folder / "cr1.dcm").read_bytes()
        (folder / "truncated.dcm").write_bytes(data[: len(data) // 2])
        (folder / "notes.txt").write_text("not DICOM\n")
    return folder


def outcome_lines(run):
    """{file name: status} from certify's per-file lines."""
    found = {}
    for line in (run.stdout + run.stderr).splitlines():
        head, _, rest = line.partition(": ")
        if head.startswith("/") and rest.split(":")[0] in ("certified", "kept", "skipped", "failed"):
            found[head.rsplit("/", 1)[1]] = rest.split(":")[0]
    return found


def table(out):
    with open(out / "certseg-outcomes.csv") as stream:
        return list(csv.DictReader(stream))


def test_ray_gives_the_outcomes_exit_code_and_certificates_of_one_process(tmp_path):
    """Without --force: two real CRs (the sample with new UIDs) certified, the CT skipped by the gate, the
    truncated file failed, the text file skipped; both engines with the same --seed."""
    export = export_with_radiographs(tmp_path / "export", 2, broken=True)
    for index in range(2):  # the synthetic CRs are refused by the OOD check without --force: real ones instead
        sample = pydicom.dcmread(SAMPLE_CR)
        sample.SOPInstanceUID = sample.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        sample.save_as(export / f"cr{index}.dcm", enforce_file_format=True)
    fast = [a for a in FAST if a != "--force"] + ["--seed", "7"]
    one = certseg("certify", export, "--out", tmp_path / "one", *fast)
    many = certseg("certify", export, "--out", tmp_path / "many", "--engine", "ray", "--workers", "2", *fast)
    assert (one.returncode, many.returncode) == (1, 1), many.stderr[-2000:]
    assert outcome_lines(one) == outcome_lines(many) and len(outcome_lines(one)) == 5
    assert "Traceback" not in many.stderr
    certified = [r for r in table(tmp_path / "many") if r["status"] in ("certified", "failed")]
    assert sorted(r["status"] for r in table(tmp_path / "many")) == ["certified"] * 2 + ["failed"] + ["skipped"] * 2
    for row in certified:
        if row["status"] != "certified":
            continue
        theirs = np.load(row["result"] + "/certificate.npz")
        ours = np.load(row["result"].replace(str(tmp_path / "many"), str(tmp_path / "one")) + "/certificate.npz")
        np.testing.assert_array_equal(theirs["model_labels"], ours["model_labels"])
        np.testing.assert_array_equal(theirs["counts"], ours["counts"])
        report = json.loads((tmp_path / "many").joinpath(row["result"], "report.json").read_text())
        assert report["noise"]["run_seed"] == 7 and float(row["abstain_fraction"]) == report["source_grid"]["abstain_fraction"]
        assert row["segmenter_sha256"] == report["models"]["segmenter"]["sha256"] and row["worker"]
        assert row["model_digest"] == report["model_digest"] and len(row["model_digest"]) == 64


def test_a_rerun_resumes_and_a_worker_killed_mid_image_loses_nothing(tmp_path):
    export = export_with_radiographs(tmp_path / "export", 4)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "certseg", "certify", export, "--out", out, "--engine", "ray",
                                "--workers", "2", *FAST], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and time.monotonic() < deadline and process.poll() is None:
        busy = subprocess.run(["pgrep", "-f", "ray::PoolWorker.run"], capture_output=True, text=True).stdout.split()
        if busy and list(out.rglob("report.json")):  # one image done, another in the middle
            killed = int(busy[0])
            subprocess.run(["kill", "-9", str(killed)])
        time.sleep(0.2)
    stdout, stderr = process.communicate(timeout=600)
    assert killed is not None, stderr[-2000:]
    assert process.returncode == 0, stderr[-2000:]
    rows = table(out)
    assert sorted(r["status"] for r in rows) in (["certified"] * 4, ["certified"] * 3 + ["kept"])
    assert any(int(r["attempts"]) == 2 for r in rows)  # the killed worker's image was done again elsewhere
    assert len(list(out.rglob("report.json"))) == 4 and not list(out.rglob("*.partial"))
    shutil.rmtree(next(out.rglob("report.json")).parent)  # one result gone: the rerun does exactly that one
    again = certseg("certify", export, "--out", out, "--engine", "ray", "--workers", "2", *FAST)
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(outcome_lines(again).values()) == ["certified", "kept", "kept", "kept"]


def test_without_ray_installed_the_engine_is_one_line_and_creates_nothing(tmp_path):
    export = export_with_radiographs(tmp_path / "export", 1)
    code = ("import sys, runpy; sys.modules['ray'] = None; sys.argv = ['certseg', 'certify', %r, '--out', %r, "
            "'--engine', 'ray']; runpy.run_module('certseg', run_name='__main__')") % (str(export), str(tmp_path / "out"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.strip() == 'certseg: error: --engine ray needs Ray: pip install "certseg[scale]"'
    assert not (tmp_path / "out").exists()


def test_evaluate_on_ray_gives_the_rows_of_one_process(tmp_path):
    """Two DRR views, two sigmas, segmenter alone: the protocol's rows equal with the same --seed (timings aside)."""
    from certseg.research.data import write_drr_dataset

    views = write_drr_dataset(tmp_path / "views", count=2, seed=13, size=96, progress=False)
    common = ["--data", views, "--no-denoiser", "--n0", "2", "--n", "80", "--sigma", "0.25", "0.5", "--seed", "3",
              "--quiet"]
    one = certseg("evaluate", *common, "--out", tmp_path / "one")
    many = certseg("evaluate", *common, "--out", tmp_path / "many", "--engine", "ray", "--workers", "2")
    assert one.returncode == 0 and many.returncode == 0, many.stderr[-2000:]

    def rows(folder):
        with open(folder / "evaluation.csv") as stream:
            return [{k: v for k, v in row.items() if k != "seconds_per_image"} for row in csv.DictReader(stream)]

    assert rows(tmp_path / "one") == rows(tmp_path / "many") and len(rows(tmp_path / "one")) > 5
