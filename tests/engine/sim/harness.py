"""Two hosts, each running TCP stack models behind an optional flow engine, joined by a wire.

The packet path is the daemon's (docs/ARCHITECTURE.md "Layer 3"):

    stack -> engine OUTBOUND -> wire -> peer engine INBOUND -> peer stack

An engine's ``Transmit(OUTBOUND)`` goes to the wire and ``Transmit(INBOUND)`` to its own host's
stack (picked by port, as the kernel would); a HELD packet stays in the host's table until a
``Release`` names it (at most once).  A scenario may run several connections at once through
the same two engines.  Time is simulated: the loop jumps to the earliest of the wire's next
arrival, the stacks' and engines' timers and the applications' next actions.  Nothing sleeps
and nothing reads a clock, so a scenario is a pure function of its seed.  Simulated time and
the event count are bounded: a flow that stops making progress fails with
:class:`SimulationStalled`, naming its state.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import pytest

from tcpcryptd.core.constants import INIT1_MAGIC, INIT2_MAGIC
from tcpcryptd.engine import Direction, Engine, EngineConfig, FlowStatus, Result, Verdict
from tcpcryptd.packet import options
from tcpcryptd.packet.tcp import ACK, FIN, PSH, RST, SYN, URG, TCPPacket

from . import invariants, offload
from .stack import Endpoint, StackConfig, State, TcpStack, seq_diff
from .wire import C2S, S2C, ByteFlip, Impairments, TargetedDrop, Wire

#: A marker planted in the application data: it must never be seen on an ENO wire.
PLAINTEXT_MARKER = b"<<TCPCRYPT-PLAINTEXT-MARKER>>"
_ADDRESSES = {
    4: (bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])),
    6: (bytes.fromhex("fd000000000000000000000000000001"), bytes.fromhex("fd000000000000000000000000000002")),
}
_SERVER_PORT = 443
#: Connections after the first start this much later each, so their handshakes interleave.
_CONNECTION_STAGGER = 0.0013
#: More events than this without the clock moving is a packet storm (or a timer that does not
#: advance), not progress.
_MAX_EVENTS_PER_INSTANT = 20_000


class SimulationStalled(AssertionError):
    """The scenario ran out of simulated time or events before both sides finished."""


class EngineLike(Protocol):
    def handle_packet(self, packet_id: int, data: bytes, direction: Direction, now: float) -> Result: ...
    def handle_timer(self, now: float) -> Result: ...
    def next_deadline(self) -> float | None: ...


@dataclass(frozen=True)
class Scenario:
    """One reproducible run; ``name`` identifies it in test ids and failure messages.

    Targeted drops and the byte flip apply to the first connection only."""

    name: str
    seed: int
    version: int = 4
    client_engine: bool = True
    server_engine: bool = True
    impairments: Impairments = Impairments()
    c2s_bytes: int = 10_000
    s2c_bytes: int = 10_000
    connections: int = 1
    server_first: bool = False
    simultaneous_close: bool = False
    targeted: tuple[TargetedDrop, ...] = ()
    flip: ByteFlip | None = None
    strip_synack_eno: bool = False
    mtu: int = 1500
    slow_reader: bool = False
    keepalive: bool = False
    idle_before_close: float = 0.0
    #: the client sends its second and its last chunk as urgent data (send(MSG_OOB))
    urgent: bool = False
    client_stack: StackConfig = StackConfig()
    server_stack: StackConfig = StackConfig()
    client_iss: int | None = None
    #: 4-tuple reuse (RFC 9293 §3.10.7.4): this many more connections, one after the other,
    #: from the first connection's client port, each ``reuse_gap`` seconds after the
    #: previous one finished; the new client ISN is "higher" or "lower" than the old one's
    #: end; ``reuse_abort``: each client resets its connection (RST) instead of closing
    reuse: int = 0
    reuse_gap: float = 0.5
    reuse_isn: str = "higher"
    reuse_abort: bool = False
    #: simultaneous open (RFC 9293 §3.5): the server connects to the client's port at the
    #: moment the client connects to the server's, instead of listening
    simultaneous_open: bool = False
    #: each side's engine configuration (the real engine only; default EngineConfig())
    client_config: EngineConfig | None = None
    server_config: EngineConfig | None = None
    #: per connection, in order, whether its session must be resumed (RFC 8548 §3.5), as
    #: the wire shows it (the SYN-ACK answers with a resumption suboption) and as both
    #: engines' flows() report it; None: not checked
    expect_resumed: tuple[bool, ...] | None = None
    max_time: float = 900.0
    max_events: int = 200_000
    #: GSO: the stacks hand over super-packets of up to this many payload bytes (0: off)
    gso: int = 0
    #: GRO: in-order data segments arriving together are merged before the engine sees them
    gro: bool = False

    @property
    def expect_encrypted(self) -> bool:
        """Both ends run an engine and no middlebox interferes: the flow must end up ENO
        (a simultaneous open only when one host sets b = 1, RFC 8547 §4.5)."""
        return (self.client_engine and self.server_engine and not self.strip_synack_eno
                and not (self.simultaneous_open and not (
                    self.server_config and self.server_config.passive_role_ports)))

    @property
    def expect_abort(self) -> bool:
        return self.flip is not None


@dataclass
class _App:
    """The application on one end of a connection: writes its data in chunks, reads, closes."""

    data: bytes
    chunks: list[int]
    slow_reader: bool
    gap: float = 0.003
    read_chunk: int = 2048
    read_interval: float = 0.3
    wait_for: int = 0
    urgent_chunks: frozenset[int] = frozenset()
    #: stream offsets one past each urgent write (what the urgent pointer marks)
    urgent_ends: list[int] = field(default_factory=list)
    chunks_written: int = 0
    written: int = 0
    next_write: float | None = None
    next_read: float | None = None
    closed: bool = False
    hold_close: bool = False
    close_at: float | None = None


@dataclass
class _Side:
    """One host: its engine (or none), the packets it holds, and its connections' ends."""

    name: str
    direction: str
    engine: EngineLike | None
    ends: dict[int, _End] = field(default_factory=dict)
    held: dict[int, tuple[bytes, Direction]] = field(default_factory=dict)
    next_packet_id: int = 1
    max_held: int = 0
    local_drops: int = 0
    #: ``flows()`` when a stack last received its FIN (later the engine may forget the flow)
    flows_at_eof: list[FlowStatus] = field(default_factory=list)
    #: the previous connection's end on a reused client port, and when it was replaced
    retired: dict[int, tuple[_End, float]] = field(default_factory=dict)

    def end_for(self, pkt: TCPPacket, now: float = 0.0) -> _End | None:
        """The connection end a packet toward this host's stack belongs to (by client port).

        On a reused port a socket still in TIME-WAIT (60 s, as Linux) gets the packet unless
        it is a SYN it lets through: a higher ISN than its RCV.NXT or a newer timestamp
        (Linux ``tcp_timewait_state_process``, RFC 6191); that SYN ends the TIME-WAIT."""
        port = pkt.dport if self.direction == C2S else pkt.sport
        old = self.retired.get(port)
        if old is not None and old[0].stack.state is State.TIME_WAIT and now < old[1] + 60.0:
            stack = old[0].stack
            if pkt.flags & (SYN | ACK | RST) != SYN:
                return old[0]
            ts = options.timestamps(pkt.options)
            newer_ts = ts is not None and stack.ts_ok and seq_diff(ts[0], stack._ts_recent) > 0
            if seq_diff(pkt.seq, stack.rcv_nxt % (1 << 32)) > 0 or newer_ts:
                stack._close_silently()
                return self.ends.get(port)
            return old[0]
        return self.ends.get(port)


