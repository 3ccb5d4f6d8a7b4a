"""Fuzz target: the flow engine under packets of every shape, in every flow state.

Each example brings two engines (back to back, :mod:`_bench`) into a state through a
prefix of real traffic (IPv4 or IPv6, with or without the fast paths), then runs a drawn
sequence of steps: fuzzed packets either way at either engine (:mod:`_packets`), data,
ACKs, FINs and retransmissions from the local stacks, segments of the local stack with odd
headers that carry plaintext, lost wire packets, timers at random times and at the
engines' deadlines.  Every engine call is checked (see :class:`_bench.Bench`): it returns
a Result with a Verdict (None only from ``handle_timer``) and raises nothing, no exception
is swallowed as an internal error, every packet the engine makes or rewrites parses with
correct checksums, no wire packet carries the local stack's plaintext on an ENO
connection, releases name held packets once, flows, held packets, buffered bytes and timer
entries stay bounded, and ``next_deadline`` is always in the future after a timer run.
At the end both engines' timers are drained: every flow ends and every held packet gets
its release.

``make test`` runs the derandomized ``fuzz-bounded`` profile; ``make fuzz`` the long one
(tests/fuzz/conftest.py).
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from hypothesis import event, given, settings
from hypothesis import strategies as st

from _bench import (
    A_PORT,
    ACK,
    B_PORT,
    FIN,
    FUZZ_CONFIG,
    MARKER,
    RST,
    SENSITIVE,
    STATES,
    SYN,
    Bench,
    Direction,
    InvariantError,
    Side,
    scrub,
)
from _hand import syn_options, ts_options
from _packets import TIME_STEPS, fuzz_packet, header_packet
from tcpcryptd.core.constants import NON_SYN_OPTION
from tcpcryptd.packet.tcp import PSH, PacketError, TCPPacket, build

#: Wall-clock bound of one example (an engine call that never returns fails the test).
EXAMPLE_SECONDS = 30.0


class Stuck(BaseException):
    """An example outlived :data:`EXAMPLE_SECONDS` (a BaseException: the engine's catch-all
    for its own errors must not swallow it)."""


@contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """Raise :class:`Stuck` in the running code if the block lasts more than ``seconds``."""
    def expire(_signum: int, _frame: object) -> None:
        raise Stuck(f"example still running after {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- prefixes: real traffic that brings the flows into a state ---------------------------

def _syn(bench: Bench) -> None:
    """A syn-sent, B syn-received."""
    bench.syn()


def _negotiated(bench: Bench) -> None:
    """A negotiated (SYN-ACK with ENO seen, third ACK not sent), B syn-received."""
    bench.syn()
    bench.syn_ack()


def _keying(bench: Bench) -> None:
    """Both keying, each with held data: A's Init1 is lost, B saw an ENO ACK without it."""
    a, b = bench.a, bench.b
    _negotiated(bench)
    bench.cut = True
    bench.stack_ack(a)
    bench.cut = False
    bench.arrive(b, a.seg(a.snd_next, a.rcv_next or 0, ACK,
                          options=ts_options(1000, 2000) + NON_SYN_OPTION + b"\x00\x00"))
    bench.stack_data(a, 200)
    bench.stack_data(b, 300)


def _encrypted(bench: Bench) -> None:
    """Both encrypted, data exchanged both ways and acknowledged."""
    a, b = bench.a, bench.b
    bench.handshake()
    bench.stack_data(a, 300)
    bench.stack_data(b, 700)
    bench.stack_ack(a)
    bench.stack_ack(b)


def _closed(bench: Bench) -> None:
    """Both closed (lingering) after FINs both ways."""
    a, b = bench.a, bench.b
    _encrypted(bench)
    bench.stack_ack(a, ACK | FIN)
    bench.stack_ack(b, ACK | FIN)
    bench.stack_ack(a)


def _reset(bench: Bench) -> None:
    """Both closed (lingering) after B's local stack reset the connection."""
    _encrypted(bench)
    bench.stack_ack(bench.b, RST | ACK)


