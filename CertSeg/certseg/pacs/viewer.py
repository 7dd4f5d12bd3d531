"""OHIF, the web viewer, served beside a DICOMweb PACS: `certseg viewer`.

OHIF is a static web application (the `dist/` of the npm package @ohif/app).  This server gives the
browser that application, CertSeg's configuration for it (`ohif-config.js`, which points OHIF at this
same origin), and a read-only path to the PACS: GET and HEAD under /dicom-web/ are forwarded to the
server's DICOMweb root with the credentials of CertSeg's PACS config, so the browser never holds them
and needs no cross-origin permission from the PACS.  Nothing else reaches the PACS: the viewer can
look, not store or delete.  A PACS writes absolute URLs of its own into the metadata it returns
(BulkDataURI: where pixel data and documents are); in JSON answers they are rewritten to this
server's /dicom-web/, or the browser would go round the viewer to the PACS, which it may not reach
and which would ask it for credentials.

The application is fetched once, by `install_ohif`, from the npm registry with `npm pack`, checked
against the pinned sha512 below (the registry's own integrity value for that release), and unpacked
member by member inside the target folder.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import mimetypes
import posixpath
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import unquote, urlsplit

from certseg.errors import CertSegError
from certseg.names import printable

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"
# npm's "dist.integrity" of @ohif/app 3.13.2: the tarball must hash to this, whatever the registry serves.
OHIF_INTEGRITY = "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
DICOMWEB_PREFIX = "/dicom-web/"
CHUNK_BYTES = 256 * 1024
REWRITTEN_BYTES = 64 * 2**20  # a larger JSON answer passes unchanged (metadata of one study is far smaller)
JSON_TYPES = ("application/dicom+json", "application/json")
HOST_HEADER = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
# Forwarded both ways: what DICOMweb content negotiation and caching need, nothing that identifies the browser.
REQUEST_HEADERS = ("Accept", "Range", "If-None-Match", "If-Modified-Since")
RESPONSE_HEADERS = ("Content-Type", "Content-Length", "Content-Range", "ETag", "Last-Modified", "Cache-Control")


@dataclass(frozen=True)
class Upstream:
    """Where /dicom-web/ goes: the PACS's DICOMweb root and how to log in (certseg.pacs.config)."""

    dicomweb: str
    username: str | None = None
    password: str | None = None
    token: str | None = None
    verify: bool | str = True
    read_timeout_s: float = 120.0


def ohif_folder_problem(folder: Path) -> str | None:
    """Why `folder` is not an OHIF build to serve, or None."""
    if not (folder / "index.html").is_file():
        return "no index.html (install OHIF there with --install-ohif)"
    if not any(folder.glob("app.bundle.*.js")):
        return "no app.bundle.*.js: not a build of @ohif/app"
    return None


def install_ohif(folder: Path, npm: str = "npm") -> None:
    """Fetch @ohif/app OHIF_VERSION with `npm pack`, check its sha512 and unpack its dist/ into `folder`."""
    if shutil.which(npm) is None:
        raise CertSegError("npm not found: installing OHIF needs Node.js's npm (Debian: apt-get install npm)")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="certseg-ohif-") as scratch:
        done = subprocess.run([npm, "pack", f"{OHIF_PACKAGE}@{OHIF_VERSION}", "--silent"], cwd=scratch,
                              capture_output=True, text=True, timeout=600, check=False)
        tarballs = list(Path(scratch).glob("*.tgz"))
        if done.returncode != 0 or len(tarballs) != 1:
            raise CertSegError(f"npm pack {OHIF_PACKAGE}@{OHIF_VERSION} failed: {printable(done.stderr.strip()[-300:])}")
        digest = "sha512-" + base64.b64encode(hashlib.sha512(tarballs[0].read_bytes()).digest()).decode()
        if digest != OHIF_INTEGRITY:
            raise CertSegError(f"{OHIF_PACKAGE}@{OHIF_VERSION}: the tarball's sha512 is not the pinned one; not installed")
        _unpack_dist(tarballs[0], folder)


def _unpack_dist(tarball: Path, folder: Path) -> None:
    """package/dist/* into `folder`: regular files and folders only, each path checked to stay inside."""
    root = folder.resolve()
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive.getmembers():
            name = posixpath.normpath(member.name)
            if not name.startswith("package/dist/") or not (member.isfile() or member.isdir()):
                continue
            target = (root / name.removeprefix("package/dist/")).resolve()
            if not target.is_relative_to(root):
                raise CertSegError(f"{tarball.name}: member {printable(member.name)} would land outside {folder}")
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.extractfile(member) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink)


def ohif_config() -> bytes:
    """CertSeg's OHIF configuration (the package's ohif-config.js), served as /app-config.js."""
    return resources.files("certseg.pacs").joinpath("ohif-config.js").read_bytes()