@dataclass
class _End:
    """One end of one connection: a stack and its application."""

    name: str
    side: _Side
    stack: TcpStack
    app: _App


@dataclass
class _Conn:
    key: int
    client: _End
    server: _End
    log: invariants.WireLog = field(default_factory=invariants.WireLog)
    abort_seen_at: float | None = None
    #: the client application reset this connection on purpose (``Scenario.reuse_abort``)
    app_reset: bool = False

    def ends(self) -> tuple[_End, _End]:
        return self.client, self.server


@dataclass
class SimResult:
    """Everything the invariant checks need after a run."""

    scenario: Scenario
    now: float
    events: int
    conns: list[_Conn]
    sides: tuple[_Side, _Side]
    wire: Wire
    violations: list[str]
    trace: list[str] | None = None

    @property
    def client(self) -> _End:
        return self.conns[0].client

    @property
    def server(self) -> _End:
        return self.conns[0].server

    def summary(self) -> str:
        ends = []
        for conn in self.conns:
            for end, peer in ((conn.client, conn.server), (conn.server, conn.client)):
                st = end.stack
                ends.append(
                    f"{end.name} {st.state.value} err={st.error} read {len(st.received)}/{len(peer.app.data)} "
                    f"unacked={st.bytes_unacked} {st.stats}"
                )
        sides = [
            f"{s.name}: held={len(s.held)} local_drops={s.local_drops} engine={_engine_state(s.engine)}"
            for s in self.sides
        ]
        return "; ".join([f"{self.scenario.name}: t={self.now:.3f}s events={self.events}", *ends,
                          f"wire {self.wire.stats}", *sides])


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
        def make_engine(config: EngineConfig | None) -> EngineLike:
            return engine_factory() if engine_factory else Engine(config or EngineConfig())

        self.client_side = _Side("client", C2S, make_engine(scenario.client_config)
                                 if scenario.client_engine else None)
        self.server_side = _Side("server", S2C, make_engine(scenario.server_config)
                                 if scenario.server_engine else None)
        self.conns: list[_Conn] = []
        first_port = 40000 + self.rng.randrange(20000)
        for index in range(scenario.connections):
            self.conns.append(self._make_conn(index, first_port + index))
        self.wire = Wire(
            random.Random(self.rng.random()),
            scenario.impairments,
            scenario.mtu,
            eno_flow=scenario.expect_encrypted,
            targeted=scenario.targeted,
            flip=scenario.flip,
            strip_synack_eno=scenario.strip_synack_eno,
            target_key=self.conns[0].key,
        )
        self.local_rng = random.Random(self.rng.random())
        self.now = 0.0
        self.events = 0
        self.violations: list[str] = []
        #: packets moving between a stack and its engine at this instant: (end, to, bytes,
        #: gso_size of a super-packet or 0)
        self._work: deque[tuple[_End, str, bytes, int]] = deque()
        #: gso_size of the packet being handled, and of held super-packets
        self._gso_size = 0
        self._held_gso: dict[tuple[str, int], int] = {}
        self.offload_rng = random.Random(self.rng.random()) if scenario.gro else None
        self._pending_connects = list(self.conns)
        self._events_at_now = 0
        self._reuse_left = scenario.reuse
        self._reuse_at: float | None = None

    def _make_conn(self, index: int, client_port: int, client_iss: int | None = None) -> _Conn:
        sc = self.sc
        v = sc.version
        client_addr, server_addr = _ADDRESSES[v]
        client_ep = Endpoint(v, client_addr, client_port)
        server_ep = Endpoint(v, server_addr, _SERVER_PORT)
        suffix = "" if index == 0 else f"#{index}"
        client_stack = TcpStack(
            "client" + suffix, client_ep, server_ep, random.Random(self.rng.random()),
            _stack_config(sc.client_stack, sc), sc.client_iss if index == 0 else client_iss,
        )
        server_stack = TcpStack(
            "server" + suffix, server_ep, client_ep, random.Random(self.rng.random()),
            _stack_config(sc.server_stack, sc),
        )
        c_data = make_payload(self.rng, sc.c2s_bytes)
        s_data = make_payload(self.rng, sc.s2c_bytes)
        c_chunks = _chunks(self.rng, len(c_data))
        client_app = _App(c_data, c_chunks, sc.slow_reader, wait_for=len(s_data) if sc.server_first else 0,
                          hold_close=sc.simultaneous_close,
                          urgent_chunks=frozenset({1, len(c_chunks) - 1}) if sc.urgent else frozenset())
        server_app = _App(s_data, _chunks(self.rng, len(s_data)), sc.slow_reader, hold_close=sc.simultaneous_close)
        conn = _Conn(
            client_port,
            _End(client_stack.name, self.client_side, client_stack, client_app),
            _End(server_stack.name, self.server_side, server_stack, server_app),
        )
        self.client_side.ends[client_port] = conn.client
        self.server_side.ends[client_port] = conn.server
        return conn

    # ------------------------------------------------------------------ run loop
    def run(self) -> SimResult:
        for conn in self.conns:
            if not self.sc.simultaneous_open:
                conn.server.stack.listen()
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
            if when > self.now:
                self.now, self._events_at_now = when, 0
            self._events_at_now += 1
            if self._events_at_now > _MAX_EVENTS_PER_INSTANT:
                raise SimulationStalled(f"event storm: {_MAX_EVENTS_PER_INSTANT} events at t={self.now}: "
                                        f"{self._result().summary()}")
            self._step()
            self._drain()
            self._app_react()
            self._drain()
        return self._result()

    def _result(self) -> SimResult:
        return SimResult(
            self.sc, self.now, self.events, self.conns, (self.client_side, self.server_side), self.wire,
            self.violations, self.trace,
        )

    def _ends(self) -> list[_End]:
        return [end for conn in self.conns for end in conn.ends()]

    def _done(self) -> bool:
        done = all(self._conn_done(conn) for conn in self.conns)
        if done and self._reuse_left:
            if self._reuse_at is None:
                self._reuse_at = self.now + self.sc.reuse_gap
            return False
        return done

    def _reuse(self) -> None:
        """A new connection from the last one's client port (RFC 9293 §3.10.7.4)."""
        old = self.conns[-1]
        self._reuse_left -= 1
        self._reuse_at = None
        port = old.key
        old_end = old.client.stack.iss + 2 + len(old.client.app.data)
        iss = (old_end + 100_000 if self.sc.reuse_isn == "higher" else old.client.stack.iss - 100_000)
        # the client reuses its port: a TIME-WAIT socket of its own is recycled (Linux
        # tcp_tw_reuse); the server's may still be in TIME-WAIT and see the new SYN
        if old.client.stack.state is State.TIME_WAIT:
            old.client.stack._close_silently()
        self.server_side.retired[port] = (old.server, self.now)
        conn = self._make_conn(len(self.conns), port, iss % (1 << 32))
        self.conns.append(conn)
        conn.server.stack.listen()
        conn.client.stack.connect(self.now)
        self._collect(conn.client)

    def _conn_done(self, conn: _Conn) -> bool:
        c, s = conn.client.stack, conn.server.stack
        if self.sc.expect_abort:
            if c.error is not None or s.error is not None:
                if conn.abort_seen_at is None:
                    conn.abort_seen_at = self.now
                return (c.error is not None and s.error is not None) or self.now > conn.abort_seen_at + 5.0
            return c.finished and s.finished
        return all(
            e.stack.finished and (e.stack.error is not None or (e.app.closed and e.stack.readable == 0))
            for e in conn.ends()
        )

    def _connect_time(self, conn: _Conn) -> float:
        return self.conns.index(conn) * _CONNECTION_STAGGER

    def _next_event_time(self) -> float | None:
        times = [self.wire.next_arrival()]
        if self._pending_connects:
            times.append(self._connect_time(self._pending_connects[0]))
        times.append(self._reuse_at)
        for side in (self.client_side, self.server_side):
            if side.engine is not None:
                times.append(side.engine.next_deadline())
        for end in self._ends():
            times += [end.stack.next_timer(), end.app.next_write, end.app.next_read, end.app.close_at]
        present = [t for t in times if t is not None]
        return min(present) if present else None

    def _step(self) -> None:
        """Run every event that is due at ``self.now``, in a fixed order."""
        now = self.now
        arrival = self.wire.next_arrival()
        if arrival is not None and arrival <= now:
            direction, data = self.wire.pop_arrival()
            if self.offload_rng is not None:
                data = self._gro(direction, data)
            self._from_wire(self.server_side if direction == C2S else self.client_side, data)
            return
        if self._reuse_at is not None and self._reuse_at <= now:
            self._reuse()
        while self._pending_connects and self._connect_time(self._pending_connects[0]) <= now:
            conn = self._pending_connects.pop(0)
            conn.client.stack.connect(now)
            if self.sc.simultaneous_open:
                conn.server.stack.connect(now)
                self._collect(conn.server)
            self._collect(conn.client)
        for side in (self.client_side, self.server_side):
            if side.engine is not None:
                deadline = side.engine.next_deadline()
                if deadline is not None and deadline <= now:
                    self._apply(side, side.engine.handle_timer(now), None, b"", Direction.OUTBOUND)
        for end in self._ends():
            timer = end.stack.next_timer()
            if timer is not None and timer <= now:
                end.stack.on_timer(now)
                self._collect(end)
            app = end.app
            if app.next_write is not None and app.next_write <= now:
                self._write(end)
            if app.next_read is not None and app.next_read <= now:
                self._slow_read(end)
            if app.close_at is not None and app.close_at <= now:
                self._close(end)

    # ------------------------------------------------------------------ packet path
    def _gro(self, direction: str, data: bytes) -> bytes:
        """Merge the packets arriving with ``data`` that continue it (sim/offload.py)."""
        following = self.wire.arrivals_now(direction, self.now)
        merged, taken = offload.gro_merge(data, following, self.offload_rng)
        for _ in range(taken):
            self.wire.pop_arrival()
        return merged

    def _from_wire(self, side: _Side, data: bytes) -> None:
        self._through_engine(side, data, Direction.INBOUND)

    def _from_stack(self, side: _Side, data: bytes) -> None:
        self._through_engine(side, data, Direction.OUTBOUND)

    def _through_engine(self, side: _Side, data: bytes, direction: Direction) -> None:
        """Hand a packet to the side's engine (straight on where the side has none)."""
        inbound = direction is Direction.INBOUND
        self._note(side, "wire->" if inbound else "stack->", data)
        if side.engine is None:
            gso, self._gso_size = self._gso_size, 0
            if inbound:
                self._to_stack(side, data)
            else:
                self._forward(side, data, direction, gso)
            return
        packet_id = side.next_packet_id
        side.next_packet_id += 1
        gso, self._gso_size = self._gso_size, 0
        result = side.engine.handle_packet(packet_id, data, direction, self.now)
        if gso:
            self._held_gso[(side.name, packet_id)] = gso
        self._apply(side, result, packet_id, data, direction)

    def _apply(self, side: _Side, result: Result, packet_id: int | None, data: bytes, direction: Direction) -> None:
        """Carry out a Result: the verdict, releases of held packets, engine-made packets."""
        verdict = result.verdict
        if packet_id is None:
            if verdict is not None:
                self.violations.append(f"{side.name}: handle_timer returned verdict {verdict!r}")
        elif verdict is Verdict.ACCEPT:
            self._forward(side, result.data if result.data is not None else data, direction,
                          self._held_gso.pop((side.name, packet_id), 0))
        elif verdict is Verdict.HOLD:
            self._note(side, f"HOLD #{packet_id}", data)
            side.held[packet_id] = (data, direction)
            side.max_held = max(side.max_held, len(side.held))
        elif verdict is Verdict.DROP:
            self._held_gso.pop((side.name, packet_id), 0)
            self._note(side, f"DROP #{packet_id}", data)
        else:
            self.violations.append(f"{side.name}: packet {packet_id} got verdict {verdict!r}")
        for release in result.releases:
            held = side.held.pop(release.packet_id, None)
            if held is None:
                self.violations.append(f"{side.name}: release of packet {release.packet_id} that is not held")
                continue
            gso = self._held_gso.pop((side.name, release.packet_id), 0)
            if release.accept:
                self._forward(side, release.data if release.data is not None else held[0], held[1],
                              gso)
        for transmit in result.transmit:
            self._forward(side, transmit.data, transmit.direction)

    def _note(self, side: _Side, hop: str, data: bytes) -> None:
        if self.trace is not None:
            self.trace.append(f"{self.now:10.4f} {side.name:6} {hop:14} {describe(data)}")

    def _forward(self, side: _Side, data: bytes, direction: Direction, gso: int = 0) -> None:
        self._note(side, "engine->" + ("wire" if direction == Direction.OUTBOUND else "stack"), data)
        if direction == Direction.OUTBOUND:
            for piece in offload.gso_segment(data, gso) if gso else (data,):
                self._to_wire(side, piece)
        elif self.local_rng.random() < self.sc.impairments.local_loss:
            side.local_drops += 1
            self._note(side, "LOCAL DROP", data)
        else:
            self._to_stack(side, data)

    def _to_stack(self, side: _Side, data: bytes) -> None:
        end = side.end_for(TCPPacket.parse(data), self.now)
        if end is None:
            self.violations.append(f"{side.name}: a packet for no local connection: {describe(data)}")
            return
        self._work.append((end, "stack", data, 0))

    def _to_wire(self, side: _Side, data: bytes) -> None:
        pkt = TCPPacket.parse(data)
        key = pkt.sport if side.direction == C2S else pkt.dport
        conn = self._conn_of(key, pkt, side.direction)
        if conn is None:
            self.violations.append(f"{side.name}: a packet to the wire for no connection: {describe(data)}")
            return
        conn.log.record(side.direction, data)
        self.wire.send(side.direction, data, self.now, key)

    def _conn_of(self, key: int, pkt: TCPPacket, direction: str) -> _Conn | None:
        """The connection a wire packet belongs to: on a reused port the newest whose
        sender's sequence space holds it (both its streams start at the stacks' ISNs)."""
        conns = [c for c in self.conns if c.key == key]
        if len(conns) > 1 and not pkt.flags & SYN:
            for conn in reversed(conns):
                sender = conn.client.stack if direction == C2S else conn.server.stack
                if sender.state is not State.LISTEN and 0 <= seq_diff(pkt.seq, sender.iss) < 1 << 24:
                    return conn
        return conns[-1] if conns else None

    def _snapshot_flows(self) -> None:
        for side in (self.client_side, self.server_side):
            if isinstance(side.engine, Engine):
                side.flows_at_eof = side.engine.flows()

    def _collect(self, end: _End) -> None:
        output = end.stack.take_output()
        if self.sc.gso:
            for data, gso in offload.gso_merge(output, self.sc.gso):
                self._work.append((end, "engine", data, gso))
            return
        for data in output:
            self._work.append((end, "engine", data, 0))

    def _drain(self) -> None:
        """Process packets moving between stacks and their engine at this instant."""
        while self._work:
            end, where, data, gso = self._work.popleft()
            if where == "stack":
                had_eof = end.stack.eof
                end.stack.receive(data, self.now)
                if end.stack.eof and not had_eof:
                    self._snapshot_flows()
                self._collect(end)
                self._fast_read(end)
            else:
                self._gso_size = gso
                self._from_stack(end.side, data)

    # ------------------------------------------------------------------ applications
    def _app_react(self) -> None:
        for conn in self.conns:
            for end in conn.ends():
                self._app_react_end(conn, end)

    def _app_react_end(self, conn: _Conn, end: _End) -> None:
        app, stack = end.app, end.stack
        self._fast_read(end)
        if stack.error is not None or app.closed or stack.state not in (State.ESTABLISHED, State.CLOSE_WAIT):
            return
        if (self.sc.reuse_abort and end is conn.client and app.written == len(app.data)
                and stack.bytes_unacked == 0 and len(stack.received) == len(conn.server.app.data)):
            conn.app_reset = True
            app.closed = True
            stack._abort("application reset", send_rst=True)
            self._collect(end)
            return
        if app.written < len(app.data):
            if app.next_write is None and len(stack.received) >= app.wait_for:
                app.next_write = self.now
        elif not app.hold_close:
            if app.close_at is None:
                app.close_at = self.now + self.sc.idle_before_close
        elif all(
            e.app.written == len(e.app.data) and len(e.stack.received) == len(o.app.data)
            for e, o in ((conn.client, conn.server), (conn.server, conn.client))
        ):
            for e in conn.ends():
                self._close(e)  # simultaneous close: both FINs leave at this instant

    def _close(self, end: _End) -> None:
        end.app.close_at = None
        if not end.app.closed:
            end.app.closed = True
            end.stack.close(self.now)
            self._collect(end)

    def _write(self, end: _End) -> None:
        app = end.app
        size = app.chunks[app.chunks_written]
        urgent = app.chunks_written in app.urgent_chunks
        end.stack.write(app.data[app.written : app.written + size], self.now, urgent=urgent)
        app.chunks_written += 1
        app.written += size
        if urgent:
            app.urgent_ends.append(app.written)
        app.next_write = self.now + app.gap if app.chunks_written < len(app.chunks) else None
        self._collect(end)

    def _fast_read(self, end: _End) -> None:
        if end.app.slow_reader:
            if end.app.next_read is None and end.stack.readable:
                end.app.next_read = self.now + end.app.read_interval
            return
        if end.stack.readable:
            end.stack.read(end.stack.readable, self.now)
            self._collect(end)

    def _slow_read(self, end: _End) -> None:
        app = end.app
        end.stack.read(app.read_chunk, self.now)
        app.next_read = self.now + app.read_interval if end.stack.readable else None
        self._collect(end)


