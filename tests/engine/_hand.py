"""Hand-built packets and two engines wired back to back, for the engine unit tests.

No TCP model here: each test plays both local stacks by hand, packet by packet, so every
assertion is about one engine decision.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from tcpcryptd.engine import Direction, Engine, EngineConfig, Result, Verdict
from tcpcryptd.packet import options as tcp_options
from tcpcryptd.packet.tcp import ACK, FIN, PSH, RST, SYN, TCPPacket, build

M32 = 0xFFFFFFFF
A_IP, B_IP = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
A_PORT, B_PORT = 40000, 80
# A's ISN near the wrap so every test crosses 2**32
ISN_A, ISN_B = 0xFFFFFF80, 0x10000


def syn_options(mss: int = 1460, tsval: int = 100, tsecr: int = 0, wscale: int = 7) -> bytes:
    return (struct.pack("!BBH", 2, 4, mss) + b"\x04\x02" + struct.pack("!BBII", 8, 10, tsval, tsecr)
            + b"\x01\x03\x03" + bytes([wscale]))


def ts_options(tsval: int, tsecr: int) -> bytes:
    return b"\x01\x01" + struct.pack("!BBII", 8, 10, tsval, tsecr)


@dataclass
class Host:
    """One side: its engine and what its local stack and the wire received from it."""

    name: str
    engine: Engine
    ip: bytes
    port: int
    peer_ip: bytes
    peer_port: int
    to_stack: list[TCPPacket] = field(default_factory=list)   # packets the local stack got
    held: dict[int, bytes] = field(default_factory=dict)
    events: list = field(default_factory=list)   # the engine's events, in order

    def seg(self, seq: int, ack: int, flags: int, payload: bytes = b"", *, window: int = 65535,
            options: bytes | None = None, urg_ptr: int = 0) -> bytes:
        """A segment as this host's local stack sends it (absolute 32-bit numbers)."""
        if options is None:
            options = ts_options(1000, 2000)
        return build(4, self.ip, self.peer_ip, self.port, self.peer_port, seq & M32, ack & M32,
                      flags, window, options, payload, urg_ptr=urg_ptr)


class Pair:
    """Host A (active opener) and host B (passive), engines back to back over a wire list."""

    def __init__(self, config_a: EngineConfig | None = None,
                 config_b: EngineConfig | None = None) -> None:
        self.a = Host("A", Engine(config_a or EngineConfig()), A_IP, A_PORT, B_IP, B_PORT)
        self.b = Host("B", Engine(config_b or EngineConfig()), B_IP, B_PORT, A_IP, A_PORT)
        self.now = 0.0
        self.ids = 0
        self.wire: list[bytes] = []   # every packet that crossed the wire, in order

    def peer(self, host: Host) -> Host:
        return self.b if host is self.a else self.a

    def send(self, host: Host, data: bytes, *, deliver: bool = True) -> tuple[Result, list[bytes]]:
        """The local stack of ``host`` sends ``data``; returns the result and the wire packets."""
        self.ids += 1
        result = host.engine.handle_packet(self.ids, data, Direction.OUTBOUND, self.now)
        host.events.extend(result.events)
        wire = self._collect(host, result, data, self.ids)
        if deliver:
            for packet in wire:
                self.arrive(self.peer(host), packet)
        return result, wire

    def arrive(self, host: Host, data: bytes) -> Result:
        """``data`` arrives from the wire at ``host``'s engine."""
        self.ids += 1
        self.wire.append(data)
        result = host.engine.handle_packet(self.ids, data, Direction.INBOUND, self.now)
        host.events.extend(result.events)
        if result.verdict is Verdict.ACCEPT:
            host.to_stack.append(TCPPacket.parse(result.data if result.data is not None else data))
        self._route(host, result)
        return result

    def timer(self, host: Host, now: float) -> Result:
        self.now = now
        result = host.engine.handle_timer(now)
        host.events.extend(result.events)
        self._route(host, result)
        return result

    def _collect(self, host: Host, result: Result, data: bytes, packet_id: int) -> list[bytes]:
        wire = []
        if result.verdict is Verdict.ACCEPT:
            wire.append(result.data if result.data is not None else data)
        elif result.verdict is Verdict.HOLD:
            host.held[packet_id] = data
        for release in result.releases:
            original = host.held.pop(release.packet_id)
            if release.accept:
                wire.append(release.data if release.data is not None else original)
        for transmit in result.transmit:
            if transmit.direction is Direction.OUTBOUND:
                wire.append(transmit.data)
            else:
                host.to_stack.append(TCPPacket.parse(transmit.data))
        return wire

    def _route(self, host: Host, result: Result) -> None:
        for release in result.releases:
            original = host.held.pop(release.packet_id)
            if release.accept:
                self.arrive(self.peer(host), release.data if release.data is not None else original)
        for transmit in result.transmit:
            if transmit.direction is Direction.OUTBOUND:
                self.arrive(self.peer(host), transmit.data)
            else:
                host.to_stack.append(TCPPacket.parse(transmit.data))

    def handshake(self) -> None:
        """SYN, SYN-ACK, third ACK; Init1 and Init2 flow on their own."""
        a, b = self.a, self.b
        self.send(a, a.seg(ISN_A, 0, SYN, options=syn_options(tsval=1000)))
        self.send(b, b.seg(ISN_B, ISN_A + 1, SYN | ACK, options=syn_options(tsval=2000, tsecr=1000)))
        self.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK))


def stack_bytes(host: Host, isn: int) -> bytes:
    """The byte stream host's local stack received, assembled by sequence number."""
    stream: dict[int, int] = {}
    for pkt in host.to_stack:
        offset = (pkt.seq - isn - 1) & M32
        for k, byte in enumerate(bytes(pkt.payload)):
            stream.setdefault(offset + k, byte)
    out = bytearray()
    while len(out) in stream:
        out.append(stream[len(out)])
    return bytes(out)


__all__ = ["ACK", "FIN", "PSH", "RST", "SYN", "TCPPacket", "Direction", "Verdict", "EngineConfig", "ISN_A", "ISN_B", "M32", "Pair", "Host",
           "stack_bytes", "syn_options", "ts_options", "tcp_options"]