def _aborted(bench: Bench) -> None:
    """B aborted on a tampered frame (its RST closes A)."""
    _encrypted(bench)
    bench.cut = True
    bench.stack_data(bench.a, 100)
    bench.cut = False
    pkt = TCPPacket.parse(bench.lost[-1])
    payload = bytearray(pkt.payload)
    payload[len(payload) // 2] ^= 0x55
    pkt.payload = bytes(payload)
    bench.arrive(bench.b, pkt.to_bytes())


def _tombstone(bench: Bench) -> None:
    """Both tombstones: closed, then the linger ran out."""
    _closed(bench)
    bench.advance(bench.now + FUZZ_CONFIG.linger + 1)


def _plain(bench: Bench) -> None:
    """B has encryption disabled: the connection falls back to plain TCP, no flows."""
    _encrypted(bench)


PREFIXES: dict[str, Callable[[Bench], None]] = {
    "syn": _syn, "negotiated": _negotiated, "keying": _keying, "encrypted": _encrypted,
    "closed": _closed, "reset": _reset, "aborted": _aborted, "tombstone": _tombstone,
    "plain": _plain,
}


def bench_after(prefix: str, version: int, fast_path: bool = True) -> Bench:
    """A fresh bench (B without encryption for ``plain``) after the named prefix."""
    config_b = dataclasses.replace(FUZZ_CONFIG, enabled=False) if prefix == "plain" \
        else FUZZ_CONFIG
    bench = Bench(version, config_b=config_b, fast_path=fast_path)
    PREFIXES[prefix](bench)
    return bench

# -- steps --------------------------------------------------------------------------------

STEPS = ("inject", "inject", "inject", "inject", "stack-data", "stack-odd", "stack-ack",
         "stack-fin", "retransmit", "timer", "deadline")


def _retransmittable(side: Side) -> list[bytes]:
    """Earlier data segments of ``side``'s stack it may send again now (the marker only
    while the connection is still an ENO one)."""
    status = side.status()
    sensitive = status is not None and status.state in SENSITIVE
    out = []
    for raw in side.history[Direction.OUTBOUND]:
        try:
            pkt = TCPPacket.parse(raw)
        except PacketError:
            continue
        if ((pkt.sport, pkt.dport) == (side.port, side.peer_port) and not pkt.flags & SYN
                and (sensitive or MARKER not in raw)):
            out.append(raw)
    return out


def _run_step(bench: Bench, data: st.DataObject) -> None:
    step = data.draw(st.sampled_from(STEPS), label="step")
    side = bench.a if data.draw(st.sampled_from("AB"), label="side") == "A" else bench.b
    bench.cut = data.draw(st.sampled_from((False, False, False, True)), label="lose")
    if step == "inject":
        direction = data.draw(st.sampled_from(tuple(Direction)), label="direction")
        bench.inject(side, data.draw(fuzz_packet(side, direction), label="packet"), direction)
    elif step == "stack-data":
        bench.stack_data(side, data.draw(st.integers(1, 1400), label="size"))
    elif step == "stack-odd":
        status = side.status()
        if status is not None and status.state in SENSITIVE:
            body = st.integers(1, 40).map(lambda n: MARKER * n)
            flags = st.integers(0, 0xFFF).map(lambda f: f & ~SYN)
            bench.send(side, data.draw(header_packet(side, Direction.OUTBOUND, body=body,
                                                     flags=flags, main=True), label="odd"))
    elif step == "stack-ack":
        bench.stack_ack(side)
    elif step == "stack-fin":
        bench.stack_ack(side, ACK | FIN)
    elif step == "retransmit":
        earlier = _retransmittable(side)
        if earlier:
            bench.send(side, data.draw(st.sampled_from(earlier), label="again"))
    elif step == "timer":
        step_by = data.draw(st.sampled_from(TIME_STEPS) | st.floats(0, 8000), label="dt")
        bench.advance(bench.now + step_by)
    else:
        deadlines = [d for d in (bench.a.engine.next_deadline(), bench.b.engine.next_deadline())
                     if d is not None]
        if deadlines:
            bench.advance(min(deadlines))
    bench.cut = False
    for checked in (bench.a, bench.b):
        for status in checked.engine.flows(bench.now):
            if status.state not in STATES:
                raise InvariantError(f"{checked.name}: flow in unknown state {status.state!r}")


_PROFILE = settings.get_profile("fuzz-active")


@settings(_PROFILE, max_examples=_PROFILE.max_examples * 8)
@given(prefix=st.sampled_from(tuple(PREFIXES)), version=st.sampled_from((4, 6)),
       fast_path=st.booleans(), data=st.data())
def test_engine_invariants_hold_for_any_packets_in_any_state(prefix: str, version: int,
                                                             fast_path: bool,
                                                             data: st.DataObject) -> None:
    with watchdog(EXAMPLE_SECONDS):
        bench = bench_after(prefix, version, fast_path)
        event(f"prefix {prefix}")
        for _ in range(data.draw(st.integers(1, 12), label="steps")):
            _run_step(bench, data)
        for state in sorted(bench.states_seen):
            event(f"flow state {state}")
        bench.drain()


def test_prefixes_reach_every_state() -> None:
    """Each prefix leaves the flows in the state it names (so the fuzz starts there)."""
    expected = {"syn": ("syn-sent", "syn-received"), "negotiated": ("negotiated", "syn-received"),
                "keying": ("keying", "keying"), "encrypted": ("encrypted", "encrypted"),
                "closed": ("closed", "closed"), "reset": ("closed", "closed"),
                "aborted": ("closed", "aborted"), "tombstone": ("tombstone", "tombstone"),
                "plain": (None, None)}
    for name in PREFIXES:
        for version in (4, 6):
            bench = bench_after(name, version)
            got = tuple(None if s is None else s.state
                        for s in (bench.a.status(), bench.b.status()))
            assert got == expected[name], (name, version)
            bench.drain()



def test_a_new_local_syn_on_a_keying_flow_releases_its_held_packets() -> None:
    """Held packets of a flow replaced by a new connection get their release (a drop)."""
    bench = Bench(4)
    _keying(bench)
    a = bench.a
    assert a.held and a.status() is not None and a.status().state == "keying"
    bench.send(a, a.seg(0, 0, SYN, options=syn_options()))
    bench.drain()


def test_segments_after_a_reset_of_a_keying_flow_are_not_held_forever() -> None:
    """A segment B's stack sends after its RST closed a keying flow is dropped, not held
    for good (only keys arriving after the close would release it)."""
    bench = Bench(4)
    _keying(bench)
    b = bench.b
    bench.stack_ack(b, RST)
    assert b.status() is not None and b.status().state == "closed" and not b.held
    bench.stack_ack(b, ACK | FIN)
    bench.cut = True   # the wire loses A's Init1 retransmissions from here on
    bench.drain()


def test_bytes_beyond_what_the_peer_sent_start_no_ack_storm() -> None:
    """A forged segment costs the engines a bounded number of answers."""
    bench = bench_after("encrypted", 4)
    a, b = bench.a, bench.b
    last = TCPPacket.parse(a.history[Direction.INBOUND][-1])   # B's last segment, as A got it
    forged = build(4, b.ip, a.ip, B_PORT, A_PORT, last.seq + len(last.payload), last.ack,
                   ACK | PSH, 502, ts_options(2000, 1000), b"\xab" * 12)
    bench.arrive(a, forged)


def test_every_held_segment_gets_a_release_when_keys_arrive() -> None:
    bench = bench_after("keying", 4)
    a = bench.a
    held = bytearray(next(raw for raw, _ in a.held.values()))
    held[32] = 0x90 | (held[32] & 15)   # data offset 9: same seq, payload 4 bytes later
    bench.send(a, scrub(bytes(held)))
    assert len(a.held) == 2
    bench.drain()
