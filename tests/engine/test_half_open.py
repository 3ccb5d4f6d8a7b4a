"""Passive ENO flows before the peer's third segment: the compact record and its cap.

* ``EngineConfig.max_half_open`` bounds them apart from ``max_flows``: an ENO SYN beyond is
  left plain (no ENO answer, RFC 8547 §4.6) and counted ``plain_half-open-limit``; outbound
  SYNs, established flows and SYNs without ENO are not counted against it;
* a flood's SYNs, retransmitted SYNs, RSTs and the stack's SYN-ACKs keep the record compact;
  the third segment promotes it to a :class:`Flow` that goes on exactly as one made at the SYN.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[2]))

from _hand import (  # noqa: E402
    ACK,
    ISN_A,
    ISN_B,
    PSH,
    RST,
    SYN,
    Direction,
    Engine,
    EngineConfig,
    Pair,
    Verdict,
    stack_bytes,
    syn_options,
)

from bench.flow_memory import flood, flood_syn, stack_syn_ack  # noqa: E402
from tcpcryptd.engine.flow import ColdState, Flow, HalfOpen, State  # noqa: E402
from tcpcryptd.packet.tcp import build  # noqa: E402

TEPS = tuple(EngineConfig().teps)


def _records(engine: Engine) -> list:
    return [f for f in engine._flows.values() if type(f) is HalfOpen]


def test_half_open_cap_leaves_further_eno_syns_plain_and_counts_them():
    engine = Engine(EngineConfig(max_half_open=3))
    flood(engine, 0, 3, 0.0)
    assert len(_records(engine)) == 3 and engine._half_open == 3
    syn = flood_syn(3, TEPS)
    result = engine.handle_packet(1, syn, Direction.INBOUND, 0.0)
    # untouched (no MSS clamp, nothing tracked): the stack answers without ENO, plain TCP
    assert result.verdict is Verdict.ACCEPT and result.data is None and result.plain
    assert engine.counters["plain_half-open-limit"] == 1
    assert len(engine.flows()) == 3
    # its SYN-ACK is not tracked either
    assert engine.handle_packet(2, stack_syn_ack(3), Direction.OUTBOUND, 0.0).plain
    # a SYN without ENO beyond the cap is a fallback as always, not a half-open refusal
    plain = build(4, bytes([10, 9, 9, 9]), bytes([10, 0, 0, 2]), 5000, 80, 1, 0, SYN, 100,
                  syn_options())
    assert engine.handle_packet(3, plain, Direction.INBOUND, 0.0).plain
    assert engine.counters["fallback_no-eno"] == 1
    assert engine.counters["plain_half-open-limit"] == 1


def test_outbound_syns_and_established_flows_do_not_count():
    pair = Pair(EngineConfig(max_half_open=1), EngineConfig(max_half_open=1))
    pair.handshake()
    b = pair.b.engine
    assert b._half_open == 0 and not _records(b)
    # B's own outbound SYNs are not half-open records (the local stack opened them)
    for port in (1, 2, 3):
        out = build(4, bytes([10, 0, 0, 2]), bytes([10, 7, 7, 7]), 30000 + port, 443, 9, 0,
                    SYN, 100, syn_options())
        assert not b.handle_packet(100 + port, out, Direction.OUTBOUND, 1.0).plain
    assert b._half_open == 0
    flood(b, 0, 1, 1.0)
    assert b._half_open == 1
    assert b.handle_packet(200, flood_syn(1, TEPS), Direction.INBOUND, 1.0).plain
    assert b.counters["plain_half-open-limit"] == 1


def test_slots_free_again_when_records_expire_or_are_reset():
    config = EngineConfig(max_half_open=2)
    engine = Engine(config)
    flood(engine, 0, 2, 0.0)
    # the peer's RST at exactly its ISN + 1 ends one (RFC 9293 §3.10.7.3)
    syn = flood_syn(0, TEPS)
    from tcpcryptd.packet.tcp import TCPPacket
    pkt = TCPPacket.parse(syn)
    rst = build(4, pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.seq + 1, 0, RST, 0, b"")
    assert engine.handle_packet(5, rst, Direction.INBOUND, 1.0).verdict is Verdict.ACCEPT
    assert engine._half_open == 1 and len(engine.flows()) == 1
    flood(engine, 2, 1, 1.0)
    assert engine._half_open == 2
    assert engine.handle_packet(6, flood_syn(3, TEPS), Direction.INBOUND, 1.0).plain
    # the handshake timeout forgets both: room again
    engine.handle_timer(1.0 + config.handshake_timeout + 1)
    assert engine._half_open == 0 and engine.flows() == []
    assert engine.counters["expired_handshake"] == 2
    flood(engine, 4, 2, 200.0)
    assert engine._half_open == 2 and engine.counters["plain_half-open-limit"] == 1


def test_flood_segments_never_promote_the_record():
    engine = Engine()
    flood(engine, 0, 1, 0.0)
    (record,) = engine._flows.values()
    assert type(record) is HalfOpen and record.syn_sends == 1
    syn = flood_syn(0, TEPS)
    first = engine.handle_packet(1, syn, Direction.INBOUND, 0.5)
    again = engine.handle_packet(2, syn, Direction.INBOUND, 1.0)   # retransmitted SYN
    assert first.data == again.data and first.verdict is Verdict.ACCEPT
    synack = engine.handle_packet(3, stack_syn_ack(0), Direction.OUTBOUND, 1.0)
    assert synack.verdict is Verdict.ACCEPT and b"\x45" in synack.data[40:]
    from tcpcryptd.packet.tcp import TCPPacket
    pkt = TCPPacket.parse(syn)
    far = build(4, pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.seq + 1 + 70000, 0, RST, 0, b"")
    assert engine.handle_packet(4, far, Direction.INBOUND, 1.0).verdict is Verdict.DROP
    assert engine.counters["drops_rst-out-of-window"] == 1
    (record,) = engine._flows.values()
    assert type(record) is HalfOpen and record.syn_sends == 2
    (status,) = engine.flows(2.0)
    assert (status.state, status.role, status.tep, status.age) == (
        "syn-received", "B", "ECDHE_CURVE25519", 2.0)


def _flow_fields(flow: Flow) -> dict:
    skip = {"cold", "eno", "negotiated", "stale", "scheduled"}
    return {name: getattr(flow, name) for name in Flow.__slots__ + ColdState.__slots__
            if name not in skip and not name.startswith(("smap", "rx", "dl_buf", "held"))}


def test_promoted_flow_equals_the_flow_made_at_the_syn():
    """Everything but the record must come out as the full path built it before records."""
    from tcpcryptd.engine.handshake import (
        _negotiate_passive,
        _passive_flow,
        on_local_syn_ack,
        promote,
    )
    from tcpcryptd.packet.tcp import TCPPacket
    config = EngineConfig()
    engine = Engine(config)
    engine.handle_packet(1, flood_syn(0, TEPS), Direction.INBOUND, 0.25)
    engine.handle_packet(2, stack_syn_ack(0), Direction.OUTBOUND, 0.5)
    engine.handle_packet(3, stack_syn_ack(0), Direction.OUTBOUND, 1.5)
    (record,) = engine._flows.values()
    promoted = promote(record)
    syn = TCPPacket.parse(flood_syn(0, TEPS))
    direct = _passive_flow(record.key, syn, _negotiate_passive(config, syn, None), 0.25)
    on_local_syn_ack(direct, TCPPacket.parse(stack_syn_ack(0)), 0.5)
    on_local_syn_ack(direct, TCPPacket.parse(stack_syn_ack(0)), 1.5)
    direct.last_activity = 1.5
    assert _flow_fields(promoted) == _flow_fields(direct)
    assert promoted.eno.encrypting is direct.eno.encrypting is False
    assert promoted.eno._sent_ack_with_eno and direct.eno._sent_ack_with_eno
    assert promoted.negotiated == direct.negotiated
    for name in ("local_option", "peer_option", "outcome", "is_passive"):
        assert getattr(promoted.eno, name) == getattr(direct.eno, name), name


def test_third_segment_promotes_and_the_connection_goes_on():
    pair = Pair()
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A, 0, SYN, options=syn_options()))
    (record,) = b.engine._flows.values()
    assert type(record) is HalfOpen and record.state is State.SYN_RECEIVED
    pair.send(b, b.seg(ISN_B, ISN_A + 1, SYN | ACK, options=syn_options()))
    assert type(next(iter(b.engine._flows.values()))) is HalfOpen
    pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK))
    (flow,) = b.engine._flows.values()
    assert type(flow) is Flow and b.engine._half_open == 0
    pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK | PSH, b"hello"))
    assert stack_bytes(b, ISN_A) == b"hello"
    assert flow.state is State.ENCRYPTED
    # the record's timer entry is dead; the flow has exactly one live entry
    live = [e for e in b.engine._deadlines.heap if e[2].scheduled == e[0]
            and b.engine._flows.get(e[2].key) is e[2]]
    assert [e[2] for e in live] == [flow]


def test_the_daemon_flood_bench_sends_syns_the_engine_tracks():
    """bench.syn_flood's raw SYNs are ENO SYNs a passive engine keeps as records."""
    from bench.syn_flood import _eno_syn
    engine = Engine()
    syn = _eno_syn(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 1024, 0x10000000, 1)
    result = engine.handle_packet(1, syn, Direction.INBOUND, 0.0)
    assert result.verdict is Verdict.ACCEPT and not result.plain
    (record,) = engine._flows.values()
    assert type(record) is HalfOpen and record.tep == TEPS[0]
