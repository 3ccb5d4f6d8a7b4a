"""Engine unit tests: two Engines back to back, both local stacks played by hand.

Every packet is hand-built (tcpcryptd.packet.tcp.build); A's ISN sits just below 2**32 so
sequence numbers wrap in every test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))

from _hand import (  # noqa: E402
    ACK,
    FIN,
    ISN_A,
    ISN_B,
    M32,
    PSH,
    RST,
    SYN,
    Direction,
    EngineConfig,
    Pair,
    TCPPacket,
    Verdict,
    stack_bytes,
    syn_options,
    tcp_options,
    ts_options,
)
from tcpcryptd.core.constants import NON_SYN_OPTION  # noqa: E402
from tcpcryptd.engine import Engine  # noqa: E402
from tcpcryptd.packet.tcp import URG, build  # noqa: E402

INIT1_LEN = 79   # X25519 with three ciphers
INIT2_LEN = 74


def wire_payloads(pair: Pair, src_port: int) -> dict[int, int]:
    """Every payload byte seen on the wire from one side, by 32-bit sequence number.

    Asserts that a sequence number never carried two different bytes (property 2 of
    docs/daemon.md "What the tests check").
    """
    seen: dict[int, int] = {}
    for raw in pair.wire:
        pkt = TCPPacket.parse(raw)
        if pkt.sport != src_port:
            continue
        for k, byte in enumerate(bytes(pkt.payload)):
            seq = (pkt.seq + k) & M32
            assert seen.setdefault(seq, byte) == byte, "two different bytes at one offset"
    return seen


def established() -> Pair:
    pair = Pair()
    pair.handshake()
    return pair


def test_ephemeral_key_material_is_dropped_once_keys_exist():
    """The private key, ES and PRK go as soon as the session exists (RFC 8548 §3.3)."""
    pair = established()
    for host in (pair.a, pair.b):
        (flow,) = host.engine._flows.values()
        assert flow.session is not None and flow.handshake is None


def test_handshake_negotiates_x25519_and_equal_session_ids():
    pair = established()
    (fa,), (fb,) = pair.a.engine.flows(), pair.b.engine.flows()
    assert (fa.role, fb.role) == ("A", "B")
    assert fa.state == fb.state == "encrypted"
    assert fa.tep == "ECDHE_CURVE25519" and fa.aead == "AES-128-GCM"
    assert fa.session_id == fb.session_id and fa.session_id.startswith("23")
    syn, syn_ack, init1, init2 = (TCPPacket.parse(p) for p in pair.wire[:4])
    assert tcp_options.eno_options(syn.options) == [b"\x45\x05\x23\x24\x21"]
    assert tcp_options.eno_options(syn_ack.options) == [b"\x45\x04\x01\x23"]
    # Init1 rides on A's third ACK with 45 02 and PSH; Init2 follows at once with PSH
    assert len(init1.payload) == INIT1_LEN and init1.flags & PSH
    assert tcp_options.eno_options(init1.options) == [NON_SYN_OPTION]
    assert len(init2.payload) == INIT2_LEN and init2.flags & PSH
    assert pair.a.engine.counters["encrypted"] == pair.b.engine.counters["encrypted"] == 1


def test_mss_is_clamped_toward_the_local_stack_only():
    pair = established()
    b_syn = pair.b.to_stack[0]
    a_syn_ack = pair.a.to_stack[0]
    assert tcp_options.mss(b_syn.options) == 1460 - 24
    assert tcp_options.mss(a_syn_ack.options) == 1460 - 24
    assert tcp_options.mss(TCPPacket.parse(pair.wire[0]).options) == 1460


def test_data_both_ways_reaches_the_stacks_and_never_the_wire_in_plaintext():
    pair = established()
    a, b = pair.a, pair.b
    request, response = b"GET / HTTP/1.0\r\n\r\n" * 3, b"HTTP/1.0 200 OK\r\n\r\nsecret!" * 20
    pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK | PSH, request))
    assert stack_bytes(b, ISN_A) == request
    pair.send(b, b.seg(ISN_B + 1, ISN_A + 1 + len(request), ACK | PSH, response[:700]))
    pair.send(b, b.seg(ISN_B + 701, ISN_A + 1 + len(request), ACK | PSH, response[700:]))
    assert stack_bytes(a, ISN_B) == response
    for raw in pair.wire:
        assert b"HTTP" not in raw and b"GET" not in raw and b"secret" not in raw
    wire_payloads(pair, 40000)
    wire_payloads(pair, 80)
    # the stacks see their own sequence space: B's data arrives at ISN_B + 1
    assert pair.a.to_stack[-2].seq == (ISN_B + 1) & M32


def test_retransmission_with_new_boundaries_replays_identical_wire_bytes():
    pair = established()
    a, b = pair.a, pair.b
    data = bytes(range(256)) * 12
    # original segments: 1000, 1000, 1072 bytes -- the wire copies are lost
    cuts = [0, 1000, 2000, len(data)]
    before: dict[int, int] = {}
    for lo, hi in zip(cuts, cuts[1:]):
        _, wire = pair.send(a, a.seg(ISN_A + 1 + lo, ISN_B + 1, ACK, data[lo:hi]), deliver=False)
        for raw in wire:
            pkt = TCPPacket.parse(raw)
            before.update(((pkt.seq + k) & M32, byte) for k, byte in enumerate(bytes(pkt.payload)))
    assert len(before) == len(data) + 3 * 20
    # the stack retransmits with other boundaries: 500, 1700, 872
    recuts = [0, 500, 2200, len(data)]
    for lo, hi in zip(recuts, recuts[1:]):
        _, wire = pair.send(a, a.seg(ISN_A + 1 + lo, ISN_B + 1, ACK, data[lo:hi]), deliver=False)
        for raw in wire:
            pkt = TCPPacket.parse(raw)
            pair.wire.append(raw)
            for k, byte in enumerate(bytes(pkt.payload)):
                assert before[(pkt.seq + k) & M32] == byte
        for raw in wire:
            pair.arrive(b, raw)
    assert stack_bytes(b, ISN_A) == data


def test_ack_translation_frame_granularity_and_absorbed_init_ack():
    pair = established()
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK, b"x" * 100), deliver=False)
    pair.send(a, a.seg(ISN_A + 101, ISN_B + 1, ACK, b"y" * 100), deliver=False)
    base = ISN_A + 1 + INIT1_LEN  # wire seq of the first frame
    a_stack = len(a.to_stack)
    # a window update passes; then a peer ACK inside the first frame is nothing new: dropped
    r = pair.arrive(a, b.seg(ISN_B + 1 + INIT2_LEN, base, ACK, window=600))
    assert r.verdict is Verdict.ACCEPT and TCPPacket.parse(r.data).ack == (ISN_A + 1) & M32
    r = pair.arrive(a, b.seg(ISN_B + 1 + INIT2_LEN, base + 60, ACK, window=600))
    assert r.verdict is Verdict.DROP
    # ACK of the first frame -> local 100
    r = pair.arrive(a, b.seg(ISN_B + 1 + INIT2_LEN, base + 120, ACK, window=600))
    assert r.verdict is Verdict.ACCEPT and TCPPacket.parse(r.data).ack == (ISN_A + 101) & M32
    # ACK inside the second frame: still 100 (same window: dropped)
    r = pair.arrive(a, b.seg(ISN_B + 1 + INIT2_LEN, base + 200, ACK, window=600))
    assert r.verdict is Verdict.DROP
    r = pair.arrive(a, b.seg(ISN_B + 1 + INIT2_LEN, base + 240, ACK, window=600))
    assert TCPPacket.parse(r.data).ack == (ISN_A + 201) & M32
    assert len(a.to_stack) == a_stack + 3


def test_sack_blocks_are_translated_to_whole_local_frames():
    pair = established()
    a, b = pair.a, pair.b
    for k in range(3):
        pair.send(a, a.seg(ISN_A + 1 + 100 * k, ISN_B + 1, ACK, bytes([k]) * 100), deliver=False)
    base = ISN_A + 1 + INIT1_LEN
    sack = tcp_options.replace_sack(ts_options(5, 6), [((base + 120) & M32, (base + 360) & M32)])
    r = pair.arrive(a, b.seg(ISN_B + 1 + INIT2_LEN, base, ACK, window=600, options=sack))
    pkt = TCPPacket.parse(r.data)
    assert pkt.ack == (ISN_A + 1) & M32
    assert tcp_options.sack_blocks(pkt.options) == [((ISN_A + 101) & M32, (ISN_A + 301) & M32)]


def test_out_of_order_frames_get_a_sack_dup_ack_then_deliver_in_order():
    pair = established()
    a, b = pair.a, pair.b
    _, first = pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK, b"1" * 300), deliver=False)
    _, second = pair.send(a, a.seg(ISN_A + 301, ISN_B + 1, ACK, b"2" * 300), deliver=False)
    r = b.engine.handle_packet(999, second[0], Direction.INBOUND, 0.0)
    assert r.verdict is Verdict.DROP
    (dupack,) = [TCPPacket.parse(t.data) for t in r.transmit]
    wire_first = (ISN_A + 1 + INIT1_LEN) & M32
    assert dupack.ack == wire_first
    assert tcp_options.sack_blocks(dupack.options) == [
        ((wire_first + 320) & M32, (wire_first + 640) & M32)]
    pair.arrive(b, first[0])
    assert stack_bytes(b, ISN_A) == b"1" * 300 + b"2" * 300


def test_frame_split_across_segments_is_delivered_only_when_whole():
    pair = established()
    a, b = pair.a, pair.b
    _, (raw,) = pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK, b"z" * 500), deliver=False)
    pkt = TCPPacket.parse(raw)
    payload = bytes(pkt.payload)
    halves = []
    for lo, hi in ((0, 200), (200, len(payload))):
        halves.append(build(4, pkt.src, pkt.dst, pkt.sport, pkt.dport, (pkt.seq + lo) & M32,
                            pkt.ack, ACK, pkt.window, pkt.options, payload[lo:hi]))
    r = pair.arrive(b, halves[0])
    assert r.verdict is Verdict.DROP
    (ack,) = [TCPPacket.parse(t.data) for t in r.transmit]
    assert ack.ack == (pkt.seq + 200) & M32  # the engine took the partial frame
    assert stack_bytes(b, ISN_A) == b""
    pair.arrive(b, halves[1])
    assert stack_bytes(b, ISN_A) == b"z" * 500


def test_duplicate_segment_is_dropped_and_answered_with_an_ack():
    pair = established()
    a, b = pair.a, pair.b
    _, (raw,) = pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK, b"d" * 50))
    count = len(b.to_stack)
    r = pair.arrive(b, raw)
    assert r.verdict is Verdict.DROP and len(b.to_stack) == count
    assert len(r.transmit) == 1 and r.transmit[0].direction is Direction.OUTBOUND


def test_data_before_keys_is_held_then_released_encrypted():
    pair = Pair()
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A, 0, SYN, options=syn_options()))
    pair.send(b, b.seg(ISN_B, ISN_A + 1, SYN | ACK, options=syn_options()))
    # third ACK leaves with Init1, but its delivery is postponed
    _, (init1,) = pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK), deliver=False)
    r, wire = pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK | PSH, b"early data"), deliver=False)
    assert r.verdict is Verdict.HOLD and wire == []
    pair.arrive(b, init1)          # B answers Init2, which releases A's held segment
    assert stack_bytes(b, ISN_A) == b"early data"
    assert all(b"early" not in raw for raw in pair.wire)


def test_held_packets_are_bounded():
    pair = Pair(config_a=EngineConfig(max_held_packets=2))
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A, 0, SYN, options=syn_options()))
    pair.send(b, b.seg(ISN_B, ISN_A + 1, SYN | ACK, options=syn_options()))
    pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK), deliver=False)
    verdicts = [pair.send(a, a.seg(ISN_A + 1 + 10 * k, ISN_B + 1, ACK, b"q" * 10),
                          deliver=False)[0].verdict for k in range(3)]
    assert verdicts == [Verdict.HOLD, Verdict.HOLD, Verdict.DROP]
    assert a.engine.counters["drops_hold-limit"] == 1


def test_bare_fin_becomes_an_empty_finp_frame_and_fin_reaches_the_peer_stack():
    pair = established()
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK, b"bye"))
    fin, (raw,) = pair.send(a, a.seg(ISN_A + 4, ISN_B + 1, ACK | FIN))
    assert fin.encrypted
    pkt = TCPPacket.parse(raw)
    assert pkt.flags & FIN and len(pkt.payload) == 20
    last = b.to_stack[-1]
    assert last.flags & FIN and last.seq == (ISN_A + 4) & M32 and not len(last.payload)
    # B's stack ACKs the FIN and closes with data + FIN
    pair.send(b, b.seg(ISN_B + 1, ISN_A + 5, ACK | FIN | PSH, b"ok"))
    assert stack_bytes(a, ISN_B) == b"ok"
    assert a.to_stack[-1].flags & FIN
    # A's stack ACKs B's FIN: passes, flows linger as closed (no longer flagged encrypted:
    # the firewall's record of an untracked connection then lives out its closing timeout)
    last, _ = pair.send(a, a.seg(ISN_A + 5, ISN_B + 4, ACK))
    assert not last.encrypted
    assert b.to_stack[-1].ack == (ISN_B + 4) & M32
    assert {f.state for f in a.engine.flows() + b.engine.flows()} == {"closed"}


def test_retransmitted_bare_fin_replays_the_same_finp_frame():
    pair = established()
    a = pair.a
    _, (first,) = pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK | FIN), deliver=False)
    _, (again,) = pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK | FIN), deliver=False)
    assert bytes(TCPPacket.parse(first).payload) == bytes(TCPPacket.parse(again).payload)


def test_tcp_fin_without_finp_frame_aborts():
    pair = established()
    a, b = pair.a, pair.b
    r = pair.arrive(b, a.seg(ISN_A + 1 + INIT1_LEN, ISN_B + 1 + INIT2_LEN, ACK | FIN))
    assert r.verdict is Verdict.DROP
    assert b.engine.counters["aborts_fin-without-finp"] == 1
    rsts = [TCPPacket.parse(t.data) for t in r.transmit]
    assert all(p.flags & RST for p in rsts) and len(rsts) == 2


def test_tampered_frame_aborts_with_rst_both_ways():
    pair = established()
    a, b = pair.a, pair.b
    _, (raw,) = pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK, b"attack at dawn"), deliver=False)
    pkt = TCPPacket.parse(raw)
    payload = bytearray(pkt.payload)
    payload[10] ^= 1
    pkt.payload = bytes(payload)
    count = len(b.to_stack)
    r = b.engine.handle_packet(77, pkt.to_bytes(), Direction.INBOUND, 1.0)
    assert r.verdict is Verdict.DROP
    assert b.engine.counters["aborts_aead-failure"] == 1
    to_wire = [TCPPacket.parse(t.data) for t in r.transmit if t.direction is Direction.OUTBOUND]
    to_stack = [TCPPacket.parse(t.data) for t in r.transmit if t.direction is Direction.INBOUND]
    assert to_wire[0].flags & RST and to_wire[0].seq == (ISN_B + 1 + INIT2_LEN) & M32
    assert to_stack[0].flags & RST and to_stack[0].seq == (ISN_A + 1) & M32
    assert len(b.to_stack) == count
    (fb,) = b.engine.flows()
    assert fb.state == "aborted" and fb.abort_reason == "aead-failure"
    # later packets of the aborted flow are dropped, never passed in plaintext
    r = b.engine.handle_packet(78, b.seg(ISN_B + 1, ISN_A + 1, ACK, b"leak"), Direction.OUTBOUND, 1.0)
    assert r.verdict is Verdict.DROP
    # ... and answered with a RST toward the stack, whose copy of the abort may have been lost
    (answer,) = r.transmit
    reset = TCPPacket.parse(answer.data)
    assert answer.direction is Direction.INBOUND and reset.flags & RST and not len(reset.payload)
    assert reset.seq == (ISN_A + 1) & M32
    # a RST is never answered
    r = b.engine.handle_packet(79, b.seg(ISN_B + 1, ISN_A + 1, RST), Direction.OUTBOUND, 1.0)
    assert r.verdict is Verdict.DROP and not r.transmit


@pytest.mark.parametrize("order", ["forged-first", "genuine-first"])
def test_a_forged_frame_header_at_the_receive_point_aborts_instead_of_stalling(order):
    """A blind injection at the exact receive point whose frame header claims 5000 bytes:
    keeping it, the genuine frame's bytes would be dropped as duplicates and the forged
    'frame' would wait for bytes the peer never sends. The disagreement aborts at once."""
    pair = established()
    a, b = pair.a, pair.b
    _, (raw,) = pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK | PSH, b"genuine data"),
                          deliver=False)
    genuine = TCPPacket.parse(raw)
    forged = TCPPacket.parse(raw)
    forged.payload = b"\x00\x13\x88" + bytes(len(genuine.payload) - 3)   # clen 5000
    first, second = (forged, genuine) if order == "forged-first" else (genuine, forged)
    pair.arrive(b, first.to_bytes())
    r = pair.arrive(b, second.to_bytes())
    (fb,) = b.engine.flows()
    if order == "forged-first":
        assert fb.state == "aborted" and fb.abort_reason == "conflicting-data"
        assert b.engine.counters["aborts_conflicting-data"] == 1
        assert any(TCPPacket.parse(t.data).flags & RST for t in r.transmit)
        assert b"genuine data" not in stack_bytes(b, ISN_A)
    else:   # the genuine frame was verified and delivered: the forgery is a mere duplicate
        assert fb.state == "encrypted" and stack_bytes(b, ISN_A) == b"genuine data"
        assert r.verdict is Verdict.DROP


def test_a_forged_segment_disagreeing_with_out_of_order_bytes_aborts():
    pair = established()
    a, b = pair.a, pair.b
    _, (first,) = pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK, b"one"), deliver=False)
    _, (second,) = pair.send(a, a.seg(ISN_A + 4, ISN_B + 1, ACK, b"two"), deliver=False)
    b.engine.handle_packet(90, second, Direction.INBOUND, 1.0)   # out of order: buffered
    b.engine.handle_packet(91, second, Direction.INBOUND, 1.0)   # same bytes: a duplicate
    assert b.engine.counters["aborts"] == 0
    forged = TCPPacket.parse(second)
    forged.payload = bytes(len(forged.payload))
    b.engine.handle_packet(92, forged.to_bytes(), Direction.INBOUND, 1.0)
    assert b.engine.counters["aborts_conflicting-data"] == 1


def test_every_packet_from_the_one_that_starts_the_key_exchange_is_flagged_encrypted():
    """The daemon records a connection as encrypted from the packet with which the engine
    enters the key exchange (RFC 8547 §4.6), never earlier, never from a forged option; every
    later packet, on the fast paths too, is flagged again (a connection conntrack does not
    track is recorded by its 4-tuple, refreshed per packet)."""
    pair = Pair()
    a, b = pair.a, pair.b
    seen: list[tuple[str, Direction, bool]] = []
    for host in (a, b):
        handle = host.engine.handle_packet

        def spy(packet_id, data, direction, now, _handle=handle, _name=host.name, **kw):
            result = _handle(packet_id, data, direction, now, **kw)
            seen.append((_name, direction, result.encrypted))
            return result
        host.engine.handle_packet = spy   # type: ignore[method-assign]
    pair.handshake()
    # A: its third ACK (carrying Init1) outbound; B: that ACK arriving; nothing before
    first = [seen.index(("A", Direction.OUTBOUND, True)),
             seen.index(("B", Direction.INBOUND, True))]
    assert not any(flag for _, _, flag in seen[:first[0]])
    assert seen[first[0] + 1:first[1]] == []
    assert all(flag for _, _, flag in seen[first[1]:])
    seen.clear()
    fast = []
    for host in (a, b):
        run_fast = host.engine._fast

        def fast_spy(*args, _run=run_fast):
            fast.append(_run(*args))
            return fast[-1]
        host.engine._fast = fast_spy   # type: ignore[method-assign]
    pair.send(a, a.seg(ISN_A + 1 + 0, ISN_B + 1, ACK | PSH, b"data"))
    assert seen == [("A", Direction.OUTBOUND, True), ("B", Direction.INBOUND, True)]
    assert len(fast) == 2 and None not in fast


def test_fallback_when_the_peer_has_no_eno():
    pair = Pair(config_b=EngineConfig(enabled=False))
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A, 0, SYN, options=syn_options()))
    syn_ack = b.seg(ISN_B, ISN_A + 1, SYN | ACK, options=syn_options())
    r, (wire,) = pair.send(b, syn_ack)
    assert wire == syn_ack
    ack = a.seg(ISN_A + 1, ISN_B + 1, ACK | PSH, b"plain text")
    r, (wire,) = pair.send(a, ack)
    assert wire == ack and r.plain
    assert a.engine.flows() == [] and a.engine.counters["fallback_no-eno"] == 1


def test_fallback_when_a_middlebox_strips_eno_from_the_syn_ack():
    pair = Pair()
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A, 0, SYN, options=syn_options()))
    _, (syn_ack,) = pair.send(b, b.seg(ISN_B, ISN_A + 1, SYN | ACK, options=syn_options()),
                              deliver=False)
    pkt = TCPPacket.parse(syn_ack)
    pkt.options = tcp_options.remove(pkt.options, 69)
    pair.arrive(a, pkt.to_bytes())
    ack = a.seg(ISN_A + 1, ISN_B + 1, ACK)
    _, (wire,) = pair.send(a, ack)
    assert wire == ack  # no ENO, no Init1
    data = b.seg(ISN_B + 1, ISN_A + 1, ACK | PSH, b"hello in the clear")
    _, (wire,) = pair.send(b, data)
    assert wire == data
    assert a.engine.counters["fallback_no-eno"] == 1 and b.engine.counters["fallback_no-eno"] == 1
    assert a.engine.flows() == b.engine.flows() == []


@pytest.mark.parametrize("payload, options", [
    (b"syn data", syn_options()),
    (b"", syn_options() + b"\x22\x02\x00\x00"),
])
def test_syn_with_data_or_fast_open_stays_plain(payload, options):
    engine = Engine()
    syn = build(4, bytes(4), bytes([1, 1, 1, 1]), 1, 2, 5, 0, SYN, 100, options, payload)
    r = engine.handle_packet(1, syn, Direction.OUTBOUND, 0.0)
    assert r.verdict is Verdict.ACCEPT and r.data is None and r.plain
    assert engine.flows() == []


def test_flow_limit_leaves_new_syns_plain():
    engine = Engine(EngineConfig(max_flows=1))
    for port in (1, 2):
        syn = build(4, bytes(4), bytes([1, 1, 1, 1]), port, 80, 5, 0, SYN, 100, syn_options())
        r = engine.handle_packet(port, syn, Direction.OUTBOUND, 0.0)
    assert r.data is None and r.plain and engine.counters["plain_flow-limit"] == 1
    assert len(engine.flows()) == 1


def test_retransmitted_syn_carries_identical_eno_bytes():
    engine = Engine()
    syn = build(4, bytes(4), bytes([1, 1, 1, 1]), 1, 80, 5, 0, SYN, 100, syn_options())
    first = engine.handle_packet(1, syn, Direction.OUTBOUND, 0.0).data
    again = engine.handle_packet(2, syn, Direction.OUTBOUND, 1.0).data
    assert first == again and first != syn


def test_garbage_is_passed_untouched_and_counted():
    engine = Engine()
    r = engine.handle_packet(1, b"\x45garbage", Direction.INBOUND, 0.0)
    assert r.verdict is Verdict.ACCEPT and r.data is None
    assert engine.counters["passed_unparsed"] == 1


def test_lost_init1_is_retransmitted_by_the_engine_timer():
    pair = Pair()
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A, 0, SYN, options=syn_options()))
    pair.send(b, b.seg(ISN_B, ISN_A + 1, SYN | ACK, options=syn_options()))
    pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK), deliver=False)   # lost
    deadline = a.engine.next_deadline()
    assert deadline is not None and deadline <= 1.0
    pair.timer(a, deadline)
    assert a.engine.counters["retransmits"] == 1
    assert b.engine.flows()[0].state == "encrypted"
    assert a.engine.flows()[0].state == "encrypted"


def test_injected_bytes_give_up_after_the_retransmission_limit():
    pair = Pair(config_a=EngineConfig(max_retransmits=2))
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A, 0, SYN, options=syn_options()))
    pair.send(b, b.seg(ISN_B, ISN_A + 1, SYN | ACK, options=syn_options()))
    pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK), deliver=False)
    results = []
    for _ in range(3):
        now = a.engine.next_deadline()
        results.append(a.engine.handle_timer(now))
    assert a.engine.counters["aborts_retransmit-limit"] == 1
    assert any(TCPPacket.parse(t.data).flags & RST for t in results[-1].transmit)


def test_urgent_pointer_maps_through_urgp():
    pair = established()
    a, b = pair.a, pair.b
    # urgent pointer 5: the last urgent byte is local offset 4
    _, (raw,) = pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK | URG | PSH, b"abcdefgh", urg_ptr=5))
    wire = TCPPacket.parse(raw)
    assert not wire.flags & URG and wire.urg_ptr == 0 and len(wire.payload) == 8 + 22
    got = b.to_stack[-1]
    assert got.flags & URG and got.urg_ptr == 5 and bytes(got.payload) == b"abcdefgh"


def test_rekey_from_the_peer_obliges_an_immediate_rekey_frame():
    pair = established()
    a, b = pair.a, pair.b
    b.engine._flows[next(iter(b.engine._flows))].session.initiate_rekey()
    pair.send(b, b.seg(ISN_B + 1, ISN_A + 1, ACK | PSH, b"new keys"))
    assert stack_bytes(a, ISN_B) == b"new keys"
    (fa,) = a.engine._flows.values()
    assert fa.session.local_generation == 1 and fa.session.send_generation == 1
    (fb,) = b.engine._flows.values()
    assert fb.session.remote_generation == 1   # B received A's empty rekey=1 frame


def test_frame_larger_than_the_local_window_does_not_deadlock():
    pair = established()
    a, b = pair.a, pair.b
    # A's stack advertises 200 bytes (wscale 7 -> field 1 = 128 bytes? use a raw 0-scale view)
    (fa,) = a.engine._flows.values()
    pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK, window=2))   # 2 << 7 = 256 bytes
    r, wire = pair.send(b, b.seg(ISN_B + 1, ISN_A + 1, ACK | PSH, b"L" * 1000))
    assert stack_bytes(a, ISN_B) == b"L" * 256
    # the peer is ACKed for the whole frame although the stack took only 256 bytes
    assert fa.wire_ack_offset() == INIT2_LEN + 1020
    # the stack reads and opens its window: the rest follows
    pair.send(a, a.seg(ISN_A + 1, ISN_B + 257, ACK, window=20))
    assert stack_bytes(a, ISN_B) == b"L" * 1000


def test_unacknowledged_delivery_is_resent_to_the_stack():
    pair = established()
    a, b = pair.a, pair.b
    pair.send(b, b.seg(ISN_B + 1, ISN_A + 1, ACK | PSH, b"resend me"))
    a.to_stack.clear()
    deadline = a.engine.next_deadline()
    pair.timer(a, deadline)
    assert stack_bytes(a, ISN_B) == b"resend me"
    pair.send(a, a.seg(ISN_A + 1, ISN_B + 10, ACK))
    assert a.engine._flows[next(iter(a.engine._flows))].dl_deadline is None


def test_peer_rst_passes_with_translated_numbers():
    pair = established()
    a, b = pair.a, pair.b
    pair.send(b, b.seg(ISN_B + 1, ISN_A + 1, ACK | PSH, b"12345"))
    r = pair.arrive(a, build(4, b.ip, a.ip, 80, 40000, (ISN_B + 1 + INIT2_LEN + 25) & M32,
                             (ISN_A + 1 + INIT1_LEN) & M32, RST | ACK, 0))
    pkt = TCPPacket.parse(r.data)
    assert pkt.flags & RST and pkt.seq == (ISN_B + 6) & M32 and pkt.ack == (ISN_A + 1) & M32
    assert a.engine.flows()[0].state == "closed"


def test_closed_flows_become_tombstones_then_are_forgotten():
    pair = established()
    a = pair.a
    pair.arrive(a, build(4, pair.b.ip, a.ip, 80, 40000, (ISN_B + 1 + INIT2_LEN) & M32, 0, RST, 0))
    pair.timer(a, 61.0)
    (status,) = a.engine.flows()
    assert status.state == "tombstone" and status.session_id
    assert a.engine._flows[next(iter(a.engine._flows))].session is None   # keys wiped
    # late data of the reset connection is dropped, never passed in plaintext, and answered
    # toward the stack with a RST (nothing beyond the final point can be delivered)
    r = a.engine.handle_packet(5, a.seg(ISN_A + 1, ISN_B + 1, ACK | PSH, b"late"),
                               Direction.OUTBOUND, 62.0)
    assert r.verdict is Verdict.DROP
    (answer,) = [t for t in r.transmit if t.direction is Direction.INBOUND]
    reset = TCPPacket.parse(answer.data)
    assert reset.flags & RST and not len(reset.payload) and reset.seq == (ISN_B + 1) & M32
    # a new connection on the same 4-tuple starts afresh
    r = a.engine.handle_packet(6, a.seg(ISN_A + 99, 0, SYN, options=syn_options()),
                               Direction.OUTBOUND, 63.0)
    assert r.data is not None and a.engine.flows()[0].state == "syn-sent"
    pair.timer(a, 63.0 + 75.0)
    assert a.engine.flows() == []


def test_tombstone_answers_like_plain_tcp_after_a_clean_close():
    """F6: the stack whose final ACK was lost keeps retransmitting its FIN into the tombstone.

    RFC 9293 §3.10.7.4 (TIME-WAIT): a retransmission at or below the final point is
    acknowledged with the final numbers; §3.10.7.1: a segment beyond it gets a RST; a bare
    ACK at the final point gets nothing, and the stack's own leaves in wire numbers.  Only
    engine-made or translated payload-free segments leave.
    """
    pair = established()
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK | FIN | PSH, b"bye"))
    _, b_wire = pair.send(b, b.seg(ISN_B + 1, ISN_A + 5, ACK | FIN | PSH, b"ok"))
    pair.send(a, a.seg(ISN_A + 5, ISN_B + 4, ACK))
    pair.timer(a, 61.0)
    assert [f.state for f in a.engine.flows()] == ["tombstone"]
    # A's stack missed the final ACK: it retransmits data + FIN; the tombstone ACKs it
    r = a.engine.handle_packet(50, a.seg(ISN_A + 1, ISN_B + 4, ACK | FIN | PSH, b"bye"),
                               Direction.OUTBOUND, 62.0)
    assert r.verdict is Verdict.DROP and r.data is None
    (answer,) = r.transmit
    ack = TCPPacket.parse(answer.data)
    assert answer.direction is Direction.INBOUND and ack.flags == ACK and not len(ack.payload)
    assert ack.ack == (ISN_A + 5) & M32 and ack.seq == (ISN_B + 4) & M32
    # its bare ACK at the final point (what a TIME-WAIT stack sends) gets no answer (no ACK
    # loop) and leaves translated into the wire sequence space, never in the local one
    r = a.engine.handle_packet(51, a.seg(ISN_A + 5, ISN_B + 4, ACK), Direction.OUTBOUND, 62.5)
    assert r.verdict is Verdict.ACCEPT and not r.transmit
    out = TCPPacket.parse(r.data)
    assert out.seq == (ISN_A + 1 + INIT1_LEN + 23 + 1) & M32    # "bye" framed + FIN
    assert out.ack == (ISN_B + 1 + INIT2_LEN + 22 + 1) & M32    # "ok" framed + FIN
    assert a.engine.counters["ended_translated"] == 1
    # data beyond the final point cannot be delivered: RST toward the stack, <SEQ=SEG.ACK>
    r = a.engine.handle_packet(52, a.seg(ISN_A + 5, ISN_B + 4, ACK | PSH, b"more"),
                               Direction.OUTBOUND, 63.0)
    (answer,) = r.transmit
    reset = TCPPacket.parse(answer.data)
    assert answer.direction is Direction.INBOUND and reset.flags & RST
    assert reset.seq == (ISN_B + 4) & M32 and not len(reset.payload)
    # the peer retransmits its FIN frame: the tombstone ACKs it on the wire, payload-free
    fin = TCPPacket.parse(b_wire[-1])
    assert fin.flags & FIN
    r = a.engine.handle_packet(53, b_wire[-1], Direction.INBOUND, 64.0)
    assert r.verdict is Verdict.DROP and r.data is None
    (answer,) = r.transmit
    wire_ack = TCPPacket.parse(answer.data)
    assert answer.direction is Direction.OUTBOUND and wire_ack.flags == ACK
    assert not len(wire_ack.payload) and wire_ack.ack == (fin.seq + len(fin.payload) + 1) & M32
    assert a.engine.counters["ended_acks"] == 2 and a.engine.counters["ended_resets"] == 1


def test_flows_reports_ages_at_the_given_time():
    pair = established()
    a = pair.a
    (idle,) = a.engine.flows()
    (later,) = a.engine.flows(100.0)
    assert later.age == pytest.approx(idle.age + 100.0)


def test_idle_encrypted_flow_is_aborted_and_forgotten():
    pair = Pair(config_a=EngineConfig(idle_timeout=100.0))
    pair.handshake()
    a = pair.a
    result = a.engine.handle_timer(101.0)
    assert a.engine.counters["aborts_idle"] == 1 and a.engine.flows()[0].state == "aborted"
    assert [TCPPacket.parse(t.data).flags & RST for t in result.transmit] == [RST, RST]


def test_unrelated_packets_are_plain_and_untouched():
    engine = Engine()
    data = build(4, bytes(4), bytes([1, 1, 1, 1]), 1, 2, 5, 6, ACK | PSH, 100, b"", b"hi")
    r = engine.handle_packet(1, data, Direction.OUTBOUND, 0.0)
    assert r.verdict is Verdict.ACCEPT and r.data is None and r.plain


def test_syn_ack_retransmitted_after_a_lost_local_ack_gets_same_eno_and_a_fresh_ack():
    """Also once keyed, when the ENO endpoint is gone (only its option bytes are kept)."""
    pair = Pair()
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A, 0, SYN, options=syn_options()))
    syn_ack = b.seg(ISN_B, ISN_A + 1, SYN | ACK, options=syn_options())
    _, (first,) = pair.send(b, syn_ack)
    pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK))
    (flow_b,) = b.engine._flows.values()
    assert flow_b.session is not None and flow_b.eno is None and flow_b.negotiated is None
    b.to_stack.clear()   # the ACK toward B's stack was lost on the local path
    r, (again,) = pair.send(b, syn_ack, deliver=False)
    assert again == first
    assert tcp_options.eno_options(TCPPacket.parse(again).options) == [b"\x45\x04\x01\x23"]
    (ack,) = [TCPPacket.parse(t.data) for t in r.transmit if t.direction is Direction.INBOUND]
    assert ack.flags == ACK and ack.ack == (ISN_B + 1) & M32 and ack.seq == (ISN_A + 1) & M32


def test_stale_retransmission_is_answered_with_an_ack_to_the_stack():
    pair = established()
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK, b"s" * 40))
    pair.send(b, b.seg(ISN_B + 1, ISN_A + 41, ACK))        # A's stack got the ACK... or not
    r, wire = pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK, b"s" * 40), deliver=False)
    assert r.verdict is Verdict.DROP and wire == []
    (ack,) = [TCPPacket.parse(t.data) for t in r.transmit]
    assert ack.ack == (ISN_A + 41) & M32


def test_stack_duplicate_acks_trigger_an_immediate_redelivery():
    pair = established()
    a, b = pair.a, pair.b
    pair.send(b, b.seg(ISN_B + 1, ISN_A + 1, ACK | PSH, b"1" * 100))
    pair.send(b, b.seg(ISN_B + 101, ISN_A + 1, ACK | PSH, b"2" * 100))
    del a.to_stack[-2]    # the first delivery was lost on the local path
    results = [pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK))[0] for _ in range(2)]
    assert not results[0].transmit
    (again,) = [TCPPacket.parse(t.data) for t in results[1].transmit]
    assert again.seq == (ISN_B + 1) & M32 and bytes(again.payload) == b"1" * 100 + b"2" * 100


@st.composite
def _impaired_wire(draw):
    sizes = draw(st.lists(st.integers(1, 1400), min_size=1, max_size=12))
    return sizes, draw(st.randoms(use_true_random=False))


@settings(max_examples=40, deadline=None)
@given(_impaired_wire())
def test_any_segmentation_reordering_and_duplication_reconstructs_the_stream(case):
    """Resegmented, reordered, duplicated wire packets: B's stack gets exactly A's bytes."""
    sizes, rng = case
    pair = established()
    a, b = pair.a, pair.b
    data = bytes(rng.getrandbits(8) for _ in range(sum(sizes)))
    pieces = []
    offset = 0
    for size in sizes:
        _, wire = pair.send(a, a.seg(ISN_A + 1 + offset, ISN_B + 1, ACK, data[offset:offset + size]),
                            deliver=False)
        offset += size
        for raw in wire:
            pkt = TCPPacket.parse(raw)
            payload = bytes(pkt.payload)
            cut = rng.randrange(len(payload) + 1)
            for lo, hi in ((0, cut), (cut, len(payload))):
                if lo < hi:
                    pieces.append(build(4, pkt.src, pkt.dst, pkt.sport, pkt.dport,
                                        (pkt.seq + lo) & M32, pkt.ack, ACK, pkt.window,
                                        pkt.options, payload[lo:hi]))
    pieces += rng.sample(pieces, len(pieces) // 3)
    rng.shuffle(pieces)
    for raw in pieces:
        pair.arrive(b, raw)
        got = stack_bytes(b, ISN_A)
        pair.send(b, b.seg(ISN_B + 1, ISN_A + 1 + len(got), ACK))   # B's stack ACKs as it reads
    assert stack_bytes(b, ISN_A) == data
    assert b.engine.counters["aborts"] == 0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(
    st.booleans(), st.integers(0, 0xFFF), st.integers(-3000, 3000), st.integers(-3000, 3000),
    st.binary(max_size=60), st.binary(max_size=300)), min_size=1, max_size=8))
def test_arbitrary_segments_on_an_encrypted_flow_never_raise_or_leak(segments):
    """Any flags, numbers, options and payload, either way: a Result, never an exception,
    and no internal error; whatever passes outbound never carries the plaintext."""
    pair = established()
    a, b = pair.a, pair.b
    for outbound, flags, dseq, dack, options, payload in segments:
        options = options[:40]
        options += bytes(-len(options) % 4)
        if outbound:
            raw = a.seg(ISN_A + 1 + dseq, ISN_B + 1 + dack, flags, payload, options=options)
            r = a.engine.handle_packet(1, raw, Direction.OUTBOUND, 1.0)
            if r.data is not None and len(set(payload)) >= 6:
                assert payload not in bytes(TCPPacket.parse(r.data).payload)
        else:
            raw = b.seg(ISN_B + 1 + INIT2_LEN + dseq, ISN_A + 1 + INIT1_LEN + dack, flags,
                        payload, options=options)
            r = a.engine.handle_packet(1, raw, Direction.INBOUND, 1.0)
        assert r.verdict in (Verdict.ACCEPT, Verdict.DROP, Verdict.HOLD)
    assert a.engine.counters["aborts_internal-error"] == 0


def test_missing_init1_aborts_after_the_handshake_timeout_and_drops_held_data():
    pair = Pair(config_b=EngineConfig(handshake_timeout=30.0))
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A, 0, SYN, options=syn_options()))
    pair.send(b, b.seg(ISN_B, ISN_A + 1, SYN | ACK, options=syn_options()))
    # A's third ACK arrives without Init1 (say A's engine died): B is keying, its data held
    pair.arrive(b, a.seg(ISN_A + 1, ISN_B + 1, ACK, options=ts_options(1, 2) + b"\x45\x02\x00\x00"))
    r, _ = pair.send(b, b.seg(ISN_B + 1, ISN_A + 1, ACK | PSH, b"server speaks first"),
                     deliver=False)
    assert r.verdict is Verdict.HOLD
    result = b.engine.handle_timer(30.0)
    assert b.engine.counters["aborts_init-timeout"] == 1
    assert [rel.accept for rel in result.releases] == [False]


def test_redelivery_keeps_the_urgent_mark():
    pair = established()
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK | URG | PSH, b"!" * 10, urg_ptr=10))
    assert b.to_stack[-1].flags & URG
    b.to_stack.clear()   # lost on the local path
    pair.timer(b, b.engine.next_deadline())
    (again,) = b.to_stack
    assert again.flags & URG and again.urg_ptr == 10 and bytes(again.payload) == b"!" * 10


def test_delivered_segments_keep_the_senders_push_flag():
    """PSH reaches the stack only where the peer's stack pushed: Linux ACKs after every read
    of a pushed segment (ICSK_ACK_PUSHED), so PSH on every delivery meant an ACK per
    segment in bulk receive (each ACK costs both engines a call)."""
    pair = established()
    a, b = pair.a, pair.b
    first, second = b"x" * 1000, b"y" * 1000
    pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK, first))
    pair.send(a, a.seg(ISN_A + 1 + len(first), ISN_B + 1, ACK | PSH, second))
    delivered = [pkt for pkt in b.to_stack if len(pkt.payload)]
    assert [bytes(pkt.payload) for pkt in delivered] == [first, second]
    assert [bool(pkt.flags & PSH) for pkt in delivered] == [False, True]
    assert stack_bytes(b, ISN_A) == first + second


@pytest.mark.parametrize("ts_ok, sack_ok", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("holes", [0, 1, 3, 5])
def test_engine_made_options_match_the_general_editing(ts_ok, sack_ok, holes):
    """Engine-made segments build their options directly once ``45 02`` is no longer sent;
    the bytes are those the general option editing gives (NOP NOP TS, NOP NOP SACK, at
    most 3 blocks, most recent first)."""
    from tcpcryptd.packet import options as tcp_options
    pair = established()
    (flow,) = pair.b.engine._flows.values()
    flow.ts_ok, flow.sack_ok, flow.send_eno = ts_ok, sack_ok, False
    flow.stack_tsval, flow.peer_tsval = 0xDEADBEEF, 7
    for k in range(holes):
        flow.rx.insert(flow.rx.next + 100 + 200 * k, b"z" * 50)
    isn1 = flow.peer_isn + 1
    expected = tcp_options.set_timestamps(b"", flow.stack_tsval, flow.peer_tsval) if ts_ok else b""
    blocks = flow.rx.sack_blocks()
    if sack_ok and blocks:
        expected = tcp_options.replace_sack(
            expected, [((l + isn1) & M32, (r + isn1) & M32) for l, r in blocks])
    assert flow.wire_options(True) == expected
    assert flow.wire_options(False) == (expected[:12] if ts_ok else b"")


def test_a_filled_gap_is_delivered_in_few_large_segments():
    """Frames held behind a lost segment go up to the stack, once the gap is filled, in
    segments of up to MAX_DELIVERY bytes (the stack takes them as it takes GRO packets), not
    one verdict or injection per frame."""
    from tcpcryptd.engine.delivery import MAX_DELIVERY
    pair = established()
    a, b = pair.a, pair.b
    pieces = [bytes([65 + k]) * 1000 for k in range(40)]
    wire = []
    for k, piece in enumerate(pieces):
        _, out = pair.send(a, a.seg(ISN_A + 1 + 1000 * k, ISN_B + 1, ACK, piece,
                                    window=0xFFFF), deliver=False)
        wire += out
    b.to_stack.clear()
    for packet in wire[1:]:
        pair.arrive(b, packet)            # behind the gap: buffered, nothing for the stack
    assert not [p for p in b.to_stack if len(p.payload)]
    pair.arrive(b, wire[0])               # the gap is filled
    delivered = [p for p in b.to_stack if len(p.payload)]
    assert stack_bytes(b, ISN_A) == b"".join(pieces)
    total = sum(len(p.payload) for p in delivered)
    assert len(delivered) == -(-total // MAX_DELIVERY) < len(pieces)


def test_a_retransmitted_syn_gives_no_rtt_sample_for_the_init_timer():
    """Karn's algorithm (RFC 6298 §3): after SYN retransmissions the SYN-ACK may answer any
    copy, so Init1's retransmission timer starts at initial_rto, not from first SYN ->
    SYN-ACK (7 s here: an RTO of ~21 s, and a handshake that could not finish in time)."""
    pair = Pair()
    a, b = pair.a, pair.b
    syn = a.seg(ISN_A, 0, SYN, options=syn_options())
    pair.send(a, syn, deliver=False)
    pair.now = 1.0
    pair.send(a, syn, deliver=False)
    pair.now = 3.0
    pair.send(a, syn, deliver=False)
    pair.now = 7.0
    pair.send(a, syn)
    pair.send(b, b.seg(ISN_B, ISN_A + 1, SYN | ACK, options=syn_options()))
    (flow_a,) = a.engine._flows.values()
    assert flow_a.syn_rtt is None
    pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK), deliver=False)   # Init1 rides on it: lost
    assert flow_a.rtx_deadline == pytest.approx(7.0 + a.engine.config.initial_rto)


def test_a_syn_sent_once_gives_the_init_timer_its_rtt():
    pair = Pair()
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A, 0, SYN, options=syn_options()))
    pair.now = 0.5
    pair.send(b, b.seg(ISN_B, ISN_A + 1, SYN | ACK, options=syn_options()))
    (flow_a,) = a.engine._flows.values()
    assert flow_a.syn_rtt == pytest.approx(0.5)


@settings(deadline=None, max_examples=300)
@given(st.booleans(), st.integers(0, 2), st.lists(st.tuples(st.integers(0, 120),
                                                           st.integers(0, 255)), max_size=6),
       st.integers(0, 60))
def test_corrupted_headers_on_an_encrypted_flow_never_raise(outbound, kind, edits, cut):
    """The fast paths read raw headers: an established flow's data, pure-ACK or SACK
    segment with any bytes of its IP/TCP header overwritten, or cut short, gives a Result
    and never an internal error."""
    pair = established()
    a, b = pair.a, pair.b
    payload = b"" if kind == 1 else b"d" * 100
    options = ts_options(5, 6) + (b"\x01\x01\x05\x0a" + bytes(8) if kind == 2 else b"")
    if outbound:
        raw = bytearray(a.seg(ISN_A + 1, ISN_B + 1, ACK | PSH, payload, options=options))
    else:
        raw = bytearray(b.seg(ISN_B + 1 + INIT2_LEN, ISN_A + 1 + INIT1_LEN, ACK, payload,
                              options=options))
    for position, value in edits:
        if position < len(raw):
            raw[position] = value
    data = bytes(raw[:len(raw) - cut])
    r = a.engine.handle_packet(1, data, Direction.OUTBOUND if outbound else Direction.INBOUND,
                               1.0)
    assert r.verdict in (Verdict.ACCEPT, Verdict.DROP, Verdict.HOLD)
    assert a.engine.counters["aborts_internal-error"] == 0


# -- RSTs: RFC 5961 §3.2 in wire space (an encrypted connection is no easier to reset) ------

def _rst_setup() -> tuple[Pair, int]:
    """An encrypted pair after 5 bytes B -> A; returns A's wire receive point in B's stream."""
    pair = established()
    a, b = pair.a, pair.b
    pair.send(b, b.seg(ISN_B + 1, ISN_A + 1, ACK | PSH, b"hello"))
    pair.send(a, a.seg(ISN_A + 1, ISN_B + 6, ACK))
    expected = (ISN_B + 1 + INIT2_LEN + 25) & M32
    (flow,) = a.engine._flows.values()
    assert (flow.peer_isn + 1 + flow.rx.next) & M32 == expected
    return pair, expected


def _spoofed_rst(pair: Pair, seq: int, flags: int = RST, ack: int = 0) -> bytes:
    return build(4, pair.b.ip, pair.a.ip, 80, 40000, seq & M32, ack & M32, flags, 0)


def _still_transfers(pair: Pair) -> None:
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A + 1, ISN_B + 6, ACK | PSH, b"still here"))
    pair.send(b, b.seg(ISN_B + 6, ISN_A + 11, ACK | PSH, b" and more"))
    pair.send(a, a.seg(ISN_A + 11, ISN_B + 15, ACK))
    assert stack_bytes(b, ISN_A) == b"still here"
    assert stack_bytes(a, ISN_B) == b"hello and more"
    assert [f.state for f in a.engine.flows()] == ["encrypted"]
    assert not any(p.flags & RST for p in a.to_stack)


@pytest.mark.parametrize("offset, outcome", [
    (-1000, "out-of-window"), (-1, "out-of-window"), (1, "in-window"), (7, "in-window"),
    (100_000, "in-window"), (2 ** 20, "out-of-window"), (2 ** 31, "out-of-window"),
])
def test_inexact_rst_does_not_reset_an_encrypted_connection(offset, outcome):
    """Issue 13 item 2: a RST anywhere but at the exact wire receive point never reaches the
    stack. Out of the window: dropped silently; in it: dropped and challenged (RFC 5961 §3.2)."""
    pair, expected = _rst_setup()
    a = pair.a
    sent_before = len(pair.wire)
    r = pair.arrive(a, _spoofed_rst(pair, expected + offset))
    assert r.verdict is Verdict.DROP and r.data is None
    assert a.engine.counters[f"drops_rst-{outcome}"] == 1
    assert a.engine.counters["resets_accepted"] == 0
    challenges = [TCPPacket.parse(t.data) for t in r.transmit]
    if outcome == "in-window":
        (challenge,) = challenges
        assert challenge.flags == ACK and challenge.ack == expected
        assert challenge.seq == (ISN_A + 1 + INIT1_LEN) & M32
        assert a.engine.counters["challenge_acks"] == 1
        # the peer's engine sees an ACK with nothing new: it is not passed to its stack
        assert len(pair.wire) == sent_before + 2
    else:
        assert challenges == []
    _still_transfers(pair)


def test_inexact_rst_ack_is_challenged_and_challenges_are_rate_limited():
    pair, expected = _rst_setup()
    a = pair.a
    wire_ack = (ISN_A + 1 + INIT1_LEN) & M32
    r = pair.arrive(a, _spoofed_rst(pair, expected + 3, RST | ACK, wire_ack))
    assert r.verdict is Verdict.DROP and len(r.transmit) == 1
    # a second one within challenge_ack_interval: dropped, no second challenge (RFC 5961 §7)
    pair.now = 0.1
    r = pair.arrive(a, _spoofed_rst(pair, expected + 5, RST | ACK, wire_ack))
    assert r.verdict is Verdict.DROP and not r.transmit
    pair.now = 1.0
    r = pair.arrive(a, _spoofed_rst(pair, expected + 9, RST | ACK, wire_ack))
    assert len(r.transmit) == 1
    assert a.engine.counters["drops_rst-in-window"] == 3 and a.engine.counters["challenge_acks"] == 2
    _still_transfers(pair)


@pytest.mark.parametrize("flags", [RST, RST | ACK])
def test_exact_rst_resets_at_the_stacks_receive_point(flags):
    """At exactly the wire receive point a RST resets, as in plain TCP: it reaches the stack
    at the stack's own receive point (plaintext offsets), its ACK translated, and keeps its
    own TSval (the stack's PAWS check sees the real one)."""
    pair, expected = _rst_setup()
    a = pair.a
    raw = build(4, pair.b.ip, a.ip, 80, 40000, expected, (ISN_A + 1 + INIT1_LEN) & M32, flags,
                0, ts_options(1, 2))
    r = pair.arrive(a, raw)
    assert r.verdict is Verdict.ACCEPT
    reset = TCPPacket.parse(r.data)
    assert reset.flags & RST and reset.seq == (ISN_B + 6) & M32 and not len(reset.payload)
    assert tcp_options.timestamps(reset.options) == (1, 2)
    if flags & ACK:
        assert reset.ack == (ISN_A + 1) & M32
    assert [f.state for f in a.engine.flows()] == ["closed"]
    assert a.engine.counters["resets_accepted"] == 1


def test_rst_inside_an_undelivered_frame_or_beyond_delivered_data():
    """A frame still partial, and verified plaintext the stack has no room for: the wire
    receive point is beyond the stack's. Only the wire point resets; the stack gets the RST
    at its own receive point (what it was given), never one in between."""
    pair, expected = _rst_setup()
    a, b = pair.a, pair.b
    _, wire = pair.send(b, b.seg(ISN_B + 6, ISN_A + 1, ACK | PSH, b"x" * 100), deliver=False)
    (frame,) = wire
    head = TCPPacket.parse(frame)
    part = build(4, b.ip, a.ip, 80, 40000, head.seq, head.ack, ACK, 1000,
                 ts_options(2000, 1000), bytes(head.payload[:50]))
    pair.arrive(a, part)
    # RSTs inside the partial frame (below the receive point) and just past it
    for seq in (expected, expected + 10, expected + 49):
        r = pair.arrive(a, _spoofed_rst(pair, seq))
        assert r.verdict is Verdict.DROP
    assert a.engine.counters["drops_rst-out-of-window"] == 3
    r = pair.arrive(a, _spoofed_rst(pair, expected + 51))
    assert r.verdict is Verdict.DROP and a.engine.counters["drops_rst-in-window"] == 1
    r = pair.arrive(a, _spoofed_rst(pair, expected + 50))
    assert r.verdict is Verdict.ACCEPT
    reset = TCPPacket.parse(r.data)
    assert reset.seq == (ISN_B + 6) & M32     # the stack has "hello", nothing of the frame


def test_rsts_in_the_handshake_states_keep_the_flow_unless_acceptable():
    pair = Pair()
    a, b = pair.a, pair.b
    _, (syn,) = pair.send(a, a.seg(ISN_A, 0, SYN, options=syn_options(tsval=1000)), deliver=False)
    # SYN-SENT: only RST|ACK acknowledging our SYN is acceptable (RFC 9293 §3.10.7.3)
    for raw in (build(4, b.ip, a.ip, 80, 40000, 12345, 0, RST, 0),
                build(4, b.ip, a.ip, 80, 40000, 0, ISN_A + 7, RST | ACK, 0)):
        r = pair.arrive(a, raw)
        assert r.verdict is Verdict.DROP
    assert a.engine.counters["drops_rst-unacceptable"] == 2
    assert [f.state for f in a.engine.flows()] == ["syn-sent"]
    # B in SYN-RECEIVED: out of the stack's window dropped, flow kept; exact one forgets it
    pair.arrive(b, syn)
    pair.send(b, b.seg(ISN_B, ISN_A + 1, SYN | ACK, options=syn_options(tsval=2000, tsecr=1000)),
              deliver=False)
    r = pair.arrive(b, a.seg(ISN_A + 1 + 70000, 0, RST))
    assert r.verdict is Verdict.DROP and b.engine.counters["drops_rst-out-of-window"] == 1
    r = pair.arrive(b, a.seg(ISN_A + 1 + 100, 0, RST))
    assert r.verdict is Verdict.ACCEPT and [f.state for f in b.engine.flows()] == ["syn-received"]
    r = pair.arrive(b, a.seg(ISN_A + 1, 0, RST))
    assert r.verdict is Verdict.ACCEPT and b.engine.flows() == []


def test_inexact_rst_while_keying_is_dropped():
    pair = Pair()
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A, 0, SYN, options=syn_options(tsval=1000)))
    pair.send(b, b.seg(ISN_B, ISN_A + 1, SYN | ACK, options=syn_options(tsval=2000, tsecr=1000)))
    # the third ACK with Init1 is lost: B stays before keying, A is keying
    pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK), deliver=False)
    assert [f.state for f in a.engine.flows()] == ["keying"]
    r = pair.arrive(a, _spoofed_rst(pair, ISN_B + 1 + 5))
    assert r.verdict is Verdict.DROP and [f.state for f in a.engine.flows()] == ["keying"]
    r = pair.arrive(a, _spoofed_rst(pair, ISN_B + 1))
    assert r.verdict is Verdict.ACCEPT and [f.state for f in a.engine.flows()] == ["closed"]


