"""A real Orthanc (Debian's package) for the PACS tests: free loopback ports, its own storage, clean stop."""

from __future__ import annotations

import contextlib
import http.server
import json
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
PYTHON_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPython.so")
USER, PASSWORD = "certseg", "not-a-real-secret"


@dataclass
class Orthanc:
    http_url: str
    dicom_port: int
    aet: str
    folder: Path

    @property
    def dicomweb_url(self) -> str:
        return f"{self.http_url}/dicom-web"

    def rest(self, method: str, path: str, **kwargs) -> requests.Response:
        response = requests.request(method, f"{self.http_url}{path}", auth=(USER, PASSWORD),
                                    timeout=30, **kwargs)
        response.raise_for_status()
        return response

    def upload(self, path: Path) -> dict:
        return self.rest("POST", "/instances", data=Path(path).read_bytes()).json()

    def series_modalities(self, study_uid: str) -> list[str]:
        found = self.rest("POST", "/tools/find", json={"Level": "Series", "Query": {"StudyInstanceUID": study_uid},
                                                       "Expand": True}).json()
        return sorted(series["MainDicomTags"].get("Modality", "") for series in found)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """key and certificate for 127.0.0.1 in one PEM file (Orthanc's SslCertificate format)."""
    key, certificate = folder / "key.pem", folder / "certificate.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(certificate)],
                   check=True, capture_output=True)
    both = folder / "orthanc.pem"
    both.write_text(key.read_text() + certificate.read_text())
    return certificate, both


@contextlib.contextmanager
def tls_proxy(folder: Path, target: str):
    """An HTTPS front for `target` with a self-signed certificate, as hospitals put nginx before Orthanc.

    Debian's Orthanc 1.10.1 crashes (SIGSEGV) on the first HTTPS connection with its own SslEnabled,
    so TLS is terminated here; yields (https URL, the certificate to trust)."""
    certificate, both = self_signed_certificate(folder)

    class Forward(http.server.BaseHTTPRequestHandler):
        def _forward(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            reply = requests.request(self.command, target + self.path, headers=headers, data=body, timeout=60)
            self.send_response(reply.status_code)
            for key, value in reply.headers.items():
                if key.lower() not in ("transfer-encoding", "content-encoding", "content-length", "connection"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(reply.content)))
            self.end_headers()
            self.wfile.write(reply.content)

        do_GET = do_POST = _forward

        def log_message(self, *args):
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(both)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", certificate
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def running_orthanc(folder: Path, *, plugins=(DICOMWEB_PLUGIN,), extra: dict | None = None):
    """Start Orthanc, wait until GET /system answers, and stop it with SIGTERM (SIGKILL after 10 s)."""
    if shutil.which("Orthanc") is None or not DICOMWEB_PLUGIN.exists():
        pytest.fail("Orthanc is not installed: Testing/setup-and-test.sh installs orthanc and orthanc-dicomweb")
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "CertSegTest", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
        "DicomAlwaysAllowGet": True, "DicomAlwaysAllowFind": True, "DicomAlwaysAllowStore": True,
        "DicomCheckCalledAet": True, "Plugins": [str(p) for p in plugins],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}, "StableAge": 2, "HttpsVerifyPeers": False,
        **(extra or {}),
    }
    (folder / "orthanc.json").write_text(json.dumps(config, indent=1))
    log = open(folder / "orthanc.log", "w")
    process = subprocess.Popen(["Orthanc", str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    server = Orthanc(f"http://127.0.0.1:{http_port}", dicom_port, "ORTHANC", folder)
    try:
        _wait_until_up(server, process)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _wait_until_up(server: Orthanc, process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"Orthanc exited with {process.returncode}: {(server.folder / 'orthanc.log').read_text()[-2000:]}")
        try:
            server.rest("GET", "/system")
            return
        except requests.RequestException:
            time.sleep(0.2)
    pytest.fail(f"Orthanc did not answer GET /system within {timeout_s} s")