def describe(data: bytes) -> str:
    """One line for a trace: flags, ports, seq, ack, window, payload length, option kinds."""
    pkt = TCPPacket.parse(data)
    names = "".join(
        n for bit, n in ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (URG, "U"), (ACK, ".")) if pkt.flags & bit
    )
    kinds = ",".join(str(k) for k, _ in options.parse(pkt.options))
    return (
        f"[{names}] {pkt.sport}>{pkt.dport} seq={pkt.seq} ack={pkt.ack} win={pkt.window} "
        f"len={len(pkt.payload)} opts={kinds}"
    )


def _stack_config(cfg: StackConfig, sc: Scenario) -> StackConfig:
    """The stack's own knobs plus what the scenario sets for both: MTU, keep-alive, a small
    receive buffer for a slow reader."""
    keepalive = 0.5 if sc.keepalive else cfg.keepalive_idle
    rcv_buffer = 8192 if sc.slow_reader else cfg.rcv_buffer
    return replace(cfg, mtu=sc.mtu, keepalive_idle=keepalive, rcv_buffer=rcv_buffer)


#: What a stack may only see when an engine misbehaves: bad checksums, garbage, a missing
#: timestamp on a timestamp connection (RFC 7323 §3.2), different bytes at one sequence
#: number, an ACK or a SACK block for bytes it never sent (a wrong wire -> local translation).
_STACK_ANOMALIES = (
    "dropped_bad_checksum",
    "dropped_unparsable",
    "dropped_no_timestamp",
    "inconsistent_retransmissions",
    "acks_beyond_sent",
    "sack_beyond_sent",
)


