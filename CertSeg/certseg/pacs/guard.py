"""What a hostile peer meets before any DICOM is parsed: connection caps, TLS off the accept loop, byte budgets.

pynetdicom's server counts associations only once an A-ASSOCIATE-RQ arrives, so sockets that never
send one hold a slot each until the ACSE timeout; and it wraps TLS sockets in the accept loop, where
one peer that never finishes its handshake stops every other connection.  GuardedAssociationServer
refuses a connection at once when its address already holds `max_per_address` connections or the node
holds `max_connections`, does the TLS handshake in the connection's own thread under the ACSE timeout,
closes any connection whose PDU says it is larger than `max_pdu_bytes` before reading it, and bounds every
read: a PDU must arrive whole within `pdu_timeout_s` of its first byte (pynetdicom itself waits for ever once
a PDU has begun).  When the node is full, the connection that has been silent longest (at least
`evict_after_s`) is closed to admit the new one, so peers that only hold sockets open cannot lock out a
sender that sends.
ReceiveBudget bounds the bytes held in memory for objects still being received: per association (one
object at a time, at most the object limit) and across all associations together.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from certseg.names import shown


REFUSAL_LOG_INTERVAL_S = 10.0
READ_SLICE_S = 0.5
AE_TITLE_FORBIDDEN = set("\\") | {chr(c) for c in range(32)} | {chr(127)}


def association_request_problem(body: bytes) -> str | None:
    """Why an A-ASSOCIATE-RQ's AE titles are malformed (PS3.5 6.2: default repertoire, no backslash or control
    characters, not all spaces), naming the title as a log line may carry it; None when both are well formed."""
    for name, field in (("called", body[4:20]), ("calling", body[20:36])):
        try:
            title = field.decode("ascii")
        except UnicodeDecodeError:
            return f"{name} AE title {shown(field.decode('latin-1'))} is malformed (characters outside ASCII)"
        if set(title) & AE_TITLE_FORBIDDEN:
            return f"{name} AE title {shown(title)} is malformed (a backslash or control character)"
        if not title.strip():
            return f"{name} AE title is empty or all spaces"
    return None


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 32
    max_per_address: int = 4
    handshake_timeout_s: float = 10.0
    max_pdu_bytes: int = 4 * 2**20  # we offer 16 kB PDUs; a peer ignoring that still may not send more
    pdu_timeout_s: float = 10.0  # from a PDU's first byte to its last
    evict_after_s: float = 1.0  # silence that makes a connection the one closed when the node is full


@dataclass
class _Connection:
    """One accepted socket, from accept to close: what eviction needs to know of it."""

    socket: socket.socket
    host: str
    last_activity: float  # time.monotonic() of its accept or its latest bytes
    evicted: bool = False
    association: threading.Thread | None = None  # pynetdicom's Association, once the handler made it

    @property
    def open(self) -> bool:
        """Not evicted, and its association (which outlives the handler's thread) not finished."""
        finished = self.association is not None and self.association.ident is not None \
            and not self.association.is_alive()
        return not (self.evicted or finished)


class GuardedRequestHandler(RequestHandler):
    """pynetdicom's handler, with the association's socket reading each PDU under a size and a time limit."""

    def _create_association(self):
        association = super()._create_association()
        server: GuardedAssociationServer = self.server
        transport = association.dul.socket
        host, request = str(self.client_address[0]), self.request
        server.attach(request, association)
        last_header = bytearray()  # the 6-byte header of the PDU being read: its type says what the body is

        def bounded_recv(count: int) -> bytearray:
            """pynetdicom's AssociationSocket.recv (loop until `count` bytes or the peer closes), bounded."""
            if count > server.limits.max_pdu_bytes:  # pynetdicom would read (and hold) every byte declared
                server.report({"event": "dropped", "address": host,
                               "reason": f"PDU of {count} bytes over the {server.limits.max_pdu_bytes}-byte limit"})
                association.certseg_dropped = True
                raise OSError(f"PDU of {count} bytes refused")
            deadline = time.monotonic() + server.limits.pdu_timeout_s
            received = bytearray()
            connection = transport.socket  # pynetdicom sets it to None when the association closes it
            if connection is None:
                raise OSError("the connection is closed")
            while len(received) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    server.report({"event": "dropped", "address": host,
                                   "reason": f"PDU not complete within {server.limits.pdu_timeout_s:g} s "
                                             f"({len(received)} of {count} bytes)"})
                    association.certseg_dropped = True  # one log line for this connection, not two
                    raise TimeoutError("PDU too slow")
                # Short slices: an association ended meanwhile (its ACSE timeout) closes this socket, which a
                # blocked read would not notice; the next slice's read then fails and the DUL ends.
                connection.settimeout(min(remaining, READ_SLICE_S))
                try:
                    chunk = connection.recv(min(count - len(received), 65536))
                except TimeoutError:
                    continue  # the deadline check above reports it
                if not chunk:
                    return received  # the peer closed: pynetdicom sees a short PDU and closes too
                received.extend(chunk)
                server.touch(request)
            if count == 6:
                last_header[:] = received
            elif last_header[:1] == b"\x01" and (problem := association_request_problem(bytes(received))):
                server.report({"event": "dropped", "address": host, "reason": problem})
                association.certseg_dropped = True  # pynetdicom refuses it as an undecodable PDU: say why here
            return received

        transport.recv = bounded_recv
        return association


class GuardedAssociationServer(ThreadedAssociationServer):
    """An AssociationServer that caps connections per address and in all, with TLS handshakes off the accept loop.

    `report(record)` receives a log record for every refused connection and failed handshake."""

    def __init__(self, ae, address, ae_title, contexts, ssl_context=None, evt_handlers=None, *,
                 limits: ConnectionLimits, report: Callable[[dict], None]):
        self.limits, self.report = limits, report
        self._connections: dict[int, _Connection] = {}  # id(socket) -> every connection from accept to close
        self._connections_lock = threading.Lock()
        self._evicted_at: dict[str, float] = {}  # address -> when a connection of it was last closed to make room
        self._refusals: dict[str, tuple[float, int]] = {}  # address -> (last refusal logged, refused since)
        super().__init__(ae, address, ae_title, contexts, ssl_context, evt_handlers,
                         request_handler=GuardedRequestHandler)

    def open_connections(self) -> Counter[str]:
        with self._connections_lock:
            return self._open_counts()

    def _open_counts(self) -> Counter[str]:
        """Open connections per address; forgets those that have closed.  Called with the lock held."""
        for key in [key for key, c in self._connections.items() if not c.open]:
            del self._connections[key]
        return Counter(c.host for c in self._connections.values())

    def attach(self, request, association) -> None:
        """The association pynetdicom made for `request`: the connection is open while it runs."""
        with self._connections_lock:
            connection = self._connections.get(id(request))
            if connection is not None:
                connection.association = association

    def touch(self, request) -> None:
        """The connection of `request` has just received bytes."""
        with self._connections_lock:
            connection = self._connections.get(id(request))
            if connection is not None:
                connection.last_activity = time.monotonic()

    def get_request(self):
        assert self.socket is not None
        client, address = self.socket.accept()
        client.settimeout(self.limits.handshake_timeout_s)
        if self.ssl_context:  # the handshake happens in process_request_thread, not here
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def verify_request(self, request, client_address) -> bool:
        host = str(client_address[0])
        with self._connections_lock:
            counts = self._open_counts()
            total = sum(counts.values())
            if counts[host] >= self.limits.max_per_address:
                reason = f"{counts[host]} connections already open from this address (limit {self.limits.max_per_address})"
            elif total >= self.limits.max_connections and not self._make_room_for(host):
                reason = f"{total} connections already open, none to close for this address (limit {self.limits.max_connections})"
            else:
                self._connections[id(request)] = _Connection(request, host, time.monotonic())
                return True
            logged = self._refusal_to_log(host)
        if logged is not None:
            self.report({"event": "dropped", "address": host, "reason": reason,
                         **({"refused_since_last_line": logged} if logged else {})})
        return False

    def _refusal_to_log(self, host: str) -> int | None:
        """A peer refused in a loop writes one line per address per REFUSAL_LOG_INTERVAL_S, with the count refused
        meanwhile: the log stays readable and bounded.  None: this refusal is only counted.  Lock held."""
        now = time.monotonic()
        last, since = self._refusals.get(host, (-float("inf"), 0))
        if now - last < REFUSAL_LOG_INTERVAL_S:
            self._refusals[host] = (last, since + 1)
            return None
        if len(self._refusals) > 4096:
            self._refusals = {h: v for h, v in self._refusals.items() if now - v[0] < REFUSAL_LOG_INTERVAL_S}
        self._refusals[host] = (now, 0)
        return since

    def _make_room_for(self, host: str) -> bool:
        """Close the connection silent longest (at least evict_after_s) to admit one from `host`; False when none is.

        An address that lost a connection this way within the PDU timeout gets no other: otherwise peers that
        reconnect as soon as they are closed would close each other in a storm.  Called with the lock held.
        Shutting the socket down wakes its thread's read, which then ends the association."""
        now = time.monotonic()
        if now - self._evicted_at.get(host, -float("inf")) < self.limits.pdu_timeout_s:
            return False
        silent = [c for c in self._connections.values() if c.open and now - c.last_activity >= self.limits.evict_after_s]
        if not silent:
            return False
        victim = min(silent, key=lambda c: c.last_activity)
        victim.evicted = True
        if len(self._evicted_at) > 4096:  # bounded: forget addresses whose cool-down is over
            self._evicted_at = {h: t for h, t in self._evicted_at.items() if now - t < self.limits.pdu_timeout_s}
        self._evicted_at[victim.host] = now
        if victim.association is not None:
            victim.association.certseg_dropped = True  # logged here, not again when it closes
        try:
            victim.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.report({"event": "dropped", "address": victim.host,
                     "reason": f"closed to admit a new connection: the node was full ({self.limits.max_connections}) "
                               f"and this one had been silent for {now - victim.last_activity:.1f} s"})
        return True

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
            # From here pynetdicom's ACSE, DIMSE and network timeouts govern the waits between PDUs, and
            # bounded_recv the reading of each PDU; the socket must never block without a limit.
            request.settimeout(self.limits.pdu_timeout_s)
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:  # a connection whose association never started is closed now
                connection = self._connections.get(id(request))
                if connection is not None and connection.association is None:
                    del self._connections[id(request)]

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