class ViewerServer(http.server.ThreadingHTTPServer):
    """OHIF's files, CertSeg's OHIF configuration and a read-only DICOMweb path to one PACS."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], ohif: Path, upstream: Upstream):
        problem = ohif_folder_problem(ohif)
        if problem:
            raise CertSegError(f"{ohif}: {problem}")
        self.ohif = ohif.resolve()
        self.upstream = upstream
        self.config = ohif_config()
        self._local = threading.local()
        super().__init__(address, _ViewerHandler)

    def session(self):
        """One requests session per serving thread (a Session is not shared between threads)."""
        import requests

        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False  # a proxy set for the shell is not the hospital's path to its own PACS
            session.verify = self.upstream.verify
            if self.upstream.token:
                session.headers["Authorization"] = f"Bearer {self.upstream.token}"
            elif self.upstream.username is not None:
                session.auth = (self.upstream.username.encode(), (self.upstream.password or "").encode())
            self._local.session = session
        return session

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class _ViewerHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ViewerServer

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._serve(send_body=True)

    def do_HEAD(self):  # noqa: N802
        self._serve(send_body=False)

    def _refuse(self, status: int, reason: str) -> None:
        body = f"{status} {reason}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if self.command not in ("GET", "HEAD"):  # its body is never read: the connection cannot carry another request
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_POST = do_PUT = do_DELETE = do_PATCH = lambda self: self._refuse(405, "the viewer is read-only")  # noqa: E731

    def _serve(self, send_body: bool) -> None:
        split = urlsplit(self.path)
        path = unquote(split.path)
        if "\\" in path or "\x00" in path or ".." in path.split("/"):
            return self._refuse(400, "bad path")
        if path.startswith(DICOMWEB_PREFIX):
            return self._forward(path[len(DICOMWEB_PREFIX):], split.query, send_body)
        if path == "/app-config.js":
            return self._send(self.server.config, "text/javascript; charset=utf-8", send_body)
        return self._static(path, send_body)

    def _static(self, path: str, send_body: bool) -> None:
        target = (self.server.ohif / path.lstrip("/")).resolve()
        if not target.is_relative_to(self.server.ohif):
            return self._refuse(404, "not found")
        if not target.is_file():
            if posixpath.splitext(path)[1]:
                return self._refuse(404, "not found")
            target = self.server.ohif / "index.html"  # OHIF routes (/viewer, /segmentation...) are the app's own
        kind = "application/wasm" if target.suffix == ".wasm" else mimetypes.guess_type(target.name)[0]
        self._send(target.read_bytes(), kind or "application/octet-stream", send_body)

    def _send(self, body: bytes, content_type: str, send_body: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _forward(self, rest: str, query: str, send_body: bool) -> None:
        import requests

        url = self.server.upstream.dicomweb.rstrip("/") + "/" + rest + (f"?{query}" if query else "")
        headers = {name: self.headers[name] for name in REQUEST_HEADERS if self.headers.get(name)}
        headers["Accept-Encoding"] = "identity"  # bytes pass through as they come; nothing to re-encode
        try:
            response = self.server.session().request(self.command, url, headers=headers, stream=True,
                                                     timeout=(10.0, self.server.upstream.read_timeout_s),
                                                     allow_redirects=False)
        except requests.RequestException:
            return self._refuse(502, "the PACS did not answer")
        with response:
            if send_body and self._is_small_json(response):
                return self._send_rewritten(response)
            self.send_response(response.status_code)
            for name in RESPONSE_HEADERS:
                if name in response.headers and not (name == "Content-Length" and not send_body):
                    self.send_header(name, response.headers[name])
            chunked = send_body and "Content-Length" not in response.headers
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            if not send_body:
                self.send_header("Content-Length", response.headers.get("Content-Length", "0"))
            self.end_headers()
            if send_body:
                self._copy_body(response, chunked)

    @staticmethod
    def _is_small_json(response) -> bool:
        kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        length = response.headers.get("Content-Length")
        return kind in JSON_TYPES and (length is None or (length.isdigit() and int(length) <= REWRITTEN_BYTES))

    def _send_rewritten(self, response) -> None:
        """A JSON answer with the PACS's own DICOMweb root replaced by this server's, as the browser reaches it."""
        body = response.raw.read(REWRITTEN_BYTES + 1, decode_content=False)
        whole = len(body) <= REWRITTEN_BYTES
        if whole:
            here = f"http://{self._host()}{DICOMWEB_PREFIX}"
            body = body.replace(self.server.upstream.dicomweb.rstrip("/").encode() + b"/", here.encode())
        self.send_response(response.status_code)
        for name in ("Content-Type", "ETag", "Last-Modified", "Cache-Control"):
            if name in response.headers:
                self.send_header(name, response.headers[name])
        self.send_header(*(("Content-Length", str(len(body))) if whole else ("Transfer-Encoding", "chunked")))
        self.end_headers()
        if whole:
            self.wfile.write(body)
        else:  # too large to rewrite: what was read, then the rest, as it came
            self.wfile.write(f"{len(body):x}\r\n".encode() + body + b"\r\n")
            self._copy_body(response, chunked=True)

    def _host(self) -> str:
        """How the browser reached this server (its Host header, when it is a plain host[:port])."""
        host = self.headers.get("Host", "")
        return host if HOST_HEADER.fullmatch(host) else "%s:%d" % self.server.server_address[:2]

    def _copy_body(self, response, chunked: bool) -> None:
        for block in response.raw.stream(CHUNK_BYTES, decode_content=False):
            if chunked:
                self.wfile.write(f"{len(block):x}\r\n".encode() + block + b"\r\n")
            else:
                self.wfile.write(block)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        """Requests are not logged: their URLs name studies, and the viewer's log is not an audit trail."""
