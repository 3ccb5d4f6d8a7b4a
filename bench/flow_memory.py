"""Memory per established, idle encrypted flow of one engine (run: python -m bench.flow_memory).

Two engines are connected back to back with hand-built packets (as in ``bench.engine``, no
simulation, no I/O).  ``N`` connections A -> B (one source port each) do the ENO handshake,
the X25519 key exchange and a few data exchanges in both directions, every byte acknowledged
by both local stacks.  They open at ``--rate`` per second of engine time with both engines'
timers running in between (155/s: the daemon bench's X25519 rate, so earlier flows go idle
while later ones open, as in ``bench.workloads.idle_flows``); then the clock advances by
``--idle`` seconds.

Figures per flow, each set measured in a fresh child process:

* **tracemalloc**: Python allocations that stay after the flows are built (engine A's share
  is found by freeing engine B afterwards);
* **RSS**: the process's resident set growth, divided by ``2 N`` flows (A and B together:
  OpenSSL cipher contexts live outside the Python heap and only RSS sees them), as it is,
  after ``malloc_trim`` (free pages returned, as the daemon's heap trimmer does once idle
  flows released their contexts: the figure to compare with the daemon bench's), and marginal
  (growth from ``N/2`` to ``N`` flows per flow added: what does not grow with the number of
  idle flows cancels out).  tracemalloc is off in this child: its bookkeeping inflates RSS.
* **C heap**: glibc's bytes in use and free after the trim, per flow (``mallinfo2``).  Free
  bytes that stay resident are pages pinned by a chunk still in use: a long-lived object
  from the C heap (over CPython's 512-byte small-object limit) allocated among the
  short-lived OpenSSL contexts.

``--half-open N`` measures the SYN phase instead: one engine (host B) gets ``N`` ENO SYNs
from distinct source ports, as a SYN flood sends them, and its local stack answers each with a
SYN-ACK (the kernel does, SYN cookies or not); the peer never sends the third segment.
Figures per tracked half-open flow: tracemalloc (Python bytes), RSS as it is and after
``malloc_trim``, each in a fresh child process.

``--breakdown`` adds, for engine A's flows, the Python objects each part of a flow owns alone
(objects shared by several flows -- small ints, enum members, algorithm rows -- are not
counted), from ``sys.getsizeof``.  ``--aead`` measures what one AEAD object of the
``cryptography`` package costs in RSS and how long building one takes.  ``--release``
overrides ``EngineConfig.aead_idle_release`` (0: AEAD objects are never released).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterable

from tcpcryptd.engine import Direction, Engine, EngineConfig, Verdict
from tcpcryptd.packet.tcp import ACK, PSH, SYN, build

_A, _B = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
_ISN_A, _ISN_B = 1_000_000, 5_000_000
_M32 = 0xFFFFFFFF
_PORT_B = 80
_FIRST_PORT_A = 20000


def _syn_options(tsval: int) -> bytes:
    return (struct.pack("!BBH", 2, 4, 1460) + b"\x04\x02" + struct.pack("!BBII", 8, 10, tsval, 0)
            + b"\x01\x03\x03\x07")


def _ts(tsval: int, tsecr: int) -> bytes:
    return b"\x01\x01" + struct.pack("!BBII", 8, 10, tsval, tsecr)


class FlowPairs:
    """Engines A and B with ``count`` established flows, idle after a few exchanges.

    Each local stack is played by hand: it acknowledges what it received and sends its next
    request/response; each connection checks that both stacks received exactly what the
    other wrote, and ``check`` that every flow is established.
    """

    def __init__(self, config: EngineConfig | None = None) -> None:
        config = config or EngineConfig()
        self.a, self.b = Engine(config), Engine(config)
        self.now = 0.0
        self.tsval = 1
        #: ("a" | "b", port) -> bytes that stack received, assembled in order
        self.received: dict[tuple[str, int], bytearray] = {}
        self.opened = 0

    # -- plumbing ---------------------------------------------------------------------

    def _seg(self, from_a: bool, port: int, seq: int, ack: int, flags: int,
             payload: bytes = b"", options: bytes | None = None) -> bytes:
        src, dst = (_A, _B) if from_a else (_B, _A)
        sport, dport = (port, _PORT_B) if from_a else (_PORT_B, port)
        return build(4, src, dst, sport, dport, seq & _M32, ack & _M32, flags, 0xFFFF,
                     _ts(self.tsval, self.tsval) if options is None else options, payload)

    def _to_stack(self, engine: Engine, port: int, data: bytes) -> None:
        from tcpcryptd.packet.tcp import TCPPacket
        pkt = TCPPacket.parse(data)
        if not len(pkt.payload):
            return
        side = "a" if engine is self.a else "b"
        isn = _ISN_B if side == "a" else _ISN_A
        buf = self.received.setdefault((side, port), bytearray())
        offset = (pkt.seq - isn - 1) & _M32
        if offset <= len(buf) < offset + len(pkt.payload):
            buf += bytes(pkt.payload)[len(buf) - offset:]

    def send(self, from_a: bool, port: int, data: bytes) -> None:
        """The local stack of A (or B) sends ``data``; everything bounces until quiet."""
        sender, receiver = (self.a, self.b) if from_a else (self.b, self.a)
        result = sender.handle_packet(0, data, Direction.OUTBOUND, self.now)
        queue = self._route(sender, port, result, data)
        while queue:
            engine, packet = queue.pop(0)
            result = engine.handle_packet(0, packet, Direction.INBOUND, self.now)
            if result.verdict is Verdict.ACCEPT:
                self._to_stack(engine, port, result.data if result.data is not None else packet)
            queue += self._route(engine, port, result, None)
        del receiver

    def _route(self, engine: Engine, port: int, result, data: bytes | None) -> list:
        other = self.b if engine is self.a else self.a
        out = []
        if data is not None and result.verdict is Verdict.ACCEPT:
            out.append((other, result.data if result.data is not None else data))
        for t in result.transmit:
            if t.direction is Direction.OUTBOUND:
                out.append((other, t.data))
            else:
                self._to_stack(engine, port, t.data)
        out += [(other, r.data) for r in result.releases if r.accept and r.data]
        return out

    # -- connections ------------------------------------------------------------------

    def open(self, port: int, rounds: int = 3, size: int = 100) -> None:
        """Handshake, key exchange, ``rounds`` request/response pairs, everything ACKed."""
        self.send(True, port, self._seg(True, port, _ISN_A, 0, SYN, options=_syn_options(1)))
        self.send(False, port, self._seg(False, port, _ISN_B, _ISN_A + 1, SYN | ACK,
                                         options=_syn_options(1)))
        self.send(True, port, self._seg(True, port, _ISN_A + 1, _ISN_B + 1, ACK))
        sent_a = sent_b = 0
        for k in range(rounds):
            self.tsval += 1
            request = bytes([k]) * size
            self.send(True, port, self._seg(True, port, _ISN_A + 1 + sent_a, _ISN_B + 1 + sent_b,
                                            ACK | PSH, request))
            sent_a += size
            response = bytes([k + 128]) * (2 * size)
            self.send(False, port, self._seg(False, port, _ISN_B + 1 + sent_b,
                                             _ISN_A + 1 + sent_a, ACK | PSH, response))
            sent_b += 2 * size
        # A's stack acknowledges the last response
        self.send(True, port, self._seg(True, port, _ISN_A + 1 + sent_a, _ISN_B + 1 + sent_b,
                                        ACK))
        # both stacks got exactly what the other wrote (checked now, not kept: the buffers
        # would count as memory of the flows)
        want_b = b"".join(bytes([k]) * size for k in range(rounds))
        want_a = b"".join(bytes([k + 128]) * (2 * size) for k in range(rounds))
        assert self.received.pop(("b", port), None) == want_b, port
        assert self.received.pop(("a", port), None) == want_a, port
        self.opened += 1

    def open_many(self, count: int, rounds: int = 3, size: int = 100,
                  first_port: int = _FIRST_PORT_A, rate: float = 0.0) -> list[int]:
        """``count`` connections; with ``rate``, that many per second of engine time, the
        engines' timers running in between (as in the daemon: earlier flows go idle while
        later ones open)."""
        ports = list(range(first_port, first_port + count))
        for port in ports:
            self.open(port, rounds, size)
            if rate:
                self.now += 1.0 / rate
                for engine in (self.a, self.b):
                    assert not engine.handle_timer(self.now).transmit
        return ports

    def idle(self, seconds: float) -> None:
        """Let ``seconds`` pass in steps of at most one second, running both engines' timers."""
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + 1.0)
            for engine in (self.a, self.b):
                result = engine.handle_timer(self.now)
                # timers of idle, fully acknowledged flows send nothing
                assert not result.transmit, result.transmit

    def check(self, ports: Iterable[int]) -> None:
        """Every flow of both engines is established, and nothing was delivered after."""
        assert not self.received, list(self.received)[:3]
        for engine in (self.a, self.b):
            assert len(engine._flows) == self.opened
            states = {f.state for f in engine.flows()}
            assert states == {"encrypted"}, states


