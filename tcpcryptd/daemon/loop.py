"""The daemon: one event loop over the NFQUEUE fd, the control socket and the engine's timers.

Thin by design: every protocol decision is the engine's (``handle_packet``/``handle_timer``
return a :class:`~tcpcryptd.engine.actions.Result`); this module turns results into
verdicts, deferred verdicts and raw-socket sends, and passes ``time.monotonic()`` in.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import select
import selectors
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from tcpcryptd import __version__
from tcpcryptd.daemon import status as status_view
from tcpcryptd.daemon.config import Config
from tcpcryptd.daemon.control import Caller, ControlServer, Request, Response
from tcpcryptd.daemon.errors import ControlError
from tcpcryptd.daemon.heap import HeapTrimmer
from tcpcryptd.daemon.nflog import PlainLog
from tcpcryptd.daemon.nfqueue import (
    MAX_COPY,
    PacketQueue,
    QueuedPacket,
    Verdicts,
    direction,
    truncated,
)
from tcpcryptd.daemon.rawsock import InjectError
from tcpcryptd.daemon.sockdiag import DiagError, socket_owner
from tcpcryptd.engine.actions import Direction, Result, Verdict
from tcpcryptd.engine.config import EngineConfig
from tcpcryptd.engine.events import Event
from tcpcryptd.packet.tcp import FlowKey

log = logging.getLogger(__name__)

#: Packets up to this size whose TCP checksum the stack left to the NIC go to the engine
#: with ``checksum_partial`` (it completes the checksum where it edits ACKs and SYNs in
#: place, RFC 1624); larger ones leave unchanged or with a new payload and a full checksum
#: (daemon/nfqueue.py).
CHECKSUM_COMPLETE_MAX = 2048


class FlowEngine(Protocol):
    """The part of :class:`tcpcryptd.engine.engine.Engine` the daemon drives."""

    config: EngineConfig
    counters: dict[str, int]

    def handle_packet(self, packet_id: int, data: bytes, direction: Direction,
                      now: float, *, checksum_partial: bool = False) -> Result: ...
    def handle_timer(self, now: float) -> Result: ...
    def peer_answered_plain(self, key: FlowKey, now: float) -> Result: ...
    def shutdown(self, now: float) -> Result: ...
    def next_deadline(self) -> float | None: ...
    def prepare(self, now: float) -> float | None: ...
    def prepare_due(self) -> float | None: ...
    def flows(self, now: float | None = None) -> list[Any]: ...
    def flow_status(self, key: FlowKey, now: float | None = None) -> Any: ...


class Sender(Protocol):
    def send(self, packet: bytes) -> None: ...




def authorize_session(request: Request, caller: Caller | None,
                      owner: Callable[[tuple[str, int], tuple[str, int]], int | None]
                      ) -> tuple[tuple[str, int], tuple[str, int], int | None]:
    """The ``session`` request's 4-tuple and the uid owning that local socket (None: the
    kernel has no such socket), after the access check: a caller that is not privileged
    may ask only about its own sockets (``caller`` None: an in-process call, trusted)."""
    local, remote = status_view.four_tuple(request)
    try:
        uid = owner(local, remote)
    except (DiagError, OSError) as exc:
        raise ControlError(f"cannot look up the socket's owner: {exc.strerror or exc}"
                           ) from None
    if caller is not None and not caller.privileged and (uid is None or uid != caller.uid):
        raise ControlError(f"permission denied: no connection "
                           f"{status_view.join_endpoint(*local)} -> "
                           f"{status_view.join_endpoint(*remote)} owned by uid {caller.uid}")
    return local, remote, uid


def earliest(*deadlines: float | None) -> float | None:
    """The earliest of the deadlines that are set; None when none is."""
    first = None
    for deadline in deadlines:
        if deadline is not None and (first is None or deadline < first):
            first = deadline
    return first


class PacketPath:
    """Engine results -> verdicts and injections; never raises into the queue binding.

    Packets of plain connections are accepted with the plain mark and without the seen mark
    (see :meth:`_accept_plain`). A packet the daemon cannot process (the engine raised, or it
    was truncated by the copy size) is treated as if the queue had been bypassed: an
    outbound one is accepted unmarked, so the firewall guard resets it on encrypted
    connections and lets it pass on plain ones; an inbound one is dropped on encrypted
    connections (the connmark restored into its nfmark says so) and accepted otherwise.
    """

    def __init__(self, engine: FlowEngine, sender: Sender, verdicts: Verdicts,
                 clock: Callable[[], float] = time.monotonic,
                 heap: HeapTrimmer | None = None,
                 events: Callable[[Event], None] | None = None) -> None:
        self.engine = engine
        self.sender = sender
        self.verdicts = verdicts
        self.encrypted_mark = verdicts.encrypted_mark
        self.clock = clock
        self.heap = heap if heap is not None else HeapTrimmer(None)
        #: where each result's events go, in order (the key log, the metrics; None: nowhere)
        self.events = events
        self.counters: Counter[str] = Counter()

    def on_packet(self, packet: QueuedPacket) -> None:
        """Queue callback: one verdict (now or deferred) for every packet."""
        try:
            data = packet.payload
            if len(data) >= MAX_COPY and truncated(data):
                self.counters["daemon_truncated"] += 1
                self._unprocessable(packet)
                return
            result = self.engine.handle_packet(
                packet.id, data, direction(packet), self.clock(),
                checksum_partial=packet.csum_not_ready and len(data) <= CHECKSUM_COMPLETE_MAX)
        except Exception:
            self.counters["daemon_engine_errors"] += 1
            log.debug("engine failed on packet %d", packet.id, exc_info=True)
            self._unprocessable(packet)
            return
        try:
            if result.verdict is Verdict.ACCEPT and not result.plain:
                # the per-packet common case
                self.verdicts.accept(packet, result.data, result.encrypted)
            else:
                self._verdict(packet, result)
            if result.releases or result.transmit or result.events:
                self._apply(result)
        except Exception:
            self.counters["daemon_verdict_errors"] += 1
            log.debug("verdict for packet %d failed", packet.id, exc_info=True)

    def on_timer(self) -> None:
        now = self.clock()
        if self._apply_call("daemon_timer_errors", "engine timer", self.engine.handle_timer, now):
            # idle connections freed their cipher contexts: give the heap back (daemon/heap.py)
            self.heap.after_timers(self.engine.counters.get("aead_released", 0), now)

    def on_peer_plain(self, key: FlowKey) -> None:
        """The kernel made the connection ``key`` plain on the peer's SYN-ACK without ENO
        (daemon/nflog.py): the engine forgets its syn-sent flow."""
        self._apply_call("daemon_engine_errors", "engine on a kernel-made plain connection",
                         self.engine.peer_answered_plain, key, self.clock())

    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` must run next: the engine's next timer, or a heap trim
        that was put off (daemon/heap.py); None: neither."""
        return earliest(self.engine.next_deadline(), self.heap.deadline)

    def prepare(self) -> None:
        """The engine's idle work: one key pair made ahead of need (engine/keypool.py)."""
        try:
            self.engine.prepare(self.clock())
        except Exception:
            self.counters["daemon_prepare_errors"] += 1
            log.debug("engine prepare failed", exc_info=True)

    def shutdown(self) -> None:
        """Abort the engine's encrypted connections (RSTs both ways) before the rules go."""
        self._apply_call("daemon_timer_errors", "engine shutdown", self.engine.shutdown,
                         self.clock())

    def _apply_call(self, counter: str, what: str, call: Callable[..., Result],
                    *args: object) -> bool:
        """Apply the result of an engine call outside the packet path; an exception is
        counted in ``counter`` and logged at DEBUG (False)."""
        try:
            result = call(*args)
        except Exception:
            self.counters[counter] += 1
            log.debug("%s failed", what, exc_info=True)
            return False
        self._apply(result)
        return True

    def _verdict(self, packet: QueuedPacket, result: Result) -> None:
        if result.verdict is Verdict.ACCEPT and result.plain:
            self._accept_plain(packet, result.data)
        elif result.verdict is Verdict.ACCEPT:
            self.verdicts.accept(packet, result.data, result.encrypted)
        elif result.verdict is Verdict.HOLD:
            self.verdicts.hold(packet)
        else:
            self.verdicts.drop(packet)

    def _accept_plain(self, packet: QueuedPacket, data: bytes | None) -> None:
        """A packet of a connection the engine leaves plain: offloaded, not seen.

        The plain mark hands the connection to the kernel (none of its later packets is
        queued). On a connection the firewall knows as encrypted (e.g. encrypted by an
        earlier daemon instance, unknown to this engine) the kernel refuses the offload and
        the guard resets the packet outbound; inbound it is dropped here: a restart must not
        turn an encrypted connection plain.
        """
        if packet.mark & self.encrypted_mark and direction(packet) is Direction.INBOUND:
            self.counters["daemon_stale_encrypted"] += 1
            self.verdicts.drop(packet)
        else:
            self.counters["daemon_offloaded"] += 1
            self.verdicts.accept_plain(packet, data)

    def _unprocessable(self, packet: QueuedPacket) -> None:
        try:
            if direction(packet) is Direction.INBOUND and packet.mark & self.encrypted_mark:
                self.verdicts.drop(packet)
            else:
                self.verdicts.accept_unseen(packet)
        except Exception:  # verdict already given, queue gone: nothing else to do
            log.debug("fallback verdict for packet %d failed", packet.id, exc_info=True)

    def _apply(self, result: Result) -> None:
        for release in result.releases:
            try:
                if not self.verdicts.release(release.packet_id, release.data, release.accept):
                    self.counters["daemon_unknown_releases"] += 1
            except Exception:
                self.counters["daemon_verdict_errors"] += 1
                log.debug("release of packet %d failed", release.packet_id, exc_info=True)
        for transmit in result.transmit:
            try:
                self.sender.send(transmit.data)
            except InjectError as exc:
                self.counters["daemon_inject_errors"] += 1
                log.debug("injection failed: %s", exc)
        if self.events is not None:
            for event in result.events:
                try:
                    self.events(event)
                except Exception:
                    self.counters["daemon_event_errors"] += 1
                    log.debug("recording an event failed", exc_info=True)

    def counters_view(self, *more: dict[str, int]) -> dict[str, int]:
        """Engine counters plus the daemon's own (``daemon_*``) and any ``more``, summed."""
        merged = dict(self.engine.counters)
        for counters in (self.counters, *more):
            for name, value in counters.items():
                merged[name] = merged.get(name, 0) + value
        return merged


