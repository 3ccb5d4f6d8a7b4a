"""Two engines back to back, every call checked against the engine's invariants.

A :class:`Bench` plays both local stacks (a minimal model: next sequence number, what it
received in order) and a wire between the two engines.  Whatever an engine asks for is
carried out at once, breadth first: packets toward the wire reach the peer engine, packets
toward the local stack are recorded, held packets wait for their release.  Every engine
call is checked (:meth:`Bench.call`, :meth:`Bench._apply`; at the end :meth:`Bench.drain`):
a broken invariant raises :class:`InvariantError` naming it.

Plaintext detection: the local stacks send :data:`MARKER` (several times per segment) only
on ENO connections (:data:`SENSITIVE` states); no byte string toward the wire may ever
contain it.  Fuzzed packets never carry it (:func:`scrub`), so a marker on the wire is
always plaintext the local stack sent.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field

from _hand import ISN_A, ISN_B, M32, syn_options, ts_options
from tcpcryptd.engine import Direction, Engine, EngineConfig, FlowStatus, Result, Verdict
from tcpcryptd.engine.flow import Flow, State
from tcpcryptd.engine.inbound import _MAX_FRAME_WIRE
from tcpcryptd.packet.checksum import ipv4_header_checksum, tcp_checksum
from tcpcryptd.packet.tcp import ACK, FIN, PSH, RST, SYN, PacketError, TCPPacket, build

#: Recognizable plaintext of the local stacks; found in a wire packet, it is a leak.
MARKER = b"\x9c\x11FUZZ-PLAINTEXT-MARKER\x07\xe3"
#: Flow states of an ENO connection whose local stack's bytes must never reach the wire.
SENSITIVE = frozenset({str(State.KEYING), str(State.ENCRYPTED), str(State.CLOSED),
                       str(State.ABORTED), str(State.TOMBSTONE)})
#: Every state a flow can be in, for the coverage events.
STATES = tuple(str(state) for state in State)
#: Engine calls (both engines) that one top-level step may cause; more is a packet storm.
MAX_CALLS_PER_STEP = 400
#: Timer rounds allowed to drain both engines at the end of an example.
MAX_DRAIN_ROUNDS = 5000

ADDRESSES = {
    4: (bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])),
    6: (bytes.fromhex("fd000000000000000000000000000001"),
        bytes.fromhex("fd000000000000000000000000000002")),
}
A_PORT, B_PORT = 40000, 443

#: The configuration both engines run with: small limits, so the fuzz reaches them.
FUZZ_CONFIG = EngineConfig(max_flows=4, max_held_packets=3, max_buffered_bytes=1 << 15)


class InvariantError(AssertionError):
    """An engine call broke one of the invariants the fuzz target checks."""


class HeldForever(InvariantError):
    """A HELD packet never got its release, though every timer ran out."""


class PacketStorm(InvariantError):
    """One step made the engines answer each other more than :data:`MAX_CALLS_PER_STEP` times."""


def scrub(data: bytes) -> bytes:
    """``data`` with every occurrence of :data:`MARKER` defused (fuzzed packets carry none)."""
    return data.replace(MARKER, MARKER[::-1])


def _ip_layout(data: bytes) -> tuple[int, int, bytes, bytes]:
    """``(tcp_start, end, src, dst)`` of a packet :meth:`TCPPacket.parse` accepts."""
    pkt = TCPPacket.parse(data)
    if pkt.version == 4:
        tcp_start = (data[0] & 15) * 4
        end = struct.unpack_from("!H", data, 2)[0]
    else:
        tcp_start = 40 + len(pkt.ext_headers)
        end = 40 + struct.unpack_from("!H", data, 4)[0]
    return tcp_start, end, pkt.src, pkt.dst


def checksums_ok(data: bytes) -> bool:
    """True when ``data`` parses and its IPv4 header and TCP checksums are both correct."""
    try:
        tcp_start, end, src, dst = _ip_layout(data)
    except PacketError:
        return False
    if data[0] >> 4 == 4 and ipv4_header_checksum(data[:tcp_start]) != (data[10] << 8 | data[11]):
        return False
    return tcp_checksum(src, dst, data[tcp_start:end]) == 0


@dataclass(repr=False)
class Side:
    """One host: its engine, a minimal model of its local stack, what reached that stack."""

    name: str
    engine: Engine
    version: int
    ip: bytes
    port: int
    peer_ip: bytes
    peer_port: int
    isn: int
    #: next sequence number the local stack sends, and the next it expects from the peer
    snd_next: int = 0
    rcv_next: int | None = None
    #: packet id -> (original bytes, direction) of packets this engine HELD, not yet released
    held: dict[int, tuple[bytes, Direction]] = field(default_factory=dict)
    #: recent packets handed to this engine, per direction (templates for fuzzed packets)
    history: dict[Direction, deque[bytes]] = field(default_factory=lambda: {
        Direction.OUTBOUND: deque(maxlen=24), Direction.INBOUND: deque(maxlen=24)})

    def __repr__(self) -> str:
        return f"Side({self.name}, IPv{self.version})"

    def seg(self, seq: int, ack: int, flags: int, payload: bytes = b"", *,
            options: bytes | None = None, window: int = 65535, urg_ptr: int = 0) -> bytes:
        """A segment of the main connection as this host's local stack sends it."""
        if options is None:
            options = ts_options(1000, 2000)
        return build(self.version, self.ip, self.peer_ip, self.port, self.peer_port,
                     seq & M32, ack & M32, flags, window, options, payload, urg_ptr=urg_ptr)

    def status(self) -> FlowStatus | None:
        """The engine's status of the main connection, or None when it tracks none."""
        local = self.engine.flows()
        for status in local:
            if status.local.endswith(f":{self.port}") and status.remote.endswith(
                    f":{self.peer_port}"):
                return status
        return None

    def take(self, data: bytes) -> None:
        """The local stack receives ``data``: advance what it expects from the peer."""
        pkt = TCPPacket.parse(data)
        if (pkt.sport, pkt.dport) != (self.peer_port, self.port) or pkt.flags & RST:
            return
        if pkt.flags & SYN:
            self.rcv_next = (pkt.seq + 1) & M32
            return
        if self.rcv_next is None:
            return
        length = len(pkt.payload) + (1 if pkt.flags & FIN else 0)
        ahead = (self.rcv_next - pkt.seq) & M32
        if ahead < length:
            self.rcv_next = (pkt.seq + length) & M32


