"""Per-packet cost of the flow engine, in microseconds (run: python -m bench.engine).

Two engines are connected back to back with hand-built packets (no simulation, no I/O), then
each measured operation runs on an established X25519/AES-128-GCM flow:

* parse only: ``TCPPacket.parse`` of a 1448-byte data segment (the floor);
* outbound: a new 1448-byte data segment from the local stack -> framed, sealed, rewritten,
  full checksum;
* inbound: the resulting 1468-byte wire segment -> reassembled, decrypted, verified,
  rewritten toward the stack, full checksum;
* ACK translation: a pure ACK from the peer covering one more frame -> send map lookup,
  header rewrite with the incremental checksum;
* codec floors, for comparison: parse + new payload + full checksum ("codec: rewrite", the
  part of outbound/inbound that is not the engine's), parse + seq/ack edit + incremental
  checksum ("codec: header", the same for ACK translation).

Connection setup, per complete connection between the two engines (``--connections``, in
batches of ``--connection-batch``): SYN, SYN-ACK, ACK + Init1, Init2, one data byte each way,
FIN/ACK close (RFC 8547 §4, RFC 8548 §3.3-3.5), split into host A (the client) and host B,
beside the X25519 key agreement the two hosts cannot avoid (each generates an ephemeral key
pair and runs one exchange, RFC 8548 §5): the floor cryptography sets.  The default
configuration resumes every connection after the first (RFC 8548 §3.5); the same is also
measured with resumption off ("fresh": every connection runs the Init exchange) and on
("resumed": every timed connection is resumed, no Init messages).

Connections that end plain cost one engine only (RFC 8547 §4.6; the daemon stops queueing
a connection once the engine says it is plain): "plain A" is host A's SYN, which gets ENO,
answered by a SYN-ACK without ENO, and A's third ACK; "plain B" is host B receiving a SYN
without ENO, its stack's SYN-ACK and the peer's third ACK.

Each figure is the best batch average (``--batch`` packets), so a busy machine shows less.

Targets on the test machine (docs/benchmarks.md, "What is measured", item 5): outbound
<= 10 us, inbound <= 10 us, ACK translation <= 3 us.
"""

from __future__ import annotations

import argparse
import struct
import time
from collections.abc import Callable

from tcpcryptd.core.constants import TEP
from tcpcryptd.core.tep import key_agreement
from tcpcryptd.engine import Direction, Engine, EngineConfig, Verdict
from tcpcryptd.packet.tcp import ACK, FIN, PSH, SYN, TCPPacket, build

_A, _B = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
_ISN_A, _ISN_B = 1_000_000, 5_000_000
_M32 = 0xFFFFFFFF
_PAYLOAD = 1448
_TARGETS = {"outbound": 10.0, "inbound": 10.0, "ack translation": 3.0}


def _syn_options(tsval: int) -> bytes:
    return (struct.pack("!BBH", 2, 4, 1500) + b"\x04\x02" + struct.pack("!BBII", 8, 10, tsval, 0)
            + b"\x01\x03\x03\x0e")


def _ts(tsval: int, tsecr: int) -> bytes:
    return b"\x01\x01" + struct.pack("!BBII", 8, 10, tsval, tsecr)


def _seg(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int,
         payload: bytes = b"", options: bytes | None = None) -> bytes:
    return build(4, src, dst, sport, dport, seq & _M32, ack & _M32, flags, 0xFFFF,
                 _ts(1, 1) if options is None else options, payload)


