"""A small DICOMweb server on loopback that misbehaves on purpose: it ignores `offset`, drips its answer a byte a
second, sends more than any limit, or answers an instance with a part that is not DICOM.  Every loop it runs
is bounded; `requests` counts what it was asked."""

import contextlib
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pydicom

DRIP_SECONDS = 90  # the longest a dripping answer goes on (the client must give up long before)


def _study(uid: str) -> dict:
    return {"0020000D": {"vr": "UI", "Value": [uid]}, "00080061": {"vr": "CS", "Value": ["CR"]}}


class MisbehavingDicomWeb:
    """`behaviour`: "ignores-offset", "drips", "huge", or "bad-part" (the first of two studies is not DICOM);
    `radiograph`: the DICOM file served as every good instance."""

    def __init__(self, behaviour: str, radiograph: Path | None = None, huge_bytes: int = 200 * 2**20):
        self.behaviour, self.huge_bytes = behaviour, huge_bytes
        self.radiograph = pydicom.dcmread(radiograph) if radiograph else None
        self.requests: list[str] = []
        handler = type("Handler", (_Handler,), {"server_state": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/dicom-web"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def studies(self) -> list[str]:
        if self.behaviour == "bad-part":
            return ["1.2.3.1", str(self.radiograph.StudyInstanceUID)]
        return [f"1.2.3.{n}" for n in range(1, 1001)]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    server_state: MisbehavingDicomWeb

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        state = self.server_state
        state.requests.append(self.path)
        parts = urlsplit(self.path)
        segments = [s for s in parts.path.split("/") if s][1:]  # after dicom-web
        query = parse_qs(parts.query)
        if segments == ["studies"]:
            return self._studies(query)
        good = state.radiograph is not None and segments[1:2] == [str(state.radiograph.StudyInstanceUID)]
        if len(segments) == 3 and segments[2] == "series":
            series = str(state.radiograph.SeriesInstanceUID) if good else segments[1] + ".1"
            return self._json([{"0020000D": {"vr": "UI", "Value": [segments[1]]},
                                "0020000E": {"vr": "UI", "Value": [series]},
                                "00080060": {"vr": "CS", "Value": ["CR"]}}])
        if len(segments) == 5 and segments[4] == "instances":
            instance = str(state.radiograph.SOPInstanceUID) if good else segments[3] + ".1"
            return self._json([{"00080018": {"vr": "UI", "Value": [instance]}}])
        if len(segments) == 6:
            return self._instance(segments[1])
        self.send_error(404)

    def _studies(self, query: dict) -> None:
        state = self.server_state
        limit = int(query.get("limit", ["1000"])[0])
        offset = 0 if state.behaviour == "ignores-offset" else int(query.get("offset", ["0"])[0])
        if state.behaviour == "drips":
            return self._drip(json.dumps([_study("1.2.3.1")]).encode())
        if state.behaviour == "huge":
            return self._huge()
        return self._json([_study(uid) for uid in state.studies()[offset:offset + limit]])

    def _json(self, payload) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _drip(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.end_headers()  # no length: the body ends when the connection closes
        deadline = time.monotonic() + DRIP_SECONDS
        for byte in (body * 1000)[: DRIP_SECONDS]:
            if time.monotonic() > deadline:
                return
            with contextlib.suppress(OSError):
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(1)
                continue
            return

    def _huge(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.end_headers()  # no length declared: the client finds out by counting
        chunk = b" " * 2**20
        with contextlib.suppress(OSError):
            self.wfile.write(b"[")
            for _ in range(self.server_state.huge_bytes // len(chunk)):
                self.wfile.write(chunk)
            self.wfile.write(b"]")

    def _instance(self, study_uid: str) -> None:
        import io

        state = self.server_state
        if state.behaviour == "bad-part" and study_uid == "1.2.3.1":
            part = b"<html>this is not DICOM</html>"
        else:
            buffer = io.BytesIO()
            state.radiograph.save_as(buffer, enforce_file_format=True)
            part = buffer.getvalue()
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part
                + f"\r\n--{boundary}--\r\n".encode())
        self.send_response(200)
        self.send_header("Content-Type", f'multipart/related; type="application/dicom"; boundary={boundary}')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