def test_outbound_rst_leaves_at_the_wire_send_point_or_at_the_peers_ack():
    pair, _ = _rst_setup()
    a = pair.a
    pair.send(a, a.seg(ISN_A + 1, ISN_B + 6, ACK | PSH, b"0123456789"), deliver=False)
    # the stack aborts: RST at its SND.NXT -> the wire's SND.NXT
    r, (out,) = pair.send(a, a.seg(ISN_A + 11, ISN_B + 6, RST | ACK), deliver=False)
    rst = TCPPacket.parse(out)
    assert rst.seq == (ISN_A + 1 + INIT1_LEN + 30) & M32 and not len(rst.payload)
    assert rst.ack == (ISN_B + 1 + INIT2_LEN + 25) & M32
    # a stack answering the peer's ACK inside a frame with <SEQ=SEG.ACK>: exactly that ACK
    pair2, _ = _rst_setup()
    a2 = pair2.a
    pair2.send(a2, a2.seg(ISN_A + 1, ISN_B + 6, ACK | PSH, b"0123456789"), deliver=False)
    inside = (ISN_A + 1 + INIT1_LEN + 12) & M32
    r = pair2.arrive(a2, build(4, pair2.b.ip, a2.ip, 80, 40000, (ISN_B + 1 + INIT2_LEN + 25) & M32,
                               inside, ACK, 1000, ts_options(2001, 1000)))
    r, (out,) = pair2.send(a2, a2.seg(ISN_A + 1, 0, RST), deliver=False)
    assert TCPPacket.parse(out).seq == inside


