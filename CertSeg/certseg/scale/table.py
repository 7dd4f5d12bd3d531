"""The run's outcome table: one row per input file, written as CSV a study team loads with pandas.

    OUT/certseg-outcomes.csv   file, status, reason, study/series/sop UIDs, seconds, worker, attempts,
                               certified area (mm2, else pixels) per structure, abstained share, model hashes
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from certseg.files import REPORT_FILE
from certseg.record import Report, ReportError

TABLE_FILE = "certseg-outcomes.csv"


@dataclass
class OutcomeRow:
    file: str
    status: str  # a certseg.status.Status value, as the CSV stores it
    reason: str
    result: str = ""
    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""
    seconds: float | None = None  # wall time of the certification on its worker
    worker: str = ""  # host:pid of the worker that certified it
    attempts: int = 0  # 2 or more: a worker died under it and another did it again
    abstain_fraction: float | None = None
    area_unit: str = ""
    segmenter_sha256: str = ""
    denoiser_sha256: str = ""
    model_digest: str = ""  # over everything that defines the models that ran (report.json's model_digest)
    areas: dict[str, float] = field(default_factory=dict)  # certified area per structure

    def add_report(self, folder: Path) -> OutcomeRow:
        """Fill the result's figures from its report.json (certified or kept); a kept result whose report this
        version cannot read keeps its row, the reason saying why its figures are blank."""
        try:
            report = Report.read(folder / REPORT_FILE)
        except ReportError as error:
            self.reason = "; ".join(filter(None, (self.reason, f"no figures: {error}")))
            return self
        self.study_uid, self.series_uid, self.sop_uid = report.source.uids
        self.abstain_fraction = report.source_grid.abstain_fraction
        in_mm2 = all(s.certified_area_mm2 is not None for s in report.structures)
        self.area_unit = "mm2" if in_mm2 else "pixels"
        self.areas = {s.name: s.certified_area_mm2 if in_mm2 else s.certified_pixels for s in report.structures}
        self.segmenter_sha256 = report.segmenter.sha256
        self.denoiser_sha256 = report.models["denoiser"].sha256 if "denoiser" in report.models else ""
        self.model_digest = report.model_digest
        return self


def write_table(path: Path, rows: list[OutcomeRow]) -> None:
    """CSV, one row per file; each structure's area its own column (`area <name>`); written by rename."""
    structures = sorted({name for row in rows for name in row.areas})
    columns = [f.name for f in fields(OutcomeRow) if f.name != "areas"] + [f"area {name}" for name in structures]
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            values = {k: v for k, v in asdict(row).items() if k != "areas"}
            values.update({f"area {name}": row.areas.get(name, "") for name in structures})
            writer.writerow(values)
    temporary.replace(path)
