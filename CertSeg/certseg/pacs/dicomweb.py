"""QIDO-RS, WADO-RS and STOW-RS through dicomweb-client, never asking the server to transcode."""

from __future__ import annotations

from pathlib import Path

import pydicom
import requests

from certseg.pacs.config import PacsServer
from certseg.pacs.query import CHEST_RADIOGRAPH_MODALITIES, SeriesRef, StudyQuery

# transfer-syntax=*: the instances as stored (real servers crash or refuse when asked to convert).
AS_STORED = (("application/dicom", "*"),)


class DicomWebPacs:
    def __init__(self, server: PacsServer, timeout_s: float = 60.0):
        from dicomweb_client.api import DICOMwebClient

        session = _ConfiguredTlsSession() if server.ca_bundle or not server.verify else requests.Session()
        session.verify = server.ca_bundle or server.verify
        headers = {}
        if server.token:
            headers["Authorization"] = f"Bearer {server.token}"
        elif server.username:
            session.auth = (server.username, server.password or "")
        self.client = DICOMwebClient(server.dicomweb, session=session, headers=headers, timeout=timeout_s)

    def find_series(self, query: StudyQuery) -> list[SeriesRef]:
        studies = self.client.search_for_studies(search_filters=query.matching_keys(), get_remaining=True)
        found = []
        for study in studies:
            study_uid = _value(study, "0020000D")
            for series in self.client.search_for_series(study_uid, get_remaining=True):
                modality = _value(series, "00080060")
                if modality in CHEST_RADIOGRAPH_MODALITIES:
                    found.append(SeriesRef(study_uid, _value(series, "0020000E"), modality))
        return found

    def retrieve_series(self, series: SeriesRef, folder: Path) -> list[Path]:
        paths = []
        for dataset in self.client.retrieve_series(series.study_uid, series.series_uid, media_types=AS_STORED):
            path = folder / f"{len(paths):05d}.dcm"
            dataset.save_as(path, enforce_file_format=True)
            paths.append(path)
        return paths

    def store(self, paths: list[Path], study_uid: str) -> None:
        self.client.store_instances([pydicom.dcmread(p) for p in paths], study_instance_uid=study_uid)


class _ConfiguredTlsSession(requests.Session):
    """Keeps the server's own CA bundle (or verify=false): plain requests lets $REQUESTS_CA_BUNDLE override
    a session's verify (psf/requests#3829), which would silently ignore the config file."""

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        settings["verify"] = self.verify
        return settings


def _value(attributes: dict, tag: str) -> str:
    values = attributes.get(tag, {}).get("Value", [""])
    return str(values[0]) if values else ""