# -- 4-tuple reuse (issue 15; RFC 9293 §3.10.7.4) -----------------------------------------

ISN_A2, ISN_A3, ISN_B2 = 0x00001000, 0x40000000, 0x20000000
#: after the close below: A's and B's final wire numbers ("bye" and "ok" framed, + FIN)
A_FINAL_WIRE = (ISN_A + 1 + INIT1_LEN + 23 + 1) & M32
B_FINAL_WIRE = (ISN_B + 1 + INIT2_LEN + 22 + 1) & M32


def _closed_pair() -> Pair:
    """An encrypted connection closed cleanly (A closes first); both flows lingering."""
    pair = established()
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK | FIN | PSH, b"bye"))
    pair.send(b, b.seg(ISN_B + 1, ISN_A + 5, ACK | FIN | PSH, b"ok"))
    pair.send(a, a.seg(ISN_A + 5, ISN_B + 4, ACK))
    assert [f.state for f in a.engine.flows()] == [f.state for f in b.engine.flows()] == ["closed"]
    return pair


def _new_connection(pair: Pair, isn_a: int) -> None:
    """B's stack takes A's SYN ``isn_a``: SYN-ACK, third ACK, keys, data both ways."""
    a, b = pair.a, pair.b
    a.to_stack.clear()
    b.to_stack.clear()
    _, (synack,) = pair.send(b, b.seg(ISN_B2, isn_a + 1, SYN | ACK,
                                      options=syn_options(tsval=5000, tsecr=4000)))
    assert tcp_options.parse(TCPPacket.parse(synack).options)[-1][0] == 69   # B's ENO answer
    pair.send(a, a.seg(isn_a + 1, ISN_B2 + 1, ACK, options=ts_options(4001, 5000)))
    pair.send(a, a.seg(isn_a + 1, ISN_B2 + 1, ACK | PSH, b"second life",
                       options=ts_options(4002, 5000)))
    pair.send(b, b.seg(ISN_B2 + 1, isn_a + 12, ACK | PSH, b"indeed", options=ts_options(5001, 4002)))
    assert stack_bytes(b, isn_a) == b"second life" and stack_bytes(a, ISN_B2) == b"indeed"
    (fa,), (fb,) = a.engine.flows(), b.engine.flows()
    assert fa.state == fb.state == "encrypted" and fa.session_id == fb.session_id
    for host in (a, b):
        assert host.engine._flows[next(iter(host.engine._flows))].stale is None
    # nothing of the new connection reached a stack in the old numbers
    for p in b.to_stack:
        assert 0 < (p.seq - isn_a) & M32 <= 12 and 0 < (p.ack - ISN_B2) & M32 <= 7, p
    for p in a.to_stack:
        assert 0 <= (p.seq - ISN_B2) & M32 <= 7 and 0 < (p.ack - isn_a) & M32 <= 12, p


