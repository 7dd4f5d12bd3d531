"""What a hostile peer meets before any DICOM is parsed: connection caps, TLS off the accept loop, byte budgets.

pynetdicom's server counts associations only once an A-ASSOCIATE-RQ arrives, so sockets that never
send one hold a slot each until the ACSE timeout; and it wraps TLS sockets in the accept loop, where
one peer that never finishes its handshake stops every other connection.  GuardedAssociationServer
refuses a connection at once when its address already holds `max_per_address` connections or the node
holds `max_connections`, does the TLS handshake in the connection's own thread under the ACSE timeout,
and closes any connection whose PDU says it is larger than `max_pdu_bytes` before reading it.
ReceiveBudget bounds the bytes held in memory for objects still being received: per association (one
object at a time, at most the object limit) and across all associations together.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from pynetdicom.transport import RequestHandler, ThreadedAssociationServer


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 32
    max_per_address: int = 4
    handshake_timeout_s: float = 10.0
    max_pdu_bytes: int = 4 * 2**20  # we offer 16 kB PDUs; a peer ignoring that still may not send more


class GuardedRequestHandler(RequestHandler):
    """pynetdicom's handler, with the association's socket refusing to read an oversized PDU."""

    def _create_association(self):
        association = super()._create_association()
        server: GuardedAssociationServer = self.server
        transport = association.dul.socket
        unbounded = transport.recv
        limit = server.limits.max_pdu_bytes

        def bounded_recv(count: int):
            if count > limit:  # pynetdicom would read (and hold) every byte the PDU header declares
                server.report({"event": "dropped", "address": self.client_address[0],
                               "reason": f"PDU of {count} bytes over the {limit}-byte limit"})
                raise OSError(f"PDU of {count} bytes refused")
            return unbounded(count)

        transport.recv = bounded_recv
        return association


class GuardedAssociationServer(ThreadedAssociationServer):
    """An AssociationServer that caps connections per address and in all, with TLS handshakes off the accept loop.

    `report(record)` receives a log record for every refused connection and failed handshake."""

    def __init__(self, ae, address, ae_title, contexts, ssl_context=None, evt_handlers=None, *,
                 limits: ConnectionLimits, report: Callable[[dict], None]):
        self.limits, self.report = limits, report
        self._starting: Counter[str] = Counter()  # accepted, association thread not yet running
        self._starting_lock = threading.Lock()
        super().__init__(ae, address, ae_title, contexts, ssl_context, evt_handlers,
                         request_handler=GuardedRequestHandler)

    def open_connections(self) -> Counter[str]:
        counts = Counter(str(a.requestor.address) for a in self.active_associations)
        with self._starting_lock:
            counts.update(self._starting)
        return counts

    def get_request(self):
        assert self.socket is not None
        client, address = self.socket.accept()
        client.settimeout(self.limits.handshake_timeout_s)
        if self.ssl_context:  # the handshake happens in process_request_thread, not here
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def verify_request(self, request, client_address) -> bool:
        host = str(client_address[0])
        counts = self.open_connections()
        total = sum(counts.values())
        if counts[host] >= self.limits.max_per_address:
            reason = f"{counts[host]} connections already open from this address (limit {self.limits.max_per_address})"
        elif total >= self.limits.max_connections:
            reason = f"{total} connections already open (limit {self.limits.max_connections})"
        else:
            with self._starting_lock:
                self._starting[host] += 1
            return True
        self.report({"event": "dropped", "address": host, "reason": reason})
        return False

    def process_request_thread(self, request, client_address) -> None:
        host = str(client_address[0])
        try:
            if self.ssl_context:
                try:
                    request.do_handshake()
                except (OSError, ssl.SSLError, ValueError) as error:
                    self.report({"event": "dropped", "address": host,
                                 "reason": f"TLS handshake failed: {str(error)[:200] or type(error).__name__}"})
                    self.shutdown_request(request)
                    return
            request.settimeout(None)  # from here pynetdicom's own ACSE, DIMSE and network timeouts govern
            super().process_request_thread(request, client_address)
        finally:
            with self._starting_lock:
                self._starting[host] -= 1
                if self._starting[host] <= 0:
                    del self._starting[host]

    def shutdown_request(self, request) -> None:
        try:
            request.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        request.close()


class ReceiveBudget:
    """Bytes received for objects not yet stored, per association and in all; over either limit: abort."""

    def __init__(self, per_association: int, in_all: int):
        self.per_association, self.in_all = per_association, in_all
        self._held: dict[int, int] = {}
        self._lock = threading.Lock()

    def add(self, association, count: int) -> str | None:
        """Count `count` more bytes for `association`; the reason to abort it, or None."""
        with self._lock:
            held = self._held.get(id(association), 0) + count
            self._held[id(association)] = held
            total = sum(self._held.values())
        if held > self.per_association:
            return f"{held} bytes received for one object (limit {self.per_association})"
        if total > self.in_all:
            return f"{total} bytes in flight across associations (limit {self.in_all})"
        return None

    def release(self, association) -> None:
        with self._lock:
            self._held.pop(id(association), None)

    def held(self) -> int:
        with self._lock:
            return sum(self._held.values())
