"""Two hosts, each a TCP stack model behind an optional flow engine, joined by an impaired wire.

The packet path is the daemon's (DESIGN.md §5, docs/ARCHITECTURE.md "Layer 3"):

    stack -> engine OUTBOUND -> wire -> peer engine INBOUND -> peer stack

An engine's ``Transmit(OUTBOUND)`` goes to the wire and ``Transmit(INBOUND)`` to its own stack;
a HELD packet stays in the host's table until a ``Release`` names it (at most once).  Time is
simulated: the loop jumps to the earliest of the wire's next arrival, the stacks' and engines'
timers and the applications' next actions.  Nothing sleeps and nothing reads a clock, so a
scenario is a pure function of its seed.  Simulated time and the event count are bounded: a
flow that stops making progress fails with :class:`SimulationStalled`, naming its state.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol

from tcpcryptd.core.constants import INIT1_MAGIC, INIT2_MAGIC
from tcpcryptd.engine import Direction, Engine, EngineConfig, Verdict
from tcpcryptd.packet import options
from tcpcryptd.packet.tcp import ACK, FIN, PSH, RST, SYN, TCPPacket

from . import invariants
from .stack import Endpoint, StackConfig, State, TcpStack
from .wire import C2S, S2C, ByteFlip, Impairments, TargetedDrop, Wire

#: A marker planted in the application data: it must never be seen on an ENO wire.
PLAINTEXT_MARKER = b"<<TCPCRYPT-PLAINTEXT-MARKER>>"
_ADDRESSES = {
    4: (bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])),
    6: (bytes.fromhex("fd000000000000000000000000000001"), bytes.fromhex("fd000000000000000000000000000002")),
}


class SimulationStalled(AssertionError):
    """The scenario ran out of simulated time or events before both sides finished."""


class EngineLike(Protocol):
    def handle_packet(self, packet_id: int, data: bytes, direction: Direction, now: float): ...
    def handle_timer(self, now: float): ...
    def next_deadline(self) -> float | None: ...


@dataclass(frozen=True)
class Scenario:
    """One reproducible run; ``name`` identifies it in test ids and failure messages."""

    name: str
    seed: int
    version: int = 4
    client_engine: bool = True
    server_engine: bool = True
    impairments: Impairments = Impairments()
    c2s_bytes: int = 10_000
    s2c_bytes: int = 10_000
    server_first: bool = False
    simultaneous_close: bool = False
    targeted: tuple[TargetedDrop, ...] = ()
    flip: ByteFlip | None = None
    strip_synack_eno: bool = False
    mtu: int = 1500
    slow_reader: bool = False
    keepalive: bool = False
    idle_before_close: float = 0.0
    client_stack: StackConfig = StackConfig()
    server_stack: StackConfig = StackConfig()
    client_iss: int | None = None
    max_time: float = 900.0
    max_events: int = 1_000_000

    @property
    def expect_encrypted(self) -> bool:
        """Both ends run an engine and no middlebox interferes: the flow must end up ENO."""
        return self.client_engine and self.server_engine and not self.strip_synack_eno

    @property
    def expect_abort(self) -> bool:
        return self.flip is not None


@dataclass
class _App:
    """The application on one host: writes its data in chunks, reads, closes."""

    data: bytes
    chunks: list[int]
    gap: float
    slow_reader: bool
    read_chunk: int = 2048
    read_interval: float = 0.3
    wait_for: int = 0
    written: int = 0
    next_write: float | None = None
    next_read: float | None = None
    closed: bool = False
    hold_close: bool = False
    close_at: float | None = None


@dataclass
class _Host:
    name: str
    direction: str
    stack: TcpStack
    engine: EngineLike | None
    app: _App
    held: dict[int, tuple[bytes, Direction]] = field(default_factory=dict)
    next_packet_id: int = 1
    max_held: int = 0
    local_drops: int = 0
    #: ``flows()`` when a stack last received its FIN (later the engine may forget the flow)
    flows_at_eof: list = field(default_factory=list)


@dataclass
class SimResult:
    """Everything the invariant checks need after a run."""

    scenario: Scenario
    now: float
    events: int
    client: _Host
    server: _Host
    wire: Wire
    log: invariants.WireLog
    violations: list[str]
    trace: list[str] | None = None

    def summary(self) -> str:
        c, s = self.client.stack, self.server.stack
        return (
            f"{self.scenario.name}: t={self.now:.3f}s events={self.events} "
            f"client {c.state.value} err={c.error} read {len(c.received)}/{len(self.server.app.data)} "
            f"sent_unacked={c.bytes_unacked}; server {s.state.value} err={s.error} read "
            f"{len(s.received)}/{len(self.client.app.data)} sent_unacked={s.bytes_unacked}; "
            f"wire {self.wire.stats}; client stack {c.stats}; server stack {s.stats}; "
            f"held c={len(self.client.held)} s={len(self.server.held)}; "
            f"local drops c={self.client.local_drops} s={self.server.local_drops}; "
            f"engines: c={_engine_state(self.client.engine)} s={_engine_state(self.server.engine)}"
        )


def _engine_state(engine: EngineLike | None) -> str:
    if not isinstance(engine, Engine):
        return "-"
    flows = [f"{f.state}/{f.role}/{f.abort_reason or 'ok'}" for f in engine.flows()]
    return f"{dict(engine.counters)} flows={flows}"


def make_payload(rng: random.Random, size: int) -> bytes:
    """Random application bytes with the plaintext marker planted where it fits."""
    data = bytearray(rng.randbytes(size))
    if size >= len(PLAINTEXT_MARKER):
        for _ in range(1 + size // 8192):
            at = rng.randrange(size - len(PLAINTEXT_MARKER) + 1)
            data[at : at + len(PLAINTEXT_MARKER)] = PLAINTEXT_MARKER
    return bytes(data)


def _chunks(rng: random.Random, size: int) -> list[int]:
    out = []
    left = size
    while left > 0:
        piece = min(left, rng.choice((1, 7, 100, 536, 1000, 1448, 3000, 16384, 65536)))
        out.append(piece)
        left -= piece
    return out


class Simulation:
    """Runs one :class:`Scenario` to completion (or to a clear failure)."""

    def __init__(
        self, scenario: Scenario, engine_factory: Callable[[], EngineLike] | None = None, trace: bool = False
    ) -> None:
        self.sc = scenario
        self.trace: list[str] | None = [] if trace else None
        self.rng = random.Random(scenario.seed)
        make_engine = engine_factory or _real_engine
        v = scenario.version
        client_addr, server_addr = _ADDRESSES[v]
        client_ep = Endpoint(v, client_addr, 40000 + self.rng.randrange(20000))
        server_ep = Endpoint(v, server_addr, 443)
        c_cfg = _stack_config(scenario.client_stack, scenario)
        s_cfg = _stack_config(scenario.server_stack, scenario)
        client_stack = TcpStack(
            "client", client_ep, server_ep, random.Random(self.rng.random()), c_cfg, scenario.client_iss
        )
        server_stack = TcpStack("server", server_ep, client_ep, random.Random(self.rng.random()), s_cfg)
        c_data = make_payload(self.rng, scenario.c2s_bytes)
        s_data = make_payload(self.rng, scenario.s2c_bytes)
        self.client = _Host(
            "client", C2S, client_stack, make_engine() if scenario.client_engine else None,
            _App(c_data, _chunks(self.rng, len(c_data)), 0.003, scenario.slow_reader,
                 wait_for=len(s_data) if scenario.server_first else 0),
        )
        self.server = _Host(
            "server", S2C, server_stack, make_engine() if scenario.server_engine else None,
            _App(s_data, _chunks(self.rng, len(s_data)), 0.003, scenario.slow_reader),
        )
        for host in (self.client, self.server):
            host.app.hold_close = scenario.simultaneous_close
        self.wire = Wire(
            random.Random(self.rng.random()),
            scenario.impairments,
            scenario.mtu,
            eno_flow=scenario.expect_encrypted,
            targeted=scenario.targeted,
            flip=scenario.flip,
            strip_synack_eno=scenario.strip_synack_eno,
        )
        self.log = invariants.WireLog()
        self.local_rng = random.Random(self.rng.random())
        self.now = 0.0
        self.events = 0
        self.violations: list[str] = []
        #: packets moving between a stack and its engine at this instant: (host, to, bytes)
        self._work: deque[tuple[_Host, str, bytes]] = deque()
        self._abort_seen_at: float | None = None

    # ------------------------------------------------------------------ run loop
    def run(self) -> SimResult:
        self.server.stack.listen()
        self.client.stack.connect(self.now)
        self._collect(self.client)
        self._drain()
        while not self._done():
            self.events += 1
            when = self._next_event_time()
            if when is None:
                raise SimulationStalled(f"no event left (deadlock): {self._result().summary()}")
            if when > self.sc.max_time or self.events > self.sc.max_events:
                raise SimulationStalled(
                    f"no completion within {self.sc.max_time}s / {self.sc.max_events} events: "
                    f"{self._result().summary()}"
                )
            self.now = max(self.now, when)
            self._step()
            self._drain()
            self._app_react()
            self._drain()
        return self._result()

    def _result(self) -> SimResult:
        return SimResult(
            self.sc, self.now, self.events, self.client, self.server, self.wire, self.log, self.violations, self.trace
        )

    def _hosts(self) -> tuple[_Host, _Host]:
        return self.client, self.server

    def _done(self) -> bool:
        c, s = self.client.stack, self.server.stack
        if self.sc.expect_abort:
            if c.error is not None or s.error is not None:
                if self._abort_seen_at is None:
                    self._abort_seen_at = self.now
                return (c.error is not None and s.error is not None) or self.now > self._abort_seen_at + 5.0
            return c.finished and s.finished
        return all(
            h.stack.finished and (h.stack.error is not None or (h.app.closed and h.stack.readable == 0))
            for h in self._hosts()
        )

    def _next_event_time(self) -> float | None:
        times = [self.wire.next_arrival()]
        for host in self._hosts():
            times.append(host.stack.next_timer())
            if host.engine is not None:
                times.append(host.engine.next_deadline())
            times.append(host.app.next_write)
            times.append(host.app.next_read)
            times.append(host.app.close_at)
        present = [t for t in times if t is not None]
        return min(present) if present else None

    def _step(self) -> None:
        """Run every event that is due at ``self.now``, in a fixed order."""
        now = self.now
        arrival = self.wire.next_arrival()
        if arrival is not None and arrival <= now:
            direction, data = self.wire.pop_arrival()
            host = self.server if direction == C2S else self.client
            self._from_wire(host, data)
            return
        for host in self._hosts():
            if host.engine is not None:
                deadline = host.engine.next_deadline()
                if deadline is not None and deadline <= now:
                    self._apply(host, host.engine.handle_timer(now), None, b"", Direction.OUTBOUND)
            timer = host.stack.next_timer()
            if timer is not None and timer <= now:
                host.stack.on_timer(now)
                self._collect(host)
            app = host.app
            if app.next_write is not None and app.next_write <= now:
                self._write(host)
            if app.next_read is not None and app.next_read <= now:
                self._slow_read(host)
            if app.close_at is not None and app.close_at <= now:
                self._close(host)

    # ------------------------------------------------------------------ packet path
    def _from_wire(self, host: _Host, data: bytes) -> None:
        self._note(host, "wire->", data)
        if host.engine is None:
            self._work.append((host, "stack", data))
            return
        packet_id = host.next_packet_id
        host.next_packet_id += 1
        result = host.engine.handle_packet(packet_id, data, Direction.INBOUND, self.now)
        self._apply(host, result, packet_id, data, Direction.INBOUND)

    def _from_stack(self, host: _Host, data: bytes) -> None:
        self._note(host, "stack->", data)
        if host.engine is None:
            self._to_wire(host, data)
            return
        packet_id = host.next_packet_id
        host.next_packet_id += 1
        result = host.engine.handle_packet(packet_id, data, Direction.OUTBOUND, self.now)
        self._apply(host, result, packet_id, data, Direction.OUTBOUND)

    def _apply(self, host: _Host, result, packet_id: int | None, data: bytes, direction: Direction) -> None:
        """Carry out a Result: the verdict, releases of held packets, engine-made packets."""
        verdict = result.verdict
        if packet_id is None:
            if verdict is not None:
                self.violations.append(f"{host.name}: handle_timer returned verdict {verdict!r}")
        elif verdict is Verdict.ACCEPT:
            self._forward(host, result.data if result.data is not None else data, direction)
        elif verdict is Verdict.HOLD:
            self._note(host, f"HOLD #{packet_id}", data)
            host.held[packet_id] = (data, direction)
            host.max_held = max(host.max_held, len(host.held))
        elif verdict is Verdict.DROP:
            self._note(host, f"DROP #{packet_id}", data)
        else:
            self.violations.append(f"{host.name}: packet {packet_id} got verdict {verdict!r}")
        for release in result.releases:
            held = host.held.pop(release.packet_id, None)
            if held is None:
                self.violations.append(f"{host.name}: release of packet {release.packet_id} that is not held")
                continue
            if release.accept:
                self._forward(host, release.data if release.data is not None else held[0], held[1])
        for transmit in result.transmit:
            self._forward(host, transmit.data, transmit.direction)

    def _note(self, host: _Host, hop: str, data: bytes) -> None:
        if self.trace is not None:
            self.trace.append(f"{self.now:10.4f} {host.name:6} {hop:14} {describe(data)}")

    def _forward(self, host: _Host, data: bytes, direction: Direction) -> None:
        self._note(host, "engine->" + ("wire" if direction == Direction.OUTBOUND else "stack"), data)
        if direction == Direction.OUTBOUND:
            self._to_wire(host, data)
        elif self.local_rng.random() < self.sc.impairments.local_loss:
            host.local_drops += 1
            self._note(host, "LOCAL DROP", data)
        else:
            self._work.append((host, "stack", data))

    def _to_wire(self, host: _Host, data: bytes) -> None:
        self.log.record(host.direction, data)
        self.wire.send(host.direction, data, self.now)

    def _snapshot_flows(self) -> None:
        for host in self._hosts():
            if isinstance(host.engine, Engine):
                host.flows_at_eof = host.engine.flows()

    def _collect(self, host: _Host) -> None:
        for data in host.stack.take_output():
            self._work.append((host, "engine", data))

    def _drain(self) -> None:
        """Process packets moving between a stack and its engine at this instant."""
        while self._work:
            host, where, data = self._work.popleft()
            if where == "stack":
                had_eof = host.stack.eof
                host.stack.receive(data, self.now)
                if host.stack.eof and not had_eof:
                    self._snapshot_flows()
                self._collect(host)
                self._fast_read(host)
            else:
                self._from_stack(host, data)

    # ------------------------------------------------------------------ applications
    def _app_react(self) -> None:
        for host in self._hosts():
            app, stack = host.app, host.stack
            self._fast_read(host)
            if stack.error is not None or app.closed:
                continue
            if stack.state not in (State.ESTABLISHED, State.CLOSE_WAIT):
                continue
            if app.written < len(app.data):
                if app.next_write is None and len(stack.received) >= app.wait_for:
                    app.next_write = self.now
            elif not app.hold_close:
                if app.close_at is None:
                    app.close_at = self.now + self.sc.idle_before_close
            elif all(
                h.app.written == len(h.app.data) and len(h.stack.received) == len(o.app.data)
                for h, o in ((self.client, self.server), (self.server, self.client))
            ):
                for h in self._hosts():
                    self._close(h)  # simultaneous close: both FINs leave at this instant

    def _close(self, host: _Host) -> None:
        host.app.close_at = None
        if not host.app.closed:
            host.app.closed = True
            host.stack.close(self.now)
            self._collect(host)

    def _write(self, host: _Host) -> None:
        app = host.app
        size = app.chunks.pop(0)
        host.stack.write(app.data[app.written : app.written + size], self.now)
        app.written += size
        app.next_write = self.now + app.gap if app.chunks else None
        self._collect(host)

    def _fast_read(self, host: _Host) -> None:
        if host.app.slow_reader:
            if host.app.next_read is None and host.stack.readable:
                host.app.next_read = self.now + host.app.read_interval
            return
        if host.stack.readable:
            host.stack.read(host.stack.readable, self.now)
            self._collect(host)

    def _slow_read(self, host: _Host) -> None:
        app = host.app
        host.stack.read(app.read_chunk, self.now)
        app.next_read = self.now + app.read_interval if host.stack.readable else None
        self._collect(host)


def describe(data: bytes) -> str:
    """One line for a trace: flags, seq, ack, window, payload length, option kinds."""
    pkt = TCPPacket.parse(data)
    names = "".join(n for bit, n in ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (ACK, ".")) if pkt.flags & bit)
    kinds = ",".join(str(k) for k, _ in options.parse(pkt.options))
    return f"[{names}] seq={pkt.seq} ack={pkt.ack} win={pkt.window} len={len(pkt.payload)} opts={kinds}"


def _real_engine() -> EngineLike:
    return Engine(EngineConfig())


def _stack_config(cfg: StackConfig, sc: Scenario) -> StackConfig:
    """The stack's own knobs plus what the scenario sets for both: MTU, keep-alive, a small
    receive buffer for a slow reader."""
    keepalive = 0.5 if sc.keepalive else cfg.keepalive_idle
    rcv_buffer = 8192 if sc.slow_reader else cfg.rcv_buffer
    return replace(cfg, mtu=sc.mtu, keepalive_idle=keepalive, rcv_buffer=rcv_buffer)


#: What a stack may only see when an engine misbehaves: bad checksums, garbage, a missing
#: timestamp on a timestamp connection (RFC 7323 §3.2), different bytes at one sequence number.
_STACK_ANOMALIES = ("dropped_bad_checksum", "dropped_unparsable", "dropped_no_timestamp", "inconsistent_retransmissions")


def check(result: SimResult) -> list[str]:
    """Every invariant of DESIGN.md §6 that applies to this scenario; [] when all hold."""
    sc = result.scenario
    out = list(result.violations)
    out += [f"wire: oversize packet {o}" for o in result.wire.stats.oversize[:3]]
    out += invariants.check_no_conflicts(result.log)
    c_rec, s_rec = result.log.records[C2S], result.log.records[S2C]
    for host in (result.client, result.server):
        st = host.stack.stats
        for name in _STACK_ANOMALIES:
            if getattr(st, name):
                out.append(f"{host.name} stack: {name} = {getattr(st, name)}")
        if host.max_held > 64:
            out.append(f"{host.name}: engine held {host.max_held} packets at once")
    pairs = ((C2S, result.client.app.data, result.server.stack, c_rec, INIT1_MAGIC),
             (S2C, result.server.app.data, result.client.stack, s_rec, INIT2_MAGIC))
    if sc.expect_abort:
        out += _check_abort(result)
        for label, written, receiver, _, _ in pairs:
            out += invariants.check_prefix(label, written, bytes(receiver.received))
    else:
        out += [f"{h.name} stack aborted: {h.stack.error}" for h in (result.client, result.server) if h.stack.error]
        for label, written, receiver, _, _ in pairs:
            out += invariants.check_stream_delivered(label, written, bytes(receiver.received), receiver.eof)
        for host in (result.client, result.server):
            if host.held:
                out.append(f"{host.name}: {len(host.held)} packets still held after the flow finished")
    if sc.client_engine and not invariants.has_syn_eno(c_rec):
        out.append("client engine did not put ENO on the SYN")
    out += _check_engine_status(result)
    for label, written, _, rec, magic in pairs:
        if sc.expect_encrypted:
            out += invariants.check_eno_wire(label, rec, written, magic, complete=not sc.expect_abort)
        elif not sc.expect_abort:
            out += invariants.check_plain_wire(label, rec, written)
    return out


def _check_engine_status(result: SimResult) -> list[str]:
    """What ``flows()`` reports when a FIN reaches a stack: on an ENO flow both ends agree
    on the session ID (RFC 8547 §4.8) with roles A (active opener) and B; a flow that fell
    back is not reported encrypted."""
    sc = result.scenario
    status = {host.name: host.flows_at_eof for host in (result.client, result.server)}
    if sc.expect_encrypted and not sc.expect_abort:
        if len(status["client"]) != 1 or len(status["server"]) != 1:
            return [f"flows(): expected one flow per engine, got {len(status['client'])} and {len(status['server'])}"]
        a, b = status["client"][0], status["server"][0]
        out = []
        if (a.role, b.role) != ("A", "B"):
            out.append(f"flows(): roles {a.role}/{b.role}, expected A/B")
        if not a.session_id or a.session_id != b.session_id:
            out.append(f"flows(): session IDs differ or are empty: {a.session_id!r} vs {b.session_id!r}")
        return out
    if not sc.expect_encrypted:
        return [
            f"flows(): {name} reports a {flow.state} flow on a connection that must be plain"
            for name, flows in status.items()
            for flow in flows
            if flow.session_id
        ]
    return []


def _check_abort(result: SimResult) -> list[str]:
    """A tampered frame must abort: the flip happened and the receiving side was reset."""
    sc = result.scenario
    if not result.wire.stats.flips:
        return ["tamper scenario: the wire never flipped a byte (scenario proves nothing)"]
    receiver = result.server.stack if sc.flip.direction == C2S else result.client.stack
    if sc.flip.in_init:
        # Different Init bytes at the two ends give different keys (RFC 8548 §3.3: the PRK
        # covers Init1 and Init2): the first frame fails wherever it arrives.
        if result.client.stack.error is None and result.server.stack.error is None:
            return ["tampered Init message: neither connection was aborted"]
        return []
    if receiver.error is None:
        return [f"tampered frame toward the {receiver.name} did not abort its connection ({receiver.state.value})"]
    sender = result.client.stack if receiver is result.server.stack else result.server.stack
    if sender.error is None and not sender.finished:
        return [f"after the tampered frame the {sender.name} was neither reset nor finished ({sender.state.value})"]
    return []


def run(
    scenario: Scenario, engine_factory: Callable[[], EngineLike] | None = None, trace: bool = False
) -> SimResult:
    """Run ``scenario``; raises SimulationStalled if it does not finish."""
    return Simulation(scenario, engine_factory, trace).run()


__all__ = ["PLAINTEXT_MARKER", "Scenario", "SimResult", "Simulation", "SimulationStalled", "check", "make_payload", "run"]