def test_syn_on_a_time_wait_tuple_old_answers_translated_then_a_higher_isn_is_taken():
    """Issue 15 (1) and (2): a SYN the TIME-WAIT stack does not take is answered with an ACK
    of the old connection: it leaves in wire numbers (never the plaintext ones), the flow
    made for the SYN is not mixed with the next SYN's, which the stack takes."""
    pair = _closed_pair()
    a, b = pair.a, pair.b
    _, (syn,) = pair.send(a, a.seg(ISN_A2, 0, SYN, options=syn_options(tsval=4000)))
    assert a.engine.counters["replaced_closed"] == 1
    assert [f.state for f in b.engine.flows()] == ["syn-received"]
    # B's stack (TIME-WAIT) answers with an ACK in the old local numbers: translated
    _, (tw_ack,) = pair.send(b, b.seg(ISN_B + 4, ISN_A + 5, ACK), deliver=False)
    out = TCPPacket.parse(tw_ack)
    assert (out.seq, out.ack) == (B_FINAL_WIRE, A_FINAL_WIRE)
    assert b.engine.counters["ended_translated"] == 1
    # the new connection is not going on: the stack's ACK changed nothing of the new flow
    assert [f.state for f in b.engine.flows()] == ["syn-received"]
    # a new SYN with a higher ISN (A's stack starts over): replaces the half-open flow
    pair.send(a, a.seg(ISN_A3, 0, SYN, options=syn_options(tsval=4000)))
    assert b.engine.counters["replaced_syn-received"] == 1
    _new_connection(pair, ISN_A3)
    assert b.engine.counters["replaced_closed"] == 1