class Daemon:
    """Control requests and the event loop around one :class:`PacketPath`."""

    def __init__(self, config: Config, engine: FlowEngine, path: PacketPath,
                 firewall_backend: str, clock: Callable[[], float] = time.monotonic,
                 kernel_counters: Callable[[], dict[str, int]] = dict,
                 owner: Callable[[tuple[str, int], tuple[str, int]], int | None] = socket_owner
                 ) -> None:
        """``kernel_counters`` reads what the firewall counted without the daemon (added to
        the status counters); ``owner`` finds the uid owning a local TCP socket by 4-tuple
        (None: no such socket), for the ``session`` request."""
        self.config = config
        self.engine = engine
        self.path = path
        self.firewall_backend = firewall_backend
        self.kernel_counters = kernel_counters
        self.owner = owner
        self.enabled = engine.config.enabled
        self.clock = clock
        self.started = clock()
        self.stopping = False
        self._wake: socket.socket | None = None

    # ---- control requests

    def handle(self, request: Request, caller: Caller | None = None) -> Response:
        """Answer one control request; ``caller`` is the control connection's peer (None: an
        in-process call, trusted). Which commands a caller may send at all is the control
        server's check (:data:`~tcpcryptd.daemon.control.OPEN_COMMANDS`)."""
        command = request["command"]
        if command == "ping":
            return {"ok": True, "pid": os.getpid(), "version": __version__}
        if command in ("enable", "disable"):
            self.enabled = command == "enable"
            # the engine reads its config at every new SYN: existing flows are unaffected
            self.engine.config = dataclasses.replace(self.engine.config, enabled=self.enabled)
            log.info("encryption of new connections %s", "enabled" if self.enabled
                     else "disabled")
            return {"ok": True, "enabled": self.enabled}
        if command == "status":
            return {"ok": True, **self.status(status_view.StatusQuery.from_request(request))}
        if command == "session":
            return self._session(request, caller)
        return self._session_id(request)

    def status(self, query: status_view.StatusQuery = status_view.StatusQuery()
               ) -> dict[str, Any]:
        """The ``status`` answer: daemon, counters, then rows or a summary (``query``)."""
        now = self.clock()
        counters = self.path.counters_view(self.kernel_counters())
        return {
            "daemon": {
                "pid": os.getpid(),
                "version": __version__,
                "enabled": self.enabled,
                "queue": self.config.queue.number,
                "firewall": self.firewall_backend,
                "uptime": round(now - self.started, 3),
                "held_packets": len(self.path.verdicts.held),
            },
            "counters": counters,
            **status_view.select(self.engine.flows(now), query, counters),
        }

    def _session_id(self, request: Request) -> Response:
        remote_addr = request.get("remote_addr")
        remote_port = request.get("remote_port")
        local_port = request.get("local_port")
        for name, value in (("remote_port", remote_port), ("local_port", local_port)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 0 < value < 65536):
                raise ControlError(f"{name} must be a port number")
        if remote_addr is not None and not isinstance(remote_addr, str):
            raise ControlError("remote_addr must be a string")
        if local_port is None and remote_addr is None:
            raise ControlError("session-id needs remote_addr and remote_port, or local_port")
        sessions = (status_view.session_json(f) for f in self.engine.flows(self.clock()))
        matches = [flow for flow in sessions
                   if status_view.matches(flow, remote_addr, remote_port, local_port)]
        if not matches:
            raise ControlError("no such connection")
        with_id = [flow for flow in matches if flow["session_id"]]
        if not with_id:
            raise ControlError("the connection has no tcpcrypt session (not encrypted, or "
                               "the key exchange has not finished)")
        if len(with_id) > 1:
            raise ControlError(f"{len(with_id)} encrypted connections match; be more "
                               f"specific")
        flow = with_id[0]
        return {"ok": True, "session_id": flow["session_id"], "local": flow["local"],
                "remote": flow["remote"]}

    def _session(self, request: Request, caller: Caller | None) -> Response:
        """The TCPINC API request: the tcpcrypt state of one connection by its 4-tuple.

        A caller that is not privileged gets an answer only for a connection whose local
        socket it owns (the socket's uid, found with sock_diag); root gets one for any
        connection the engine or the kernel knows. A connection the kernel has but the
        engine does not track was left plain (plain connections cost the engine no state).
        """
        local, remote, uid = authorize_session(request, caller, self.owner)
        local_ip, remote_ip = ipaddress.ip_address(local[0]), ipaddress.ip_address(remote[0])
        flow = self.engine.flow_status((local_ip.version, local_ip.packed, local[1],
                                        remote_ip.packed, remote[1]), self.clock())
        if flow is None and uid is None:
            raise ControlError("no such connection")
        wanted = (status_view.join_endpoint(*local), status_view.join_endpoint(*remote))
        return {"ok": True, **status_view.tcpinc_json(wanted, flow)}

    # ---- the loop

    def catch_signals(self) -> Callable[[], None]:
        """SIGTERM/SIGINT set :attr:`stopping` and wake the loop; returns the undo."""
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        self._wake = wake_r
        previous_wakeup = signal.set_wakeup_fd(wake_w.fileno())
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            wake_r.close()
            wake_w.close()
        return restore

    def run(self, queue: PacketQueue, control: ControlServer,
            plain_log: PlainLog | None = None) -> None:
        """Serve until SIGTERM/SIGINT (``stopping``); :meth:`catch_signals` must be active.

        One ``epoll`` watches the queue, the signal wake-up socket, the control server's
        own selector (readable when the listener or a client connection is) and the nflog
        group of connections the kernel made plain (``plain_log``, daemon/nflog.py). Per wake-up
        the loop reads the clock once and asks for the next timer deadline once; the
        control connections' idle deadlines are looked at only while there are any.

        The engine's idle work (:meth:`PacketPath.prepare`: one key pair per call) runs only
        when it is due (the engine's ``prepare_due``: at once after a connection took a
        pair, or when a pair expires) and a poll finds nothing waiting, i.e. after the queue
        was drained and its verdicts sent: it never delays a verdict by more than the one
        call it is in.
        """
        assert control.listener is not None and self._wake is not None
        clients = selectors.DefaultSelector()   # the listener and the control connections
        clients.register(control.listener, selectors.EVENT_READ, "listen")
        poller = select.epoll()
        queue_fd, wake_fd, clients_fd = queue.fileno(), self._wake.fileno(), clients.fileno()
        log_fd = -1 if plain_log is None else plain_log.fileno()
        for fd in (queue_fd, wake_fd, clients_fd, log_fd):
            if fd >= 0:
                poller.register(fd, select.EPOLLIN)
        path, clock, wake = self.path, self.clock, self._wake
        prepare_due = self.engine.prepare_due
        try:
            while not self.stopping:
                now = clock()
                due = path.next_deadline()
                if due is not None and due <= now:
                    path.on_timer()
                    queue.flush()   # releases of held packets
                    due = path.next_deadline()
                if control.connections:
                    for fd in control.expire(now):   # idle or evicted connections
                        clients.unregister(fd)
                        control.drop(fd)
                    due = earliest(due, control.next_deadline())
                prepare_at = prepare_due()
                due = earliest(due, prepare_at)
                ready = poller.poll(-1 if due is None else max(0.0, due - now))
                if not ready and prepare_at is not None and prepare_at <= clock():
                    path.prepare()
                for fd, _ in ready:
                    if fd == queue_fd:
                        queue.process()
                    elif fd == clients_fd:
                        for key, events in clients.select(0):
                            control.on_event(key, events, clients)
                    elif fd == log_fd:
                        plain_log.process()     # type: ignore[union-attr]
                        queue.flush()   # drops of packets the forgotten flows held
                    elif fd == wake_fd:
                        try:
                            wake.recv(512)
                        except BlockingIOError:
                            pass
        finally:
            poller.close()
            clients.close()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        log.info("%s received, stopping", signal.Signals(signum).name)
        self.stopping = True