# ---------------------------------------------------------------------------------------
# measurements


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (all ``size_t``)."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _c_heap() -> tuple[int, int]:
    """``(in use, free)`` bytes of the C heap (glibc ``mallinfo2``: chunks in use, mmapped
    blocks included; free chunks, resident or not), ``(0, 0)`` without glibc."""
    try:
        info = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return 0, 0
    info.restype = _MallInfo2
    got = info()
    return got.uordblks + got.hblkhd, got.fordblks


def _malloc_trim() -> None:
    """Give free heap pages back to the kernel (glibc), so RSS counts memory in use."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _warm_up(config: EngineConfig) -> None:
    """Load every code path and fill type caches before the baseline."""
    pairs = FlowPairs(config)
    pairs.check(pairs.open_many(20, first_port=60000))
    pairs.idle(20.0)
    del pairs
    gc.collect()


def measure_trace(count: int, idle: float, rate: float,
                  config: EngineConfig | None = None) -> dict:
    """tracemalloc bytes per flow: A and B together, and engine A's share."""
    import tracemalloc
    config = config or EngineConfig()
    tracemalloc.start()
    _warm_up(config)
    pairs = FlowPairs(config)
    gc.collect()
    base = tracemalloc.get_traced_memory()[0]
    ports = pairs.open_many(count, rate=rate)
    pairs.check(ports)
    pairs.idle(idle)
    gc.collect()
    both = tracemalloc.get_traced_memory()[0] - base
    pairs.b = None  # type: ignore[assignment]
    gc.collect()
    only_a = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return {"flows": count, "trace_both_per_flow": both / (2 * count),
            "trace_a_per_flow": only_a / count, "trace_b_per_flow": (both - only_a) / count}