def test_time_wait_assassination_by_the_peers_rst_lets_the_retransmitted_syn_in():
    """The SYN-SENT peer answers the translated TIME-WAIT ACK with <SEQ=SEG.ACK><CTL=RST>:
    exact for the old connection, it reaches the stack at its own numbers (RFC 9293
    §3.10.7.4, as plain TCP); the SYN retransmission (same ISN) then keeps its flow."""
    pair = _closed_pair()
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A2, 0, SYN, options=syn_options(tsval=4000)))
    pair.send(b, b.seg(ISN_B + 4, ISN_A + 5, ACK))       # TIME-WAIT ACK, translated, to A
    seen = a.to_stack[-1]
    assert seen.ack == A_FINAL_WIRE and [f.state for f in a.engine.flows()] == ["syn-sent"]
    # A's stack (SYN-SENT) resets it: passes, A's flow stays
    pair.send(a, a.seg(seen.ack, 0, RST))
    assert [f.state for f in a.engine.flows()] == ["syn-sent"]
    reset = b.to_stack[-1]
    assert reset.flags & RST and reset.seq == (ISN_A + 5) & M32   # B stack's RCV.NXT
    # the retransmitted SYN: same flow, no replacement
    before = dict(b.engine.counters)
    pair.send(a, a.seg(ISN_A2, 0, SYN, options=syn_options(tsval=4000)))
    assert b.engine.counters.get("replaced_syn-received", 0) == before.get("replaced_syn-received", 0)
    _new_connection(pair, ISN_A2)