class _Bed:
    """Host A's and host B's engines after the handshake and key exchange."""

    def __init__(self) -> None:
        config = EngineConfig(max_buffered_bytes=1 << 40)
        self.a, self.b = Engine(config), Engine(config)
        self.now = 0.0
        a_syn = _seg(_A, _B, 40000, 80, _ISN_A, 0, SYN, options=_syn_options(1))
        b_syn_ack = _seg(_B, _A, 80, 40000, _ISN_B, _ISN_A + 1, SYN | ACK,
                         options=_syn_options(1))
        self._exchange(self.a, a_syn, self.b)
        self._exchange(self.b, b_syn_ack, self.a)
        self._exchange(self.a, _seg(_A, _B, 40000, 80, _ISN_A + 1, _ISN_B + 1, ACK), self.b)
        (flow_a,) = self.a.flows()
        assert flow_a.state == "encrypted", flow_a
        # both stacks open their windows wide (0xFFFF << 14): nothing waits on flow control
        self._exchange(self.a, _seg(_A, _B, 40000, 80, _ISN_A + 1, _ISN_B + 1, ACK), self.b)
        self._exchange(self.b, _seg(_B, _A, 80, 40000, _ISN_B + 1, _ISN_A + 1, ACK), self.a)

    def _exchange(self, sender: Engine, data: bytes, receiver: Engine) -> None:
        """Send ``data`` from ``sender``'s stack and bounce everything until quiet."""
        queue = [(receiver, r) for r in self._wire(sender.handle_packet(
            0, data, Direction.OUTBOUND, self.now), data)]
        while queue:
            engine, packet = queue.pop(0)
            result = engine.handle_packet(0, packet, Direction.INBOUND, self.now)
            other = self.a if engine is self.b else self.b
            queue += [(other, t.data) for t in result.transmit
                      if t.direction is Direction.OUTBOUND]
            queue += [(other, r.data) for r in result.releases if r.accept and r.data]

    @staticmethod
    def _wire(result, data: bytes) -> list[bytes]:
        out = []
        if result.verdict is Verdict.ACCEPT:
            out.append(result.data if result.data is not None else data)
        out += [t.data for t in result.transmit if t.direction is Direction.OUTBOUND]
        return out


class _Connections:
    """Host A's and host B's engines running whole connections, each engine's time summed.

    Every connection has its own client port; the stacks' packets are hand-built as in
    :class:`_Bed` and everything the engines send is bounced until quiet.
    """

    def __init__(self, config: EngineConfig | None = None) -> None:
        config = EngineConfig() if config is None else config
        self.a, self.b = Engine(config), Engine(config)
        self.spent = {self.a: 0.0, self.b: 0.0}
        self.now = 0.0

    def _handle(self, engine: Engine, data: bytes, direction: Direction):
        began = time.perf_counter()
        result = engine.handle_packet(0, data, direction, self.now)
        self.spent[engine] += time.perf_counter() - began
        return result

    def _exchange(self, sender: Engine, data: bytes) -> None:
        """``data`` from ``sender``'s stack, and everything it causes, until quiet."""
        receiver = self.b if sender is self.a else self.a
        queue = [(receiver, r) for r in _Bed._wire(
            self._handle(sender, data, Direction.OUTBOUND), data)]
        while queue:
            engine, packet = queue.pop(0)
            result = self._handle(engine, packet, Direction.INBOUND)
            other = self.a if engine is self.b else self.b
            queue += [(other, t.data) for t in result.transmit
                      if t.direction is Direction.OUTBOUND]
            queue += [(other, r.data) for r in result.releases if r.accept and r.data]

    def idle(self) -> None:
        """Each engine's idle work, untimed, as the daemon runs it when its queue is drained
        (:meth:`Engine.prepare`: the key pairs the next connection takes are made ahead)."""
        for engine in (self.a, self.b):
            while engine.prepare(self.now) == self.now:
                pass

    def connection(self, port: int) -> None:
        """One connection from A's ``port`` after the engines were idle: handshake, a byte
        each way, close."""
        self.idle()
        a, b, isn_a, isn_b = self.a, self.b, _ISN_A + port, _ISN_B + port
        self._exchange(a, _seg(_A, _B, port, 80, isn_a, 0, SYN, options=_syn_options(1)))
        self._exchange(b, _seg(_B, _A, 80, port, isn_b, isn_a + 1, SYN | ACK,
                               options=_syn_options(1)))
        self._exchange(a, _seg(_A, _B, port, 80, isn_a + 1, isn_b + 1, ACK))
        self._exchange(a, _seg(_A, _B, port, 80, isn_a + 1, isn_b + 1, ACK | PSH, b"?"))
        self._exchange(b, _seg(_B, _A, 80, port, isn_b + 1, isn_a + 2, ACK | PSH, b"!"))
        self._exchange(a, _seg(_A, _B, port, 80, isn_a + 2, isn_b + 2, ACK | FIN))
        self._exchange(b, _seg(_B, _A, 80, port, isn_b + 2, isn_a + 3, ACK | FIN))
        self._exchange(a, _seg(_A, _B, port, 80, isn_a + 3, isn_b + 3, ACK))

    def plain_connection(self, port: int, engine: Engine) -> None:
        """The SYN phase of a connection from A's ``port`` that ends plain, on one engine:
        host A's SYN with ENO answered without ENO (``engine`` is A), or a SYN without ENO
        reaching host B (``engine`` is B); every segment must pass, the last one plain."""
        isn_a, isn_b = _ISN_A + port, _ISN_B + port
        syn = _seg(_A, _B, port, 80, isn_a, 0, SYN, options=_syn_options(1))
        syn_ack = _seg(_B, _A, 80, port, isn_b, isn_a + 1, SYN | ACK, options=_syn_options(1))
        ack = _seg(_A, _B, port, 80, isn_a + 1, isn_b + 1, ACK)
        client = Direction.OUTBOUND if engine is self.a else Direction.INBOUND
        server = Direction.INBOUND if engine is self.a else Direction.OUTBOUND
        for data, direction in ((syn, client), (syn_ack, server), (ack, client)):
            result = self._handle(engine, data, direction)
            if result.verdict is not Verdict.ACCEPT or result.transmit:
                raise SystemExit(f"plain connection benchmark: {result}")
        if not result.plain:
            raise SystemExit("plain connection benchmark: the connection did not end plain")