def measure_rss(count: int, idle: float, rate: float,
                config: EngineConfig | None = None) -> dict:
    """RSS growth per flow over ``count`` flows, as it is and after ``malloc_trim``.

    Also the marginal figure: the growth from ``count / 2`` to ``count`` idle flows, divided
    by the flows added; and the C heap's growth after the trim, in use and free (what is
    not there is in CPython's small-object arenas, or returned).  Costs that do not grow with the number of idle flows (the AEAD
    objects of the flows opened in the last ``aead_idle_release`` seconds, freed holes
    that the next flows reuse) cancel out of it.
    """
    config = config or EngineConfig()
    _warm_up(config)
    pairs = FlowPairs(config)
    gc.collect()
    _malloc_trim()
    base = _rss()
    base_heap = _c_heap()
    half = count // 2
    ports = pairs.open_many(half, rate=rate)
    pairs.idle(idle)
    gc.collect()
    middle = _rss()
    ports += pairs.open_many(count - half, rate=rate, first_port=_FIRST_PORT_A + half)
    pairs.check(ports)
    pairs.idle(idle)
    gc.collect()
    grown = _rss() - base
    marginal = _rss() - middle
    _malloc_trim()
    trimmed = _rss() - base
    heap = _c_heap()
    return {"flows": count, "rss_per_flow": grown / (2 * count),
            "rss_trimmed_per_flow": trimmed / (2 * count),
            "rss_marginal_per_flow": marginal / (2 * (count - half)),
            "c_heap_used_per_flow": (heap[0] - base_heap[0]) / (2 * count),
            "c_heap_free_per_flow": (heap[1] - base_heap[1]) / (2 * count)}