class Bench:
    """Host A (active opener) and host B (passive) over a wire; see the module docstring."""

    def __init__(self, version: int, *, config_a: EngineConfig = FUZZ_CONFIG,
                 config_b: EngineConfig = FUZZ_CONFIG, fast_path: bool = True) -> None:
        ip_a, ip_b = ADDRESSES[version]
        self.a = Side("A", Engine(config_a, fast_path=fast_path), version, ip_a, A_PORT, ip_b,
                      B_PORT, ISN_A, snd_next=ISN_A)
        self.b = Side("B", Engine(config_b, fast_path=fast_path), version, ip_b, B_PORT, ip_a,
                      A_PORT, ISN_B, snd_next=ISN_B)
        self.now = 0.0
        self._ids = 0
        self._queue: deque[tuple[Side, bytes, Direction]] = deque()
        self.calls = 0
        #: drop what the engines send toward the wire instead of delivering it ...
        self.cut = False
        #: ... and keep it here
        self.lost: list[bytes] = []
        #: flow states seen after any call (both engines), for the coverage events
        self.states_seen: set[str] = set()

    def peer(self, side: Side) -> Side:
        return self.b if side is self.a else self.a

    # -- driving ---------------------------------------------------------------------------

    def send(self, side: Side, data: bytes) -> Result:
        """``side``'s local stack sends ``data``: the engine decides, the wire carries it on."""
        return self.inject(side, data, Direction.OUTBOUND)

    def arrive(self, side: Side, data: bytes) -> Result:
        """``data`` arrives from the wire at ``side``'s engine."""
        return self.inject(side, data, Direction.INBOUND)

    def advance(self, now: float) -> None:
        """Time moves to ``now`` (never back); both engines run their due timers."""
        self.now = max(self.now, now)
        self.calls = 0
        for side in (self.a, self.b):
            self._timer(side)
        self._run_queue()

    def drain(self) -> None:
        """Run both engines' timers until none is left: every flow ends, every hold ends."""
        for _ in range(MAX_DRAIN_ROUNDS):
            deadlines = [d for d in (self.a.engine.next_deadline(), self.b.engine.next_deadline())
                         if d is not None]
            if not deadlines:
                break
            self.advance(min(deadlines))
        else:
            raise InvariantError(f"timers still pending after {MAX_DRAIN_ROUNDS} rounds")
        for side in (self.a, self.b):
            if side.held:
                raise HeldForever(f"{side.name}: held packets never released: "
                                     f"{sorted(side.held)}")
            if side.engine.flows():
                raise InvariantError(f"{side.name}: flows outlive every timer: "
                                     f"{side.engine.flows()}")

    # -- the prefixes that bring the flows into a state -----------------------------------

    def syn(self) -> None:
        """A sends its SYN: A syn-sent, B syn-received."""
        a = self.a
        self.send(a, a.seg(a.snd_next, 0, SYN, options=syn_options(tsval=1000)))
        a.snd_next = (a.snd_next + 1) & M32

    def syn_ack(self) -> None:
        """B answers: A negotiated."""
        b = self.b
        self.send(b, b.seg(b.snd_next, b.rcv_next or 0, SYN | ACK,
                           options=syn_options(tsval=2000, tsecr=1000)))
        b.snd_next = (b.snd_next + 1) & M32

    def stack_ack(self, side: Side, flags: int = ACK, payload: bytes = b"") -> Result:
        """``side``'s local stack sends ``payload`` (may be empty) with ``flags``."""
        result = self.send(side, side.seg(side.snd_next, side.rcv_next or 0, flags, payload))
        side.snd_next = (side.snd_next + len(payload) + (1 if flags & (SYN | FIN) else 0)) & M32
        return result

    def stack_data(self, side: Side, size: int, flags: int = ACK | PSH) -> Result:
        """``side``'s stack sends ``size`` bytes: the marker on an ENO connection."""
        status = side.status()
        unit = MARKER if status is not None and status.state in SENSITIVE else b"plain-bytes!"
        payload = (unit * (size // len(unit) + 1))[:max(size, len(MARKER))]
        return self.stack_ack(side, flags, payload)

    def handshake(self) -> None:
        """SYN, SYN-ACK, third ACK (Init1 and Init2 follow on their own): both encrypted."""
        self.syn()
        self.syn_ack()
        self.stack_ack(self.a)

    # -- the checked engine calls ----------------------------------------------------------

    def inject(self, side: Side, data: bytes, direction: Direction) -> Result:
        """One top-level packet for ``side``'s engine, and everything it causes."""
        self.calls = 0
        result = self.call(side, data, direction)
        self._run_queue()
        return result

    def _run_queue(self) -> None:
        while self._queue:
            side, data, direction = self._queue.popleft()
            self.call(side, data, direction)

    def call(self, side: Side, data: bytes, direction: Direction) -> Result:
        """One checked ``handle_packet``; its outputs are carried out (queued)."""
        self.calls += 1
        if self.calls > MAX_CALLS_PER_STEP:
            raise PacketStorm(f"packet storm: more than {MAX_CALLS_PER_STEP} engine calls "
                                 f"caused by one step")
        self._ids += 1
        packet_id = self._ids
        side.history[direction].append(data)
        valid = checksums_ok(data)
        result = side.engine.handle_packet(packet_id, data, direction, self.now)
        if not isinstance(result, Result) or not isinstance(result.verdict, Verdict):
            raise InvariantError(f"handle_packet returned {result!r}")
        if result.data is not None:
            self._check_made(result.data, "rewritten packet", must_checksum=valid)
        if result.verdict is Verdict.ACCEPT:
            self._deliver(side, result.data if result.data is not None else data, direction)
        elif result.verdict is Verdict.HOLD:
            side.held[packet_id] = (data, direction)
        self._apply(side, result)
        return result

    def _timer(self, side: Side) -> None:
        result = side.engine.handle_timer(self.now)
        if not isinstance(result, Result) or result.verdict is not None or result.data is not None:
            raise InvariantError(f"handle_timer returned {result!r}")
        self._apply(side, result)
        deadline = side.engine.next_deadline()
        if deadline is not None and not deadline > self.now:
            raise InvariantError(f"{side.name}: next_deadline {deadline} not after the timer "
                                 f"run at {self.now}: the daemon's loop would spin")

    def _apply(self, side: Side, result: Result) -> None:
        for release in result.releases:
            if release.packet_id not in side.held:
                raise InvariantError(f"{side.name}: release of packet {release.packet_id}, "
                                     f"not held (never, or released already)")
            original, direction = side.held.pop(release.packet_id)
            if release.data is not None:
                self._check_made(release.data, "released packet", must_checksum=True)
            if release.accept:
                self._deliver(side, release.data if release.data is not None else original,
                              direction)
        for transmit in result.transmit:
            if not isinstance(transmit.direction, Direction):
                raise InvariantError(f"transmit with direction {transmit.direction!r}")
            self._check_made(transmit.data, "engine-made packet", must_checksum=True)
            self._deliver(side, transmit.data, transmit.direction)
        self._check_bounds(side)

    def _deliver(self, side: Side, data: bytes, direction: Direction) -> None:
        """A packet ``side``'s engine let through or made, travelling ``direction``."""
        if direction is Direction.OUTBOUND:
            if MARKER in data:
                raise InvariantError(f"{side.name}: the local stack's plaintext on the wire: "
                                     f"{data.hex()}")
            if self.cut:
                self.lost.append(data)
            else:
                self._queue.append((self.peer(side), data, Direction.INBOUND))
        else:
            try:
                side.take(data)
            except PacketError:
                pass   # an unparsable packet passed untouched: the stack drops it

    @staticmethod
    def _check_made(data: bytes, what: str, *, must_checksum: bool) -> None:
        """Bytes the engine produced parse, with correct checksums (when the input had them)."""
        try:
            TCPPacket.parse(data)
        except PacketError as exc:
            raise InvariantError(f"{what} does not parse ({exc}): {data.hex()}") from None
        if must_checksum and not checksums_ok(data):
            raise InvariantError(f"{what} has a wrong checksum: {data.hex()}")

    def _check_bounds(self, side: Side) -> None:
        engine = side.engine
        cfg = engine.config
        if engine.counters["aborts_internal-error"]:
            reasons = [flow.abort_reason for flow in engine._flows.values()]
            raise InvariantError(f"{side.name}: an exception inside the engine (caught, the "
                                 f"flow aborted): {reasons}")
        flows = list(engine._flows.values())
        if len(flows) > cfg.max_flows:
            raise InvariantError(f"{side.name}: {len(flows)} flows > max_flows {cfg.max_flows}")
        for flow in flows:
            self.states_seen.add(str(flow.state))
            if len(flow.held) > cfg.max_held_packets:
                raise InvariantError(f"{side.name}: {len(flow.held)} held packets > "
                                     f"max_held_packets {cfg.max_held_packets}")
            if not isinstance(flow, Flow):
                continue   # a half-open flow: no buffers
            buffered = flow.rx.buffered + len(flow.rx_partial) + len(flow.dl_buf)
            if buffered > cfg.max_buffered_bytes + 2 * _MAX_FRAME_WIRE:
                raise InvariantError(f"{side.name}: {buffered} bytes buffered in one flow")
        if len(engine._deadlines.heap) > 3 * len(flows) // 2 + 257:
            raise InvariantError(f"{side.name}: {len(engine._deadlines.heap)} timer entries for "
                                 f"{len(flows)} flows")


__all__ = ["A_PORT", "ACK", "B_PORT", "Bench", "Direction", "FIN", "FUZZ_CONFIG", "HeldForever",
           "InvariantError", "M32", "PacketStorm",
           "MARKER", "RST", "SENSITIVE", "STATES", "SYN", "Side", "checksums_ok", "scrub"]
