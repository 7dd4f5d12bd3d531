"""QIDO-RS, WADO-RS and STOW-RS through dicomweb-client, never asking the server to transcode, under limits.

A server may be slow, huge or hostile: every operation has a deadline (a query with all its pages, one
study's retrieval, one store), every response a byte limit, a query a page limit (and a server that
ignores `offset` is caught repeating itself), a study a byte limit; instances are retrieved one at a time,
so memory holds one instance, not a series.  Every failure is a NetworkError whose text never holds a
secret (token, password, credentials in the URL) or a raw control character.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pydicom
import requests

from certseg.errors import NetworkError, first_line
from certseg.pacs.config import PacsServer
from certseg.pacs.http import BoundedSession, network_error
from certseg.pacs.query import CHEST_RADIOGRAPH_MODALITIES, SeriesRef, StudyQuery

# transfer-syntax=*: the instances as stored (real servers crash or refuse when asked to convert).
AS_STORED = (("application/dicom", "*"),)


class DicomWebPacs:
    def __init__(self, server: PacsServer):
        from dicomweb_client.api import DICOMwebClient

        self.limits = limits = server.limits
        self.secrets = tuple(s for s in (server.token, server.password) if s)
        session = BoundedSession(limits.max_response_bytes, verify=server.ca_bundle or server.verify)
        headers = {}
        if server.token:
            headers["Authorization"] = f"Bearer {server.token}"
        elif server.username:  # UTF-8, as RFC 7617 allows: requests alone would refuse a non-Latin-1 password
            session.auth = (server.username.encode(), (server.password or "").encode())
        self.session = session
        self.client = DICOMwebClient(server.dicomweb, session=session, headers=headers,
                                     timeout=(limits.read_timeout_s, limits.read_timeout_s))
        # dicomweb-client retries a failed request 5 times with sleeps no deadline can interrupt (a server over
        # the byte limit cost 30 s): a failed operation fails its study here, and the listener retries sends.
        self.client.set_http_retry_params(retry=False)

    def find_series(self, query: StudyQuery) -> list[SeriesRef]:
        with self._operation("the query", self.limits.query_deadline_s):
            found = []
            for study in self._all_pages(self.client.search_for_studies, "0020000D",
                                         search_filters=query.matching_keys()):
                study_uid = _value(study, "0020000D")
                for series in self._all_pages(self.client.search_for_series, "0020000E", study_uid):
                    modality = _value(series, "00080060")
                    if modality in CHEST_RADIOGRAPH_MODALITIES:
                        found.append(SeriesRef(study_uid, _value(series, "0020000E"), modality))
            return found

    def retrieve_series(self, series: SeriesRef, folder: Path) -> list[Path]:
        """Each instance of the series into `folder`, one at a time, within the byte and time limits."""
        budget = [self.limits.max_study_bytes]
        with self._operation(f"retrieving series {series.series_uid}", self.limits.study_deadline_s):
            instances = self._all_pages(self.client.search_for_instances, "00080018", series.study_uid,
                                        series.series_uid)
            paths = []
            for instance in instances:
                dataset = self._one_instance(series, _value(instance, "00080018"))
                path = folder / f"{len(paths):05d}.dcm"  # never a name the server chose
                dataset.save_as(path, enforce_file_format=True)
                budget[0] -= path.stat().st_size
                if budget[0] < 0:
                    raise NetworkError(f"series {series.series_uid} is larger than the "
                                       f"{self.limits.max_study_bytes // 2**20} MiB limit")
                paths.append(path)
            return paths

    def store(self, paths: list[Path], study_uid: str) -> None:
        with self._operation(f"storing into study {study_uid}", self.limits.study_deadline_s):
            self.client.store_instances([pydicom.dcmread(p) for p in paths], study_instance_uid=study_uid)

    # -- helpers --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _operation(self, what: str, seconds: float) -> Iterator[None]:
        """One operation under its deadline; every failure inside it becomes one redacted NetworkError."""
        try:
            with self.session.deadline(seconds, what):
                yield
        except (requests.RequestException, OSError, ValueError, NetworkError) as error:
            raise network_error(error, what, self.secrets) from None

    def _one_instance(self, series: SeriesRef, sop_uid: str) -> pydicom.Dataset:
        try:
            return self.client.retrieve_instance(series.study_uid, series.series_uid, sop_uid, media_types=AS_STORED)
        except (pydicom.errors.InvalidDicomError, ValueError, TypeError, AttributeError, EOFError) as error:
            raise NetworkError(f"instance {sop_uid[:64]}: the server's answer is not a DICOM object "
                               f"({type(error).__name__}: {first_line(error, 200)})") from None

    def _all_pages(self, search, key_tag: str, *args, **kwargs) -> list[dict]:
        """Every result of a QIDO search, page by page, stopping at the page limit or when a page brings nothing
        new (a server that ignores `offset` repeats its first page for ever)."""
        results, seen = [], set()
        for page_number in range(self.limits.max_pages):
            page = search(*args, limit=self.limits.page_size, offset=len(results), **kwargs) or []
            fresh = [item for item in page if _value(item, key_tag) not in seen]
            if page and not fresh:
                raise NetworkError(f"the server repeats its results after {len(results)} (it ignores the query's "
                                   f"offset): stopped after {page_number + 1} pages")
            seen.update(_value(item, key_tag) for item in fresh)
            results += fresh
            if len(page) < self.limits.page_size:
                return results
        raise NetworkError(f"more than {self.limits.max_pages} pages of {self.limits.page_size} results: "
                           f"narrow the query")


def _value(attributes: dict, tag: str) -> str:
    values = attributes.get(tag, {}).get("Value", [""])
    return str(values[0]) if values else ""
