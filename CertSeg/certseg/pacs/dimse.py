"""C-ECHO, C-FIND, C-GET and C-STORE through pynetdicom, never asking the server to transcode."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom import uid

from certseg.errors import NetworkError
from certseg.pacs.config import PacsServer
from certseg.pacs.query import CHEST_RADIOGRAPH_MODALITIES, SeriesRef, StudyQuery

RADIOGRAPH_STORAGE = (uid.ComputedRadiographyImageStorage, uid.DigitalXRayImageStorageForPresentation,
                      uid.DigitalXRayImageStorageForProcessing)
# One presentation context per stored transfer syntax, so the server sends each image as it holds it.
STORED_TRANSFER_SYNTAXES = (
    uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian, uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLosslessSV1, uid.JPEGLossless,
    uid.JPEGLSLossless, uid.JPEGLSNearLossless, uid.JPEG2000Lossless, uid.JPEG2000, uid.RLELossless,
    uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL, uid.HTJ2K,
)


class DimsePacs:
    def __init__(self, server: PacsServer, timeout_s: float = 60.0):
        self.server, self.timeout_s = server, timeout_s

    def _associate(self, contexts, roles=(), handlers=()):
        from pynetdicom import AE

        ae = AE(ae_title=self.server.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        for abstract, syntaxes in contexts:
            ae.add_requested_context(abstract, syntaxes)
        address = self.server.dimse
        tls = None
        if address.tls is not None:
            from certseg.pacs.tls import client_context

            tls = (client_context(address.tls), address.host)  # the server's certificate must name its host
        association = ae.associate(address.host, address.port, ae_title=address.called_aet, ext_neg=list(roles),
                                   evt_handlers=list(handlers), tls_args=tls)
        if not association.is_established:
            raise NetworkError(f"{address.called_aet}@{address.host}:{address.port}: association refused or "
                               f"no answer")
        return association

    def echo(self) -> None:
        from pynetdicom.sop_class import Verification  # pydicom.uid has no Verification: this never ran before

        association = self._associate([(Verification, [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian])])
        try:
            status = association.send_c_echo()
            _check(status, "C-ECHO")
        finally:
            association.release()

    def find_series(self, query: StudyQuery) -> list[SeriesRef]:
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

        association = self._associate([(FIND, [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian])])
        try:
            studies = [found.StudyInstanceUID for found in self._find(association, FIND, "STUDY",
                                                                      query.matching_keys())]
            series = []
            for study_uid in studies:
                for found in self._find(association, FIND, "SERIES",
                                        {"StudyInstanceUID": study_uid, "SeriesInstanceUID": "", "Modality": ""}):
                    if found.get("Modality") in CHEST_RADIOGRAPH_MODALITIES:
                        series.append(SeriesRef(study_uid, str(found.SeriesInstanceUID), str(found.Modality)))
            return series
        finally:
            association.release()

    @staticmethod
    def _find(association, model, level: str, keys: dict[str, str]) -> list[pydicom.Dataset]:
        identifier = pydicom.Dataset()
        identifier.QueryRetrieveLevel = level
        identifier.StudyInstanceUID = ""
        for keyword, value in keys.items():
            setattr(identifier, keyword, value)
        results = []
        for status, found in association.send_c_find(identifier, model):
            _check(status, "C-FIND", pending_ok=True)
            if found is not None and status.Status in (0xFF00, 0xFF01):
                results.append(found)
        return results

    def retrieve_series(self, series: SeriesRef, folder: Path) -> list[Path]:
        from pynetdicom import build_role, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

        paths: list[Path] = []

        def keep(event):
            path = folder / f"{len(paths):05d}.dcm"
            path.write_bytes(event.encoded_dataset())  # as received: no decoding, no re-encoding
            paths.append(path)
            return 0x0000

        contexts = [(GET, [uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian])]
        contexts += [(storage, [syntax]) for storage in RADIOGRAPH_STORAGE for syntax in STORED_TRANSFER_SYNTAXES]
        roles = [build_role(storage, scp_role=True) for storage in RADIOGRAPH_STORAGE]
        association = self._associate(contexts, roles, [(evt.EVT_C_STORE, keep)])
        try:
            identifier = pydicom.Dataset()
            identifier.QueryRetrieveLevel = "SERIES"
            identifier.StudyInstanceUID, identifier.SeriesInstanceUID = series.study_uid, series.series_uid
            for status, _ in association.send_c_get(identifier, GET):
                _check(status, "C-GET", pending_ok=True)
        finally:
            association.release()
        return paths

    def store(self, paths: list[Path], study_uid: str) -> None:
        datasets = [pydicom.dcmread(p) for p in paths]
        contexts = {(d.SOPClassUID, d.file_meta.TransferSyntaxUID) for d in datasets}
        association = self._associate([(sop, [syntax]) for sop, syntax in contexts])
        try:
            for dataset in datasets:
                _check(association.send_c_store(dataset), "C-STORE")
        finally:
            association.release()


def _check(status, operation: str, pending_ok: bool = False) -> None:
    """A DIMSE status that is neither success (nor pending, where allowed) is a failure naming its code."""
    if not status:  # empty Dataset: the peer aborted or timed out
        raise NetworkError(f"{operation}: no response (association aborted or timed out)")
    code = int(status.Status)
    if code == 0x0000 or pending_ok and code in (0xFF00, 0xFF01):
        return
    comment = status.get("ErrorComment", "")
    raise NetworkError(f"{operation} failed with status 0x{code:04X}{f' ({comment})' if comment else ''}")
