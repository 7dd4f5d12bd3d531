"""HTTP for DICOMweb under overall limits: a deadline per operation, bytes per response, and secrets never shown.

requests' timeout bounds each socket read, not a request: a server that sends a byte a second holds a client
for ever, and one that sends gigabytes is held whole in memory.  `BoundedSession` reads every response body
itself, one socket read at a time, stopping at `max_response_bytes`; `deadline(seconds)` gives a whole
operation (a query and all its pages, one study's retrieval) a time limit, enforced by shutting the
operation's sockets down from a timer, which interrupts a read however slowly the server drips.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
import weakref
from collections.abc import Iterator

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from certseg.errors import NetworkError, first_line
from certseg.names import printable

READ_CHUNK = 1 << 16
_CREDENTIALS_IN_URL = re.compile(r"(//)[^/@\s]*@")


def redacted(text: str, secrets: tuple[str, ...]) -> str:
    """`text` with every secret, and any user:password in a URL, replaced by *** and made printable."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return printable(_CREDENTIALS_IN_URL.sub(r"\1***@", text))


class _TrackingAdapter(HTTPAdapter):
    """An adapter that knows its open sockets, so a timer can interrupt them."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.connections: weakref.WeakSet = weakref.WeakSet()
        # http.client hands a connection's socket to its response when the response has no length (it closes
        # the connection object): bodies being read are interrupted through their response.
        self.responses: weakref.WeakSet = weakref.WeakSet()
        tracked = self.connections

        def tracking(base):
            class Tracked(base):
                def connect(self):
                    super().connect()
                    tracked.add(self)
            return Tracked

        self.poolmanager.pool_classes_by_scheme = {
            "http": type("TrackedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": tracking(HTTPConnection)}),
            "https": type("TrackedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": tracking(HTTPSConnection)}),
        }

    def interrupt(self) -> None:
        for connection in list(self.connections):
            with contextlib.suppress(OSError, AttributeError):
                connection.sock.shutdown(socket.SHUT_RDWR)
        for response in list(self.responses):
            with contextlib.suppress(OSError, AttributeError, ValueError, RuntimeError):
                response.shutdown()  # urllib3's own way to stop a read from another thread


class BoundedSession(requests.Session):
    """A requests session whose responses are read whole but bounded in bytes, and whose operations have deadlines."""

    def __init__(self, max_response_bytes: int, verify: bool | str = True):
        super().__init__()
        self.max_response_bytes, self.verify = max_response_bytes, verify
        self.keep_verify = verify is not True  # a CA bundle or verify=false named in the config file
        self.adapter = _TrackingAdapter()
        self.mount("http://", self.adapter)
        self.mount("https://", self.adapter)
        self._deadline: float | None = None
        self._expired = threading.Event()

    @contextlib.contextmanager
    def deadline(self, seconds: float, what: str) -> Iterator[None]:
        """Everything sent and received inside the block takes at most `seconds`, else NetworkError naming `what`."""
        self._deadline, self._expired = time.monotonic() + seconds, threading.Event()
        expired = self._expired
        timer = threading.Timer(seconds, lambda: (expired.set(), self.adapter.interrupt()))
        timer.daemon = True
        timer.start()
        try:
            yield
        except Exception as error:  # noqa: BLE001 - an interrupted read surfaces as any of several errors
            if expired.is_set():
                raise NetworkError(f"{what} took longer than {seconds:g} s in all: stopped") from None
            raise error
        finally:
            timer.cancel()
            self._deadline = None
        if expired.is_set():
            raise NetworkError(f"{what} took longer than {seconds:g} s in all: stopped")

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        """Keeps the server's own CA bundle (or verify=false): plain requests lets $REQUESTS_CA_BUNDLE override a
        session's verify (psf/requests#3829), which would silently ignore the config file."""
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if self.keep_verify:
            settings["verify"] = self.verify
        return settings

    def request(self, method, url, **kwargs):
        kwargs["stream"] = True  # the body is read here, under the byte limit, never all at once unbounded
        if self._deadline is not None:  # no single read may outlast the operation's deadline
            remaining = max(self._deadline - time.monotonic(), 0.001)
            given = kwargs.get("timeout")
            connect, read = given if isinstance(given, tuple) else (given or remaining, given or remaining)
            kwargs["timeout"] = (min(connect, remaining), min(read, remaining))
        response = super().request(method, url, **kwargs)
        self._read_body(response)
        return response

    def _read_body(self, response: requests.Response) -> None:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_response_bytes:
            response.close()
            raise NetworkError(f"the server's response of {int(declared)} bytes is over the "
                               f"{self.max_response_bytes}-byte limit")
        body = bytearray()
        self.adapter.responses.add(response.raw)
        try:
            while chunk := response.raw.read1(READ_CHUNK, decode_content=True):
                body += chunk
                if len(body) > self.max_response_bytes:
                    raise NetworkError(f"the server's response exceeds the {self.max_response_bytes}-byte limit")
        finally:
            response.close()
        response._content = bytes(body)  # noqa: SLF001 - what requests itself sets once it has read a body
        response._content_consumed = True  # noqa: SLF001


def network_error(error: Exception, what: str, secrets: tuple[str, ...]) -> NetworkError:
    """Any failure of an HTTP operation as one redacted line."""
    if isinstance(error, NetworkError):
        return NetworkError(redacted(str(error), secrets))
    return NetworkError(f"{what} failed: {redacted(first_line(error, 600), secrets)}")