_ATOMIC = (type, type(os), type(len), type(_rss))


def _reachable(root: object, stop: set[int]) -> dict[int, object]:
    """Objects reachable from ``root``, not entering types, modules, functions or ``stop``."""
    seen: dict[int, object] = {}
    todo = [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or id(obj) in stop or isinstance(obj, _ATOMIC):
            continue
        seen[id(obj)] = obj
        if hasattr(type(obj), "__dict__") and not isinstance(obj, dict) and hasattr(obj, "__dict__"):
            todo.append(obj.__dict__)
        todo.extend(gc.get_referents(obj))
    return seen


def _components(flow) -> dict[str, list[object]]:
    parts: dict[str, list[object]] = {
        "session + keys": [getattr(flow, "session", None)],
        "negotiation (eno, negotiated)": [getattr(flow, n, None) for n in ("eno", "negotiated")],
        "handshake": [getattr(flow, "handshake", None)],
        "cold record (SYN phase, RTT, end, status)": [getattr(flow, "cold", None)],
        "sendmap": [getattr(flow, "smap", None)],
        "reassembly": [getattr(flow, "rx", None)],
        "buffers (rx_init, rx_partial, dl_buf, held)": [
            getattr(flow, n, None) for n in ("rx_init", "rx_partial", "dl_buf", "held")],
    }
    return parts


def breakdown(count: int, idle: float, config: EngineConfig | None = None) -> dict[str, float]:
    """Python bytes per flow of engine A, by part of the flow, objects no other flow shares."""
    pairs = FlowPairs(config)
    pairs.check(pairs.open_many(count))
    pairs.idle(idle)
    gc.collect()
    flows = list(pairs.a._flows.values())
    owners: dict[int, int] = {}
    per_flow = []
    for flow in flows:
        reach = _reachable(flow, {id(type(flow))})
        per_flow.append(reach)
        for oid in reach:
            owners[oid] = owners.get(oid, 0) + 1
    totals: dict[str, float] = {}
    for flow, reach in zip(flows, per_flow):
        claimed: set[int] = set()
        for name, roots in _components(flow).items():
            size = 0
            for root in roots:
                if root is None:
                    continue
                for oid, obj in _reachable(root, set()).items():
                    if owners.get(oid) == 1 and oid not in claimed:
                        claimed.add(oid)
                        size += sys.getsizeof(obj)
            totals[name] = totals.get(name, 0) + size
        rest = sum(sys.getsizeof(obj) for oid, obj in reach.items()
                   if owners[oid] == 1 and oid not in claimed)
        totals["Flow object (instance, attributes, values)"] = (
            totals.get("Flow object (instance, attributes, values)", 0) + rest)
        totals["all unique objects"] = totals.get("all unique objects", 0) + sum(
            sys.getsizeof(obj) for oid, obj in reach.items() if owners[oid] == 1)
    heap = pairs.a._deadlines.heap
    totals["engine: timer heap entries (count)"] = len(heap)
    return {name: value / len(flows) for name, value in totals.items()}


def flood_syn(index: int, teps: tuple[int, ...]) -> bytes:
    """The ``index``-th SYN of a flood: ENO offering ``teps``, a source port of its own."""
    from tcpcryptd.engine.handshake import _active_syn_option
    option = _active_syn_option(teps).raw
    src = bytes([10, 1 + index // 60000 // 250, 1 + index // 60000 % 250, 1])
    port = 1024 + index % 60000
    options = _syn_options(1 + index) + option
    options += b"\x01" * (-len(options) % 4)
    return build(4, src, _B, port, _PORT_B, (_ISN_A + 7919 * index) & _M32, 0, SYN, 0xFFFF,
                 options)


def stack_syn_ack(index: int) -> bytes:
    """B's local stack answering the ``index``-th flood SYN."""
    src = bytes([10, 1 + index // 60000 // 250, 1 + index // 60000 % 250, 1])
    port = 1024 + index % 60000
    return build(4, _B, src, _PORT_B, port, (_ISN_B + 104729 * index) & _M32,
                 (_ISN_A + 7919 * index + 1) & _M32, SYN | ACK, 0xFFFF, _syn_options(1 + index))


def flood(engine: Engine, first: int, count: int, now: float) -> None:
    """``count`` ENO SYNs into ``engine`` (host B), each answered by its stack's SYN-ACK."""
    teps = tuple(EngineConfig().teps)
    for index in range(first, first + count):
        result = engine.handle_packet(0, flood_syn(index, teps), Direction.INBOUND, now)
        assert result.verdict is Verdict.ACCEPT
        engine.handle_packet(0, stack_syn_ack(index), Direction.OUTBOUND, now)


def measure_half_open(count: int, config: EngineConfig | None = None,
                      trace: bool = False) -> dict:
    """Bytes per tracked half-open flow: tracemalloc (``trace``) or RSS."""
    import tracemalloc
    config = config or EngineConfig(max_flows=max(65536, 2 * count),
                                    **({"max_half_open": 2 * count}
                                       if hasattr(EngineConfig, "max_half_open") else {}))
    warm = Engine(config)
    flood(warm, 10 * count, 200, 0.0)
    del warm
    engine = Engine(config)
    gc.collect()
    if trace:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
    else:
        _malloc_trim()
        base = _rss()
    flood(engine, 0, count, 0.0)
    engine.handle_timer(1.0)
    gc.collect()
    tracked = len(engine.flows())
    assert tracked == count, (tracked, count)
    if trace:
        grown = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        return {"half_open": count, "half_open_trace_per_flow": grown / count}
    grown = _rss() - base
    _malloc_trim()
    trimmed = _rss() - base
    return {"half_open": count, "half_open_rss_per_flow": grown / count,
            "half_open_rss_trimmed_per_flow": trimmed / count}


_AEADS = {"AES-128-GCM": ("AESGCM", 16), "AES-256-GCM": ("AESGCM", 32),
          "ChaCha20-Poly1305": ("ChaCha20Poly1305", 32)}


def measure_aead(name: str, count: int = 20000) -> dict[str, float]:
    """RSS and construction time of one AEAD object (one algorithm per fresh process).

    The ``cryptography`` objects allocate their OpenSSL contexts when constructed (measured:
    the same RSS before and after a first encrypt or decrypt).
    """
    from cryptography.hazmat.primitives.ciphers import aead
    factory_name, key_len = _AEADS[name]
    factory = getattr(aead, factory_name)
    keys = [os.urandom(key_len) for _ in range(count)]
    nonce = bytes(12)
    factory(keys[0]).encrypt(nonce, b"x", b"")  # warm
    gc.collect()
    base = _rss()
    objs = [factory(k) for k in keys]
    for o in objs:
        o.encrypt(nonce, b"x", b"")
    gc.collect()
    out = {f"{name} RSS bytes per object": (_rss() - base) / count}
    del objs
    gc.collect()
    best = float("inf")
    for _ in range(5):
        began = time.perf_counter()
        for k in keys:
            factory(k)
        best = min(best, (time.perf_counter() - began) / count)
    out[f"{name} construction us"] = best * 1e6
    return out


def _child(mode: str, count: int, idle: float, rate: float = 0.0,
           release: float | None = None) -> dict:
    argv = [sys.executable, "-m", "bench.flow_memory", "--child", mode, "-n", str(count),
            "--idle", str(idle), "--rate", str(rate)]
    if release is not None:
        argv += ["--release", str(release)]
    done = subprocess.run(argv, check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=2000, help="connections (flow pairs)")
    parser.add_argument("--idle", type=float, default=30.0,
                        help="seconds the flows stay idle before the measurement")
    parser.add_argument("--rate", type=float, default=155.0,
                        help="connections opened per second of engine time (0: all at once); "
                             "155/s is the daemon bench's X25519 connection rate")
    parser.add_argument("--release", type=float, default=None,
                        help="EngineConfig.aead_idle_release (default: the engine's; 0: never)")
    parser.add_argument("--half-open", type=int, default=0, metavar="N",
                        help="measure N half-open ENO flows (a SYN flood) instead")
    parser.add_argument("--breakdown", action="store_true", help="Python bytes by part of a flow")
    parser.add_argument("--aead", action="store_true", help="RSS and build time of AEAD objects")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        if args.child in _AEADS:
            print(json.dumps(measure_aead(args.child)))
            return {}
        config = (EngineConfig() if args.release is None
                  else EngineConfig(aead_idle_release=args.release))
        fn = {"half-trace": lambda: measure_half_open(args.count, trace=True),
              "half-rss": lambda: measure_half_open(args.count),
              "trace": lambda: measure_trace(args.count, args.idle, args.rate, config),
              "rss": lambda: measure_rss(args.count, args.idle, args.rate, config),
              "breakdown": lambda: breakdown(min(args.count, 500), args.idle, config),
              }[args.child]
        print(json.dumps(fn()))
        return {}
    results: dict = {}
    if args.half_open:
        results.update(_child("half-trace", args.half_open, 0.0))
        results.update(_child("half-rss", args.half_open, 0.0))
        print(f"{args.half_open} half-open ENO flows (SYN in, the stack's SYN-ACK out, no third "
              f"segment), one engine")
        print(f"  tracemalloc  {results['half_open_trace_per_flow']:8.0f} B/flow   "
              f"RSS {results['half_open_rss_per_flow']:8.0f} B/flow   "
              f"after malloc_trim {results['half_open_rss_trimmed_per_flow']:8.0f} B/flow")
        return results
    results.update(_child("trace", args.count, args.idle, args.rate, args.release))
    results.update(_child("rss", args.count, args.idle, args.rate, args.release))
    print(f"{args.count} idle encrypted flows per engine (X25519, AES-128-GCM), "
          f"{args.rate:g} connections/s, then idle {args.idle:g} s; aead_idle_release "
          f"{getattr(EngineConfig(), 'aead_idle_release', 0) if args.release is None else args.release:g} s")
    print(f"  tracemalloc  engine A {results['trace_a_per_flow']:8.0f} B/flow   "
          f"engine B {results['trace_b_per_flow']:8.0f} B/flow   "
          f"mean {results['trace_both_per_flow']:8.0f} B/flow")
    print(f"  RSS          mean of A and B {results['rss_per_flow']:8.0f} B/flow   "
          f"after malloc_trim {results['rss_trimmed_per_flow']:8.0f} B/flow   "
          f"marginal (flows {args.count // 2}..{args.count}) "
          f"{results['rss_marginal_per_flow']:8.0f} B/flow")
    print(f"  C heap       after malloc_trim: in use {results['c_heap_used_per_flow']:8.0f} B/flow   "
          f"free {results['c_heap_free_per_flow']:8.0f} B/flow")
    if args.breakdown:
        parts = _child("breakdown", args.count, args.idle, args.rate, args.release)
        results["breakdown"] = parts
        print("  Python objects of engine A's flows, owned by one flow (sys.getsizeof):")
        for name, value in parts.items():
            print(f"    {name:<48} {value:8.1f}")
    if args.aead:
        aead = {}
        for name in _AEADS:
            aead.update(_child(name, args.count, args.idle))
        results["aead"] = aead
        print("  AEAD objects (cryptography):")
        for name, value in aead.items():
            print(f"    {name:<48} {value:8.2f}")
    return results


if __name__ == "__main__":
    main()