def _key_agreement(i: int, data: bytes) -> None:
    """Both hosts' X25519 work for one connection: two key pairs, two exchanges."""
    scheme = key_agreement(TEP.ECDHE_CURVE25519)
    key_a, key_b = scheme.generate(), scheme.generate()
    key_a.exchange(key_b.pub)
    key_b.exchange(key_a.pub)


def handshakes(count: int, batch: int) -> dict[str, float]:
    """Microseconds per connection (best batch): both hosts, A, B and the key agreement with
    the default configuration; the same fresh and resumed; host A's and host B's plain
    connections.  The connections' key pairs are made ahead, untimed (:meth:`_Connections.
    idle`): the key agreement figure includes their making, the connections' do not."""
    beds = {"": _Connections(), "fresh: ": _Connections(EngineConfig(resumption_enabled=False)),
            "resumed: ": _Connections(EngineConfig(resumption_enabled=True))}
    # the resumed bed's first connection is fresh: it leaves the secret the next one resumes
    beds["resumed: "].connection(9999)
    plain = _Connections()
    best: dict[str, float] = {}
    for first in range(0, count, batch):
        per = {}
        for label, bed in beds.items():
            before = dict(bed.spent)
            for port in range(first, first + batch):
                bed.connection(10000 + port)
            per[f"{label}host A"] = (bed.spent[bed.a] - before[bed.a]) / batch
            per[f"{label}host B"] = (bed.spent[bed.b] - before[bed.b]) / batch
            per[f"{label}both hosts"] = per[f"{label}host A"] + per[f"{label}host B"]
        per["key agreement"] = _timed([b""] * batch, _key_agreement)
        for name, engine in (("plain: host A (SYN with ENO, SYN-ACK without)", plain.a),
                             ("plain: host B (SYN without ENO)", plain.b)):
            before = dict(plain.spent)
            for port in range(first, first + batch):
                plain.plain_connection(10000 + port, engine)
            per[name] = (plain.spent[engine] - before[engine]) / batch
        for name, seconds in per.items():
            best[name] = min(best.get(name, seconds), seconds)
    for bed in beds.values():
        if any(flow.state != "closed" for engine in (bed.a, bed.b) for flow in engine.flows()):
            raise SystemExit("handshake benchmark: a connection did not close: "
                             f"{[flow.state for flow in bed.a.flows()]}")
    resumed = beds["resumed: "]
    if resumed.a.counters["resumed"] != count or resumed.a.counters["encrypted"] != count + 1:
        raise SystemExit("handshake benchmark: not every timed connection was resumed: "
                         f"{dict(resumed.a.counters)}")
    if plain.a.flows() or plain.b.flows() or plain.a.counters["fallback"] != count:
        raise SystemExit("handshake benchmark: a plain connection left state behind")
    us = {name: seconds * 1e6 for name, seconds in best.items()}
    for name in us:
        print(f"{us[name]:9.1f} us  handshake per connection: {name}")
    print(f"key agreement share {us['key agreement'] / us['both hosts']:.0%} of the connection")
    return us


