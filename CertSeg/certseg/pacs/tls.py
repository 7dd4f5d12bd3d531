"""DICOM TLS (PS3.15 B.1 style) for the listener and the DIMSE client: certificates from files, peers verified.

The listener presents `cert`/`key`; with `ca` it also requires every peer to present a certificate that
CA signed (mutual TLS, what a hospital's DICOM TLS profile asks).  The client verifies the server's
certificate against `ca` (else the system's store) and its host name or IP address, and presents
`cert`/`key` when given.  TLS 1.2 is the floor.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from certseg.errors import CertSegError


@dataclass(frozen=True)
class TlsFiles:
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None

    def check(self, who: str) -> None:
        for name, path in (("certificate", self.cert), ("key", self.key), ("CA bundle", self.ca)):
            if path is not None and not Path(path).is_file():
                raise CertSegError(f"{path}: no such TLS {name} file ({who})")
        if (self.cert is None) != (self.key is None):
            raise CertSegError(f"{who}: a TLS certificate needs its key, and a key its certificate")


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """The listener's context: its own certificate; peers verified against `ca` when given."""
    files.check("listen")
    if files.cert is None:
        raise CertSegError("listen: DICOM TLS needs --tls-cert and --tls-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=files.ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(files.cert, files.key)
    if files.ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """The DIMSE client's context: the server verified (certificate and name), our certificate when given."""
    files.check("DIMSE client")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=files.ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if files.cert is not None:
        context.load_cert_chain(files.cert, files.key)
    return context
