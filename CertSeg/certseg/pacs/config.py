"""Where the PACS is and how to log in: a config file and the environment, never the command line.

Config file (JSON; `--config`, else $CERTSEG_PACS_CONFIG, else ~/.config/certseg/pacs.json):

    {"servers": {"orthanc": {"dicomweb": "https://pacs.example.org/dicom-web",
                             "ca_bundle": "/etc/ssl/hospital-ca.pem"},
                 "archive": {"dimse": {"host": "10.0.0.5", "port": 104, "called_aet": "ARCHIVE",
                                       "tls": {"ca": "/etc/ssl/hospital-ca.pem",       // optional: DICOM TLS
                                               "cert": "/etc/certseg/node.pem", "key": "/etc/certseg/node.key"}},
                             "calling_aet": "CERTSEG"}}}

Secrets: $CERTSEG_PACS_USERNAME and $CERTSEG_PACS_PASSWORD (HTTP basic) or $CERTSEG_PACS_TOKEN
(bearer), or "username"/"password"/"token" in the file, which must then be readable by its owner
only; a user:password in the DICOMweb URL is taken out of it and used as those.  A secret is never
printed: one holding a control character (a line end copied with it) is refused naming where it came
from, not its value.  TLS certificates are verified unless the server's entry says "verify": false.
"""

from __future__ import annotations

import json
import os
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from certseg.errors import CertSegError
from certseg.pacs.tls import TlsFiles

SECRET_FIELDS = ("username", "password", "token")
DEFAULT_CONFIG = Path.home() / ".config" / "certseg" / "pacs.json"


@dataclass(frozen=True)
class TransferLimits:
    """What one DICOMweb operation may take (certseg.pacs.dicomweb); a server's "limits" entry sets them."""

    read_timeout_s: float = 60.0  # one socket read
    query_deadline_s: float = 300.0  # a search with all its pages
    study_deadline_s: float = 1800.0  # retrieving one series; storing one study's results
    page_size: int = 200
    max_pages: int = 50  # per search: 10,000 results
    max_response_bytes: int = 512 * 2**20  # one response: a page of results, one instance
    max_study_bytes: int = 8 * 2**30  # one series, retrieved


# The config file's names for them, and the factor from the file's unit to the field's.
LIMIT_SETTINGS = {"read_timeout_seconds": ("read_timeout_s", 1), "query_seconds": ("query_deadline_s", 1),
                  "study_seconds": ("study_deadline_s", 1), "page_size": ("page_size", 1),
                  "max_pages": ("max_pages", 1), "max_response_mb": ("max_response_bytes", 2**20),
                  "max_series_mb": ("max_study_bytes", 2**20)}


@dataclass(frozen=True)
class DimseAddress:
    host: str
    port: int
    called_aet: str
    tls: TlsFiles | None = None  # None: plain TCP


@dataclass(frozen=True)
class PacsServer:
    name: str
    dicomweb: str | None = None  # base URL of the DICOMweb service
    dimse: DimseAddress | None = None
    calling_aet: str = "CERTSEG"
    username: str | None = None
    password: str | None = None
    token: str | None = None
    verify: bool = True
    ca_bundle: str | None = None
    limits: TransferLimits = TransferLimits()

    @property
    def protocol(self) -> str:
        return "dicomweb" if self.dicomweb else "dimse"


def load_server(name: str, config_path: Path | None = None, environ=os.environ) -> PacsServer:
    """The named server of the config file, with secrets from the environment taking precedence."""
    path = Path(config_path or environ.get("CERTSEG_PACS_CONFIG") or DEFAULT_CONFIG)
    try:
        servers = json.loads(path.read_text()).get("servers", {})
    except FileNotFoundError:
        raise CertSegError(f"{path}: no PACS config file (see `certseg pacs --help`)") from None
    except (OSError, ValueError, AttributeError) as error:
        raise CertSegError(f"{path}: unreadable PACS config ({error})") from None
    if name not in servers:
        raise CertSegError(f"{path}: no server named {name!r} (known: {', '.join(servers) or 'none'})")
    entry = dict(servers[name])
    if any(entry.get(field) for field in SECRET_FIELDS) and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CertSegError(f"{path}: holds a password or token but others may read it (chmod 600 {path})")
    _credentials_out_of_url(entry)
    for field in SECRET_FIELDS:
        variable = f"CERTSEG_PACS_{field.upper()}"
        origin = f"${variable}" if environ.get(variable) else f"{path}: server {name!r}, {field!r}"
        entry[field] = environ.get(variable) or entry.get(field)
        if entry[field] is not None:
            entry[field] = _checked_secret(field, entry[field], origin)
    return _server(name, entry, path)


