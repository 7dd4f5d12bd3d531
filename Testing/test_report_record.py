"""report.json as one typed record (certseg.record.Report): what the backend writes reads back whole, a damaged
report is refused naming the key, and no writer outside the record reads a report by string keys."""

import ast
import dataclasses
import json
from dataclasses import replace
from pathlib import Path

import pytest

from certseg.record import RatioVerdict, Report, ReportError
from certseg.scale.table import OutcomeRow

PACKAGE = Path(__file__).parents[1] / "CertSeg"


def sample_report(certified_sample) -> tuple[dict, Report]:
    path = certified_sample[2] / "report.json"
    return json.loads(path.read_text()), Report.read(path)


def test_the_backends_report_reads_back_and_writes_the_same_document(certified_sample):
    data, report = sample_report(certified_sample)
    assert report.to_json() == data  # every key the backend writes is a field of the record, and nothing is lost
    assert json.dumps(report.to_json()) == json.dumps(data)  # not even an int turned into a float
    assert report.source.uids == (data["source"]["study_instance_uid"], data["source"]["series_instance_uid"],
                                  data["source"]["sop_instance_uid"])
    assert report.source.slicer_grid.spacing_from == data["source"]["slicer_grid"]["from"]
    assert report.measurements.cardiothoracic_ratio.verdict in tuple(RatioVerdict)
    assert report.parameters.confidence == pytest.approx(1 - data["parameters"]["alpha"])


def test_a_report_of_an_earlier_version_without_classes_still_reads(certified_sample):
    """Reports written before overlapping structures name no classes: one class per structure."""
    data, report = sample_report(certified_sample)
    names = [s.name for s in report.structures]
    assert [c.structures for c in report.segmenter_classes][: len(names) + 1] == [()] + [(name,) for name in names]
    older = {key: value for key, value in data.items() if key != "segmenter_classes"}
    assert Report.from_json(older).segmenter_classes == () and Report.from_json(older).structures == report.structures


@pytest.mark.parametrize("damage, named", [
    (lambda d: d["radius"].pop("model_space"), "report.radius has no 'model_space'"),
    (lambda d: d["source_grid"].update(abstain_fraction="half"), "report.source_grid.abstain_fraction must be a number"),
    (lambda d: d["parameters"].update(correction="sidak"), "report.parameters.correction must be one of"),
    (lambda d: d["measurements"]["structures"][0]["area_pixels"].update(low=True), "area_pixels.low must be a number"),
    (lambda d: d["source_grid"].update(shape=[2048]), "report.source_grid.shape must hold 2 values"),
    (lambda d: d.update(structures={}), "report.structures must be a list"),
    (lambda d: d["models"]["segmenter"].update(name=7), "report.models.segmenter.name must be str"),
])
def test_a_damaged_report_is_refused_naming_the_key(certified_sample, tmp_path, damage, named):
    data, _ = sample_report(certified_sample)
    damage(data)
    path = tmp_path / "report.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ReportError) as refused:
        Report.read(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: ") and named in message and "\n" not in message


def test_a_file_that_is_not_a_report_is_one_line(tmp_path):
    for name, content in (("text.json", b"not json"), ("list.json", b"[1, 2]"), ("binary.json", b"\xff\xfe\x00")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ReportError, match=f"^{tmp_path / name}: "):
            Report.read(tmp_path / name)
    with pytest.raises(ReportError, match="unreadable report"):
        Report.read(tmp_path / "absent.json")


def test_a_report_with_keys_this_version_does_not_know_still_reads(certified_sample):
    """The previous release wrote the per-image seed into `parameters`; a newer one may add keys."""
    data, report = sample_report(certified_sample)
    data["parameters"]["seed"] = 12345
    data["from_a_newer_version"] = {"anything": 1}
    assert Report.from_json(data) == report


def test_the_outcome_table_keeps_a_row_whose_report_cannot_be_read(certified_sample, tmp_path):
    good = OutcomeRow(file="a.dcm", status="kept", reason="result kept").add_report(certified_sample[2])
    _, report = sample_report(certified_sample)
    assert good.sop_uid == report.source.sop_instance_uid and good.segmenter_sha256 == report.segmenter.sha256
    assert good.areas == {s.name: s.certified_area_mm2 for s in report.structures} and good.area_unit == "mm2"
    (tmp_path / "report.json").write_text("{}")
    bad = OutcomeRow(file="b.dcm", status="kept", reason="result kept").add_report(tmp_path)
    assert bad.reason.startswith("result kept; no figures: ") and "has no 'certseg_version'" in bad.reason
    assert bad.areas == {} and bad.abstain_fraction is None


def test_the_typed_record_is_what_the_writers_change(certified_sample):
    """replace() on the record is how a caller changes a report: frozen, so no writer edits one in place."""
    _, report = sample_report(certified_sample)
    with pytest.raises(AttributeError):
        report.denoiser = False  # type: ignore[misc]
    assert replace(report, denoiser=False).to_json()["denoiser"] is False


REPORT_KEYS = {field.name for field in dataclasses.fields(Report)}


def report_subscripts(path: Path, root: Path = PACKAGE) -> list[str]:
    """Reads of report.json by string key in `path`, whatever the variable is called: `x["measurements"]`,
    `json.loads(text).get("radius")`.  A mapping inside the typed record (`report.models["denoiser"]`) is typed
    access, not a key read."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Subscript):
            target, key = node.value, node.slice
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "pop") \
                and node.args:
            target, key = node.func.value, node.args[0]
        else:
            continue
        typed_field = isinstance(target, ast.Attribute) and target.attr in REPORT_KEYS
        if isinstance(key, ast.Constant) and key.value in REPORT_KEYS and not typed_field:
            found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_the_report_key_guard_finds_a_report_read_under_any_name(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import json\nsummary = json.loads(text)\nsummary['measurements']\n"
                      "json.loads(text).get('radius')\nreport.models['denoiser']\n")
    assert report_subscripts(sample, tmp_path) == ["sample.py:3", "sample.py:4"]


def test_no_writer_and_no_slicer_module_reads_a_report_by_string_keys():
    files = [p for p in PACKAGE.rglob("*.py") if "research" not in p.parts]
    assert len(files) > 50
    assert [hit for path in files for hit in report_subscripts(path)] == []
