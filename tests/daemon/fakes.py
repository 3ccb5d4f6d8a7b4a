"""Test doubles for the daemon's plumbing: queued packets, a scripted engine, a sender."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field

from tcpcryptd.daemon.nfqueue import NF_INET_LOCAL_OUT, NF_INET_LOCAL_IN
from tcpcryptd.daemon.rawsock import InjectError
from tcpcryptd.engine.actions import Direction, Result, Verdict
from tcpcryptd.engine.config import EngineConfig
from tcpcryptd.engine.flow import FlowStatus


def ipv4_packet(payload_len: int = 0, total_len: int | None = None) -> bytes:
    """A minimal IPv4 header (+ zero bytes); ``total_len`` may lie to fake truncation."""
    length = 20 + payload_len if total_len is None else total_len
    header = bytes([0x45, 0]) + length.to_bytes(2, "big") + bytes(8) + \
        bytes([10, 0, 0, 1, 10, 0, 0, 2])
    return header + bytes(payload_len)


@dataclass
class FakePacket:
    """Records what the daemon did with it, and refuses a second verdict like the real one."""

    id: int
    payload: bytes = field(default_factory=ipv4_packet)
    hook: int = NF_INET_LOCAL_OUT
    mark: int = 0
    verdict: str | None = None
    new_payload: bytes | None = None
    new_mark: int | None = None
    retained: bool = False
    csum_not_ready: bool = False

    @classmethod
    def inbound(cls, packet_id: int, mark: int = 0) -> FakePacket:
        return cls(packet_id, hook=NF_INET_LOCAL_IN, mark=mark)

    def retain(self) -> None:
        self.retained = True

    def _give(self, verdict: str) -> None:
        if self.verdict is not None:
            raise RuntimeError("Verdict already given for this packet")
        self.verdict = verdict

    def accept(self, mark: int | None = None, payload: bytes | None = None) -> None:
        self._give("accept")
        self.new_mark, self.new_payload = mark, payload

    def drop(self) -> None:
        self._give("drop")


class ScriptedEngine:
    """Returns queued Results in order (ACCEPT unchanged when the script is empty)."""

    def __init__(self, flows: list[FlowStatus] | None = None) -> None:
        self.script: list[Result | Exception] = []
        self.calls: list[tuple[int, bytes, Direction, float]] = []
        #: the ``checksum_partial`` of each call
        self.checksum_partial: list[bool] = []
        self.timer_calls: list[float] = []
        self.shutdown_calls: list[float] = []
        self.prepare_calls: list[float] = []
        #: (key, now) of each ``peer_answered_plain`` call
        self.plain_calls: list[tuple[tuple, float]] = []
        #: when prepare has work (``prepare_due``); each prepare call sets it to the next
        #: value of ``prepare_script`` (None once the script is empty)
        self.due: float | None = None
        self.prepare_script: list[float | None] = []
        self.deadline: float | None = None
        self.counters: dict[str, int] = {"encrypted": 1, "plain": 2}
        self._flows = flows or []
        self.flows_now: float | None = None
        self.config = EngineConfig()

    def handle_packet(self, packet_id, data, direction, now, *, checksum_partial=False):
        self.calls.append((packet_id, data, direction, now))
        self.checksum_partial.append(checksum_partial)
        return self._next(Result(Verdict.ACCEPT))

    def handle_timer(self, now):
        self.timer_calls.append(now)
        self.deadline = None
        return self._next(Result(None))

    def peer_answered_plain(self, key, now):
        self.plain_calls.append((key, now))
        return self._next(Result(None))

    def shutdown(self, now):
        self.shutdown_calls.append(now)
        return self._next(Result(None))

    def _next(self, default: Result) -> Result:
        if not self.script:
            return default
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    def next_deadline(self):
        return self.deadline

    def prepare(self, now):
        self.prepare_calls.append(now)
        self.due = self.prepare_script.pop(0) if self.prepare_script else None
        return self.due

    def prepare_due(self):
        return self.due

    def flows(self, now=None):
        self.flows_now = now
        return list(self._flows)

    def flow_status(self, key, now=None):
        """The engine's lookup by flow key, over the scripted statuses' text."""
        version, local, local_port, remote, remote_port = key
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        wanted = [socket.inet_ntop(family, local), local_port,
                  socket.inet_ntop(family, remote), remote_port]
        for flow in self._flows:
            (l_host, _, l_port), (r_host, _, r_port) = (flow.local.rpartition(":"),
                                                        flow.remote.rpartition(":"))
            if [str(ipaddress.ip_address(l_host.strip("[]"))), int(l_port),
                    str(ipaddress.ip_address(r_host.strip("[]"))), int(r_port)] == wanted:
                self.flows_now = now
                return flow
        return None


class FakeSender:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.fail = False

    def send(self, packet: bytes) -> None:
        if self.fail:
            raise InjectError("refused")
        self.sent.append(packet)


def flow_status(local="10.0.0.1:40000", remote="10.0.0.2:80", state="encrypted", role="A",
                tep="ECDHE_CURVE25519", aead="AES-128-GCM", session_id="23" + "ab" * 32,
                age=2.5, resumed=False) -> FlowStatus:
    return FlowStatus(local=local, remote=remote, state=state, role=role, tep=tep, aead=aead,
                      session_id=session_id, age=age, packets_out=5, packets_in=4,
                      bytes_out_plain=1000, bytes_out_wire=1106, bytes_in_wire=273,
                      bytes_in_plain=200, abort_reason="", resumed=resumed)


class ControlThread:
    """Serves a :class:`ControlServer` from a thread (the daemon does it from its loop)."""

    def __init__(self, server) -> None:
        import threading

        self.server = server
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> ControlThread:
        self.server.open()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        self.server.close()

    def _serve(self) -> None:
        import select

        while not self._stop:
            fds = [self.server.listener.fileno(), *self.server.connections]
            readable, _, _ = select.select(fds, [], [], 0.05)
            for fd in readable:
                if fd == self.server.listener.fileno():
                    self.server.accept()
                    continue
                self.server.readable(fd)
                while self.server.wants_write(fd) and not self.server.finished(fd):
                    self.server.writable(fd)
                if self.server.finished(fd):
                    self.server.drop(fd)
            for fd in self.server.expire(self.server.clock()):
                self.server.drop(fd)