@pytest.mark.parametrize("ended", ["aborted", "tombstone"])
def test_reuse_after_an_abort_or_during_the_tombstone(ended):
    pair = _closed_pair() if ended == "tombstone" else established()
    a, b = pair.a, pair.b
    if ended == "aborted":
        pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK | PSH, b"x"))
        # a TCP FIN from B with no FINp frame before it: A aborts (RST both ways)
        pair.arrive(a, build(4, b.ip, a.ip, 80, 40000, (ISN_B + 1 + INIT2_LEN) & M32,
                             (ISN_A + 1 + INIT1_LEN + 21) & M32, ACK | FIN, 1000,
                             ts_options(2001, 1000)))
        assert [f.state for f in a.engine.flows()] == ["aborted"]
        assert [f.state for f in b.engine.flows()] == ["closed"]
    else:
        pair.timer(a, 61.0)
        pair.timer(b, 61.0)
        assert [f.state for f in b.engine.flows()] == ["tombstone"]
    r, (syn,) = pair.send(a, a.seg(ISN_A2, 0, SYN, options=syn_options(tsval=4000)))
    assert r.verdict is Verdict.ACCEPT and not r.plain
    assert a.engine.counters[f"replaced_{ended}"] == 1
    if ended == "tombstone":
        # B's TIME-WAIT ACK leaves with the tombstone's final wire numbers
        _, (tw_ack,) = pair.send(b, b.seg(ISN_B + 4, ISN_A + 5, ACK), deliver=False)
        assert (TCPPacket.parse(tw_ack).seq, TCPPacket.parse(tw_ack).ack) == (B_FINAL_WIRE,
                                                                              A_FINAL_WIRE)
        # the peer's exact RST reaches the TIME-WAIT stack at its numbers
        pair.arrive(b, build(4, a.ip, b.ip, 40000, 80, A_FINAL_WIRE, 0, RST, 0))
        assert b.to_stack[-1].flags & RST and b.to_stack[-1].seq == (ISN_A + 5) & M32
    _new_connection(pair, ISN_A2)
    assert b.engine.counters[f"replaced_{'closed' if ended == 'aborted' else 'tombstone'}"] == 1