def _report(label: str, seconds: list[float]) -> float:
    """Microseconds per packet: the best batch, robust against a busy machine."""
    elapsed = min(seconds) * 1e6
    target = _TARGETS.get(label)
    verdict = "" if target is None else f"  (target <= {target:g} us: {'ok' if elapsed <= target else 'MISSED'})"
    print(f"{label:<18} {elapsed:8.2f} us/packet{verdict}")
    return elapsed


def _codec_rewrite(i: int, data: bytes) -> bytes:
    """The codec's share of a data segment: parse, new payload, full checksum."""
    pkt = TCPPacket.parse(data)
    pkt.seq = (pkt.seq + 79) & _M32
    pkt.payload = data[-_PAYLOAD:] + bytes(20)
    return pkt.to_bytes()


def _codec_header(i: int, data: bytes) -> bytes:
    """The codec's share of an ACK translation: parse, seq/ack edit, incremental checksum."""
    pkt = TCPPacket.parse(data)
    pkt.seq = (pkt.seq + 74) & _M32
    pkt.ack = (pkt.ack - 79) & _M32
    return pkt.to_bytes_incremental()


def _timed(batch: list[bytes], run: Callable[[int, bytes], object]) -> float:
    began = time.perf_counter()
    for i, data in enumerate(batch):
        run(i, data)
    return (time.perf_counter() - began) / len(batch)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=20000, help="packets per measurement")
    parser.add_argument("--batch", type=int, default=200, help="packets per timed batch")
    parser.add_argument("--connections", type=int, default=300,
                        help="connections for the handshake figures")
    parser.add_argument("--connection-batch", type=int, default=20,
                        help="connections per timed batch")
    args = parser.parse_args(argv)
    bed = _Bed()
    a, b = bed.a, bed.b
    payload = (bytes(range(256)) * 6)[:_PAYLOAD]
    frame = _PAYLOAD + 20
    init1_len, init2_len = 79, 74
    timings: dict[str, list[float]] = {k: [] for k in (
        "parse only", "codec: rewrite", "codec: header", "outbound", "inbound",
        "ack translation")}
    sent = 0  # local bytes A's stack sent

    def stack_segment(k: int) -> bytes:
        return _seg(_A, _B, 40000, 80, _ISN_A + 1 + k * _PAYLOAD, _ISN_B + 1, ACK | PSH, payload)

    def peer_ack(frames: int) -> bytes:
        return _seg(_B, _A, 80, 40000, _ISN_B + 1 + init2_len,
                    _ISN_A + 1 + init1_len + frames * frame, ACK)

    for first in range(0, args.count, args.batch):
        segments = [stack_segment(first + k) for k in range(args.batch)]
        timings["parse only"].append(_timed(segments, lambda i, d: TCPPacket.parse(d)))
        timings["codec: rewrite"].append(_timed(segments, _codec_rewrite))
        timings["codec: header"].append(_timed(segments, _codec_header))
        wire: list[bytes] = []
        timings["outbound"].append(_timed(segments, lambda i, d: wire.append(
            a.handle_packet(i, d, Direction.OUTBOUND, 1.0).data)))
        assert all(len(w) == len(segments[0]) + 20 for w in wire)

        def receive(i: int, data: bytes) -> None:
            assert b.handle_packet(i, data, Direction.INBOUND, 1.0).verdict is Verdict.ACCEPT

        timings["inbound"].append(_timed(wire, receive))
        sent = first + args.batch
        # untimed: B's stack acknowledges what it got (releases the engine's plaintext)
        b.handle_packet(0, _seg(_B, _A, 80, 40000, _ISN_B + 1, _ISN_A + 1 + sent * _PAYLOAD, ACK),
                        Direction.OUTBOUND, 1.0)
        # timed: the peer ACKs frame by frame; each ACK is translated for A's stack
        acks = [peer_ack(first + k + 1) for k in range(args.batch)]

        def translate(i: int, data: bytes) -> None:
            assert a.handle_packet(i, data, Direction.INBOUND, 1.0).verdict is Verdict.ACCEPT

        timings["ack translation"].append(_timed(acks, translate))
    costs = {label: _report(label, seconds) for label, seconds in timings.items()}
    if args.connections:
        costs.update({f"handshake: {name}": value for name, value in
                      handshakes(args.connections, args.connection_batch).items()})
    return costs


if __name__ == "__main__":
    main()