def check(result: SimResult) -> list[str]:
    """Every property (docs/daemon.md "What the tests check") that applies to this scenario;
    [] when all hold."""
    out = list(result.violations)
    out += [f"wire: oversize packet {o}" for o in result.wire.stats.oversize[:3]]
    for side in result.sides:
        if side.max_held > 64:
            out.append(f"{side.name}: engine held {side.max_held} packets at once")
        if side.held and not result.scenario.expect_abort:
            out.append(f"{side.name}: {len(side.held)} packets still held after the flows finished")
    for conn in result.conns:
        out += _check_conn(result, conn)
    out += _check_engine_status(result)
    return out


def _check_conn(result: SimResult, conn: _Conn) -> list[str]:
    sc = result.scenario
    out = invariants.check_no_conflicts(conn.log)
    c_rec, s_rec = conn.log.records[C2S], conn.log.records[S2C]
    for end in conn.ends():
        st = end.stack.stats
        out += [f"{end.name} stack: {name} = {getattr(st, name)}" for name in _STACK_ANOMALIES if getattr(st, name)]
    resumed = invariants.resumed_on_wire(s_rec)
    if sc.expect_resumed is not None:
        index = result.conns.index(conn)
        if resumed != sc.expect_resumed[index]:
            out.append(f"connection {index}: resumed on the wire is {resumed}, expected "
                       f"{sc.expect_resumed[index]}")
    # a resumed session has no Init messages: frames from wire offset 0 (RFC 8548 §3.5)
    pairs = ((C2S, conn.client.app.data, conn.server.stack, c_rec, None if resumed else INIT1_MAGIC),
             (S2C, conn.server.app.data, conn.client.stack, s_rec, None if resumed else INIT2_MAGIC))
    if conn.app_reset:
        for label, written, receiver, _, _ in pairs:
            out += invariants.check_prefix(label, written, bytes(receiver.received))
        out += [f"{conn.client.name}: client did not get all its data before the reset"
                for _ in [0] if len(conn.client.stack.received) != len(conn.server.app.data)]
    elif sc.expect_abort:
        if conn is result.conns[0]:
            out += _check_abort(result)
        for label, written, receiver, _, _ in pairs:
            out += invariants.check_prefix(label, written, bytes(receiver.received))
    else:
        out += [
            f"{e.name} stack aborted: {e.stack.error}"
            for e in conn.ends()
            if e.stack.error and not e.stack.error_after_completion
        ]
        for label, written, receiver, _, _ in pairs:
            out += invariants.check_stream_delivered(label, written, bytes(receiver.received), receiver.eof)
    if sc.client_engine and not invariants.has_syn_eno(c_rec):
        out.append(f"{conn.client.name}: the client engine did not put ENO on the SYN")
    if sc.urgent and not sc.expect_abort:
        out += _check_urgent(conn)
    if sc.expect_encrypted:
        out += invariants.check_acks_monotonic(f"{C2S} acks", c_rec, s_rec)
        out += invariants.check_acks_monotonic(f"{S2C} acks", s_rec, c_rec)
    for label, written, _, rec, magic in pairs:
        if sc.expect_encrypted:
            out += invariants.check_eno_wire(label, rec, written, magic, complete=not sc.expect_abort,
                                             urgent=sc.urgent)
        elif not sc.expect_abort:
            out += invariants.check_plain_wire(label, rec, written)
    return [f"[{conn.client.name}] {v}" if conn is not result.conns[0] else v for v in out]