def test_syn_with_a_new_isn_on_an_encrypted_connection_is_challenged_not_replaced():
    """RFC 5961 §4: the stack answers with a challenge ACK (translated); the flow stays."""
    pair, _ = _rst_setup()
    a, b = pair.a, pair.b
    r = pair.arrive(b, a.seg(ISN_A3, 0, SYN, options=syn_options()))
    assert r.verdict is Verdict.ACCEPT
    assert [f.state for f in b.engine.flows()] == ["encrypted"]
    _, (challenge,) = pair.send(b, b.seg(ISN_B + 6, ISN_A + 1, ACK), deliver=False)
    assert TCPPacket.parse(challenge).ack == (ISN_A + 1 + INIT1_LEN) & M32
    assert not any(k.startswith("replaced_") for k in b.engine.counters)
    _still_transfers(pair)


def test_a_stale_flow_comes_back_when_the_new_syn_times_out():
    pair = _closed_pair()
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A2, 0, SYN, options=syn_options(tsval=4000)))
    assert [f.state for f in b.engine.flows()] == ["syn-received"]
    pair.timer(b, 76.0)     # handshake timeout of the new flow; the old one is buried by now
    assert [f.state for f in b.engine.flows()] == ["tombstone"]
    _, (tw_ack,) = pair.send(b, b.seg(ISN_B + 4, ISN_A + 5, ACK), deliver=False)
    assert TCPPacket.parse(tw_ack).seq == B_FINAL_WIRE
    pair.timer(b, 61.0 + 600.0)
    assert b.engine.flows() == []


def test_stack_syn_ack_for_an_older_syn_never_gets_the_new_flows_eno_answer():
    pair = Pair()
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A, 0, SYN, options=syn_options(tsval=1000)))
    pair.send(a, a.seg(ISN_A2, 0, SYN, options=syn_options(tsval=1001)))
    assert b.engine.counters["replaced_syn-received"] == 1
    r, wire = pair.send(b, b.seg(ISN_B, ISN_A + 1, SYN | ACK, options=syn_options()), deliver=False)
    assert r.verdict is Verdict.DROP and not wire and b.engine.counters["drops_stale-syn-ack"] == 1
    _new_connection(pair, ISN_A2)
