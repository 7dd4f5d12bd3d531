"""Which studies to pull: one query, the same for DICOMweb and DIMSE."""

from __future__ import annotations

import re
from dataclasses import dataclass

from certseg.errors import ParameterError

CHEST_RADIOGRAPH_MODALITIES = ("CR", "DX")
_DATE = re.compile(r"^\d{8}$")


@dataclass(frozen=True)
class StudyQuery:
    study_uid: str | None = None
    accession: str | None = None
    patient_id: str | None = None
    date_from: str | None = None  # YYYYMMDD, inclusive
    date_to: str | None = None

    def __post_init__(self) -> None:
        """Valid by construction: a query that names nothing (the whole archive) cannot exist."""
        if not any((self.study_uid, self.accession, self.patient_id, self.date_from, self.date_to)):
            raise ParameterError("pacs: give a study UID, accession number, patient ID or date range "
                             "(CertSeg never pulls a whole archive)")
        for date in (self.date_from, self.date_to):
            if date is not None and not _DATE.match(date):
                raise ParameterError(f"pacs: dates are YYYYMMDD, got {date!r}")

    def matching_keys(self) -> dict[str, str]:
        """Study-level matching keys, in the DICOM keyword form both protocols take."""
        keys = {"StudyInstanceUID": self.study_uid, "AccessionNumber": self.accession, "PatientID": self.patient_id}
        if self.date_from or self.date_to:
            keys["StudyDate"] = f"{self.date_from or ''}-{self.date_to or ''}"
        return {k: v for k, v in keys.items() if v}


@dataclass(frozen=True)
class SeriesRef:
    study_uid: str
    series_uid: str
    modality: str
