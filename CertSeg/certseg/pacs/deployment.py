"""The reference deployment: a PACS that certifies what it receives, with OHIF beside it, from one command.

`certseg reference-deployment --storage DIR` starts, on this machine:

- Orthanc (Debian's package) with its DICOMweb plugin and CertSeg's Orthanc plugin: every CR or DX study
  it receives is certified once it is stable, and the SEG, SR, capture and PDF are stored back into it;
- `certseg viewer`'s server: OHIF over Orthanc's DICOMweb, read-only, with Orthanc's credentials kept
  server-side.

Everything lives under DIR: orthanc.json and orthanc.log, Orthanc's files (orthanc/), OHIF's build
(ohif/, fetched with npm on the first start) and pacs.json, the credentials the viewer logs in with
(generated on the first start, readable by the owner only).  Orthanc's HTTP API answers this machine
only; the viewer is bound to --viewer-bind; Orthanc 1.10 cannot bind its DICOM port to one interface, so
it accepts associations only from the AE titles and hosts given with --allow.  Ctrl-C or SIGTERM stops
both; a second start resumes with the same storage.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from certseg.errors import CertSegError

ORTHANC_PLUGINS = Path("/usr/share/orthanc/plugins")
DICOMWEB_PLUGIN, PYTHON_PLUGIN = ORTHANC_PLUGINS / "libOrthancDicomWeb.so", ORTHANC_PLUGINS / "libOrthancPython.so"
SERVER_NAME = "reference"  # the viewer's name for Orthanc in DIR/pacs.json
ORTHANC_USER = "certseg-viewer"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class AllowedPeer:
    """A DICOM peer allowed to send: its AE title and the host it connects from."""

    aet: str
    host: str

    @classmethod
    def parse(cls, text: str) -> AllowedPeer:
        aet, at, host = text.partition("@")
        if not at or not aet or not host or len(aet) > 16 or not aet.isascii() or "\\" in aet:
            raise CertSegError(f"--allow {text!r}: give AET@HOST, an AE title of at most 16 ASCII characters")
        return cls(aet.strip(), host.strip())


@dataclass(frozen=True)
class Deployment:
    storage: Path
    http_port: int = 8042
    dicom_port: int = 4242
    viewer_port: int = 3000
    viewer_bind: str = "127.0.0.1"
    aet: str = "CERTSEG_PACS"
    allowed: tuple[AllowedPeer, ...] = (AllowedPeer("STORESCU", "127.0.0.1"),)
    certify_arguments: tuple[str, ...] = ()
    stable_seconds: int = 10
    certseg_command: tuple[str, ...] = field(default_factory=lambda: (sys.executable, "-m", "certseg"))

    def __post_init__(self):
        for name in ("http_port", "dicom_port", "viewer_port"):
            port = getattr(self, name)
            if not 0 < port < 65536:
                raise CertSegError(f"--{name.replace('_', '-')} {port}: not a TCP port")
        if len({self.http_port, self.dicom_port, self.viewer_port}) != 3:
            raise CertSegError("the HTTP, DICOM and viewer ports must differ")
        if self.stable_seconds < 1:
            raise CertSegError("--stable-seconds must be at least 1")


def orthanc_configuration(deployment: Deployment, password: str) -> dict:
    """Orthanc's configuration for the deployment (written to DIR/orthanc.json at every start)."""
    storage = deployment.storage.resolve()
    return {
        "Name": "CertSeg reference PACS",
        "StorageDirectory": str(storage / "orthanc"), "IndexDirectory": str(storage / "orthanc"),
        "HttpPort": deployment.http_port, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True, "RegisteredUsers": {ORTHANC_USER: password},
        "DicomPort": deployment.dicom_port, "DicomAet": deployment.aet, "DicomCheckCalledAet": True,
        "DicomAlwaysAllowStore": False, "DicomAlwaysAllowEcho": False, "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowMove": False, "DicomAlwaysAllowGet": False, "DicomCheckModalityHost": True,
        "DicomModalities": {f"peer{index}": {"AET": peer.aet, "Host": peer.host, "Port": 104,
                                             "AllowEcho": True, "AllowStore": True, "AllowFind": False,
                                             "AllowMove": False, "AllowGet": False}
                            for index, peer in enumerate(deployment.allowed)},
        "Plugins": [str(DICOMWEB_PLUGIN), str(PYTHON_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "PythonScript": str(Path(__file__).with_name("orthanc_plugin.py")),
        "CertSeg": {"Command": list(deployment.certseg_command), "Arguments": list(deployment.certify_arguments)},
        "StableAge": deployment.stable_seconds,
    }


def missing_parts() -> list[str]:
    """What this machine lacks to run the deployment (Debian package names)."""
    missing = [] if shutil.which("Orthanc") else ["orthanc"]
    missing += [package for plugin, package in ((DICOMWEB_PLUGIN, "orthanc-dicomweb"), (PYTHON_PLUGIN, "orthanc-python"))
                if not plugin.exists()]
    return missing


def viewer_credentials(deployment: Deployment) -> str:
    """The password Orthanc gives the viewer, generated on the first start and kept in DIR/pacs.json (mode 600),
    a PACS config file `certseg pacs` and `certseg viewer` also read (server "reference")."""
    path = deployment.storage / "pacs.json"
    password = secrets.token_urlsafe(24)
    if path.exists():
        try:
            password = json.loads(path.read_text())["servers"][SERVER_NAME]["password"]
        except (OSError, ValueError, KeyError, TypeError):
            raise CertSegError(f"{path}: not the deployment's credentials file; move it away to make a new one") from None
    entry = {"dicomweb": f"http://127.0.0.1:{deployment.http_port}/dicom-web", "username": ORTHANC_USER,
             "password": password}
    descriptor = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        json.dump({"servers": {SERVER_NAME: entry}}, stream, indent=1)
    os.replace(path.with_suffix(".tmp"), path)
    return password


def _refuse_busy_ports(deployment: Deployment) -> None:
    for port, what in ((deployment.http_port, "--http-port"), (deployment.dicom_port, "--dicom-port")):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                raise CertSegError(f"{what} {port}: in use by another program") from None


@contextlib.contextmanager
def running_orthanc(deployment: Deployment, password: str):
    """Orthanc started with the deployment's configuration; stopped (SIGTERM, then SIGKILL) on exit."""
    _refuse_busy_ports(deployment)
    storage = deployment.storage
    (storage / "orthanc.json").write_text(json.dumps(orthanc_configuration(deployment, password), indent=1))
    log = open(storage / "orthanc.log", "a")
    process = subprocess.Popen([shutil.which("Orthanc"), str(storage / "orthanc.json")], stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_up(deployment, password, process)
        yield process
    finally:
        _stop(process)
        log.close()


def _wait_until_up(deployment: Deployment, password: str, process: subprocess.Popen) -> None:
    import requests

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CertSegError(f"Orthanc stopped at start (exit {process.returncode}): see {deployment.storage / 'orthanc.log'}")
        with contextlib.suppress(requests.RequestException):
            answer = requests.get(f"http://127.0.0.1:{deployment.http_port}/system", auth=(ORTHANC_USER, password),
                                  timeout=2)
            if answer.status_code == 200:
                return
        time.sleep(0.3)
    raise CertSegError(f"Orthanc did not answer within {START_TIMEOUT_S:.0f} s: see {deployment.storage / 'orthanc.log'}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def serve(deployment: Deployment, announce=print) -> int:
    """Start Orthanc and the viewer, announce where they are, and run until SIGINT/SIGTERM or until Orthanc stops."""
    from certseg.pacs.viewer import Upstream, ViewerServer, install_ohif, ohif_folder_problem

    missing = missing_parts()
    if missing:
        raise CertSegError(f"the reference deployment needs Debian's {', '.join(missing)} (apt-get install {' '.join(missing)})")
    deployment.storage.mkdir(parents=True, exist_ok=True)
    password = viewer_credentials(deployment)
    ohif = deployment.storage / "ohif"
    if ohif_folder_problem(ohif):
        announce(f"fetching OHIF into {ohif} (once)")
        install_ohif(ohif)
    upstream = Upstream(f"http://127.0.0.1:{deployment.http_port}/dicom-web", ORTHANC_USER, password)
    with running_orthanc(deployment, password) as orthanc:
        try:
            viewer = ViewerServer((deployment.viewer_bind, deployment.viewer_port), ohif, upstream)
        except OSError as error:
            raise CertSegError(f"--viewer-port {deployment.viewer_port}: {error.strerror}") from None
        thread = threading.Thread(target=viewer.serve_forever, daemon=True)
        thread.start()
        try:
            announce(_summary(deployment, viewer.url))
            while orthanc.poll() is None:
                time.sleep(0.5)
            announce(f"Orthanc stopped (exit {orthanc.returncode}): see {deployment.storage / 'orthanc.log'}")
            return 1
        finally:
            viewer.shutdown()
            viewer.server_close()


def _summary(deployment: Deployment, viewer_url: str) -> str:
    allowed = ", ".join(f"{peer.aet}@{peer.host}" for peer in deployment.allowed)
    return "\n".join([
        f"CertSeg reference deployment ready (storage {deployment.storage})",
        f"  DICOM:  send to AE {deployment.aet} on port {deployment.dicom_port} (allowed: {allowed})",
        f"  viewer: {viewer_url}/  (OHIF, read-only)",
        f"  Orthanc: http://127.0.0.1:{deployment.http_port}/  (this machine only; user {ORTHANC_USER}, "
        f"password in {deployment.storage / 'pacs.json'})",
        "  stop: Ctrl-C or SIGTERM",
    ])