def _credentials_out_of_url(entry: dict) -> None:
    """A user:password in the DICOMweb URL moves into username/password (unless those are given): a URL is
    printed in error messages, a secret never is."""
    url = entry.get("dicomweb")
    if not isinstance(url, str) or "@" not in url:
        return
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return
    entry.setdefault("username", unquote(parts.username or ""))
    entry.setdefault("password", unquote(parts.password or ""))
    host = parts.netloc.rpartition("@")[2]
    entry["dicomweb"] = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _checked_secret(field: str, value: object, origin: str) -> str:
    """A secret as HTTP can carry it, or a CertSegError naming where it came from (never its value)."""
    text = str(value)
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in text):
        raise CertSegError(f"{origin}: the {field} holds a control character (a line end copied with it?)")
    if field == "token" and not text.isascii():
        raise CertSegError(f"{origin}: a bearer token is ASCII; this one is not")
    if field == "username" and ":" in text:
        raise CertSegError(f"{origin}: a user name for HTTP basic authentication cannot hold ':'")
    return text


def _server(name: str, entry: dict, path: Path) -> PacsServer:
    known = {"dicomweb", "dimse", "calling_aet", "verify", "ca_bundle", "limits", *SECRET_FIELDS}
    unknown = set(entry) - known
    if unknown:
        raise CertSegError(f"{path}: server {name!r} has unknown settings {sorted(unknown)}")
    if bool(entry.get("dicomweb")) == bool(entry.get("dimse")):
        raise CertSegError(f"{path}: server {name!r} needs exactly one of 'dicomweb' (a URL) and 'dimse'")
    dimse = None
    if entry.get("dimse"):
        try:
            dimse = DimseAddress(str(entry["dimse"]["host"]), int(entry["dimse"]["port"]),
                                 str(entry["dimse"]["called_aet"]), _tls(entry["dimse"].get("tls")))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise CertSegError(f"{path}: server {name!r}: 'dimse' needs host, port and called_aet, and 'tls' "
                               f"only ca, cert and key") from None
    elif not str(entry["dicomweb"]).startswith(("http://", "https://")):
        raise CertSegError(f"{path}: server {name!r}: 'dicomweb' must be an http:// or https:// URL")
    return PacsServer(name, dicomweb=entry.get("dicomweb"), dimse=dimse,
                      calling_aet=str(entry.get("calling_aet", "CERTSEG")), username=entry.get("username"),
                      password=entry.get("password"), token=entry.get("token"),
                      verify=bool(entry.get("verify", True)), ca_bundle=entry.get("ca_bundle"),
                      limits=_limits(entry.get("limits") or {}, name, path))


def _limits(entry: dict, name: str, path: Path) -> TransferLimits:
    if not isinstance(entry, dict) or set(entry) - set(LIMIT_SETTINGS):
        raise CertSegError(f"{path}: server {name!r}: 'limits' takes {', '.join(LIMIT_SETTINGS)}")
    values = {}
    for key, value in entry.items():
        field, unit = LIMIT_SETTINGS[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise CertSegError(f"{path}: server {name!r}: limits.{key} must be a positive number, got {value!r}")
        values[field] = int(value * unit) if field in ("page_size", "max_pages") or unit > 1 else float(value)
    return TransferLimits(**values)


def _tls(entry: dict | None) -> TlsFiles | None:
    if entry is None:
        return None
    if set(entry) - {"ca", "cert", "key"}:
        raise ValueError("unknown TLS settings")
    return TlsFiles(*(Path(entry[name]) if entry.get(name) else None for name in ("cert", "key", "ca")))