def _check_urgent(conn: _Conn) -> list[str]:
    """The receiver's urgent pointer marks where the sender's urgent writes ended: never
    elsewhere, and at least at the last one (later urgent data may supersede earlier marks
    while both are in flight, as in plain TCP)."""
    expected = conn.client.app.urgent_ends
    marks = conn.server.stack.urgent_marks
    out = []
    if not marks <= set(expected):
        out.append(f"urgent pointer marked offsets {sorted(marks - set(expected))}, urgent data ended at {expected}")
    if expected and expected[-1] not in marks:
        out.append(f"urgent data ending at {expected[-1]} was never marked (marks {sorted(marks)})")
    return out


def _check_engine_status(result: SimResult) -> list[str]:
    """What ``flows()`` reports when a FIN reaches a stack: on an ENO flow both ends agree
    on the session ID (RFC 8547 §4.8) with roles A (active opener) and B; a flow that fell
    back is not reported encrypted."""
    sc = result.scenario
    client_side, server_side = result.sides
    if sc.expect_encrypted and not sc.expect_abort:
        by_port = {}
        for side in result.sides:
            for flow in side.flows_at_eof:
                port = int((flow.local if side is client_side else flow.remote).rsplit(":", 1)[1])
                by_port.setdefault(port, {})[side.name] = flow
        out = []
        for conn in result.conns:
            pair = by_port.get(conn.key, {})
            if set(pair) != {"client", "server"}:
                out.append(f"flows(): {conn.client.name} is missing at {sorted({'client', 'server'} - set(pair))}")
                continue
            a, b = pair["client"], pair["server"]
            if (a.role, b.role) != ("A", "B"):
                out.append(f"flows(): {conn.client.name} roles {a.role}/{b.role}, expected A/B")
            if not a.session_id or a.session_id != b.session_id:
                out.append(f"flows(): {conn.client.name} session IDs differ or are empty: "
                           f"{a.session_id!r} vs {b.session_id!r}")
            resumed = invariants.resumed_on_wire(conn.log.records[S2C])
            latest = [c for c in result.conns if c.key == conn.key][-1]   # a reused port's
            if latest is conn and (a.resumed != resumed or b.resumed != resumed):
                out.append(f"flows(): {conn.client.name} resumed {a.resumed}/{b.resumed}, the "
                           f"wire says {resumed}")
        return out
    if not sc.expect_encrypted:
        return [
            f"flows(): {side.name} reports a {flow.state} flow on a connection that must be plain"
            for side in result.sides
            for flow in side.flows_at_eof
            if flow.session_id
        ]
    return []


def _check_abort(result: SimResult) -> list[str]:
    """A tampered frame must abort: the flip happened and the receiving side was reset."""
    sc = result.scenario
    assert sc.flip is not None
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


def run_and_check(scenario: Scenario, engine_factory: Callable[[], EngineLike] | None = None
                  ) -> SimResult:
    """Run ``scenario`` and fail the calling test, with the run's summary, on a stall or on
    any property :func:`check` finds violated."""
    try:
        result = run(scenario, engine_factory)
    except SimulationStalled as stalled:
        pytest.fail(f"stalled: {stalled}", pytrace=False)
    violations = check(result)
    assert not violations, "\n".join([result.summary(), *violations])
    return result


__all__ = [
    "PLAINTEXT_MARKER", "Scenario", "SimResult", "Simulation", "SimulationStalled", "check",
    "make_payload", "run", "run_and_check",
]
