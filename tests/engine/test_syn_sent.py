"""Active ENO flows before the peer's SYN-ACK: the compact :class:`SynSent` record of host A.

* the SYN leaves with our SYN-form option and a full checksum, and the engine keeps a record,
  not a :class:`Flow`;
* a SYN-ACK without ENO, the stack's retransmitted SYNs and other segments, the peer's RSTs
  and the handshake timeout are handled from the record (RFC 8547 §4.6, RFC 9293 §3.10.7.3);
* a SYN-ACK with ENO promotes it to a :class:`Flow` that equals the one the SYN made before
  records existed, and the connection goes on encrypted.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _hand import (  # noqa: E402
    ACK,
    ISN_A,
    ISN_B,
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
)

from tcpcryptd.core.negotiation import ENOEndpoint, Role, TcpcryptValidity  # noqa: E402
from tcpcryptd.engine.events import FellBack  # noqa: E402
from tcpcryptd.engine.flow import ColdState, Flow, State, SynSent  # noqa: E402
from tcpcryptd.engine.handshake import (  # noqa: E402
    _active_syn_option,
    _record_syn,
    promote_syn_sent,
)
from tcpcryptd.packet.checksum import tcp_checksum  # noqa: E402

M32 = 0xFFFFFFFF


def _syn(pair: Pair, seq: int = ISN_A, tsval: int = 1000) -> bytes:
    return pair.a.seg(seq, 0, SYN, options=syn_options(tsval=tsval))


def _record(pair: Pair) -> SynSent:
    (record,) = pair.a.engine._flows.values()
    assert type(record) is SynSent
    return record


def _plain_syn_ack(pair: Pair, ack: int = ISN_A + 1) -> bytes:
    return pair.b.seg(ISN_B, ack, SYN | ACK, options=syn_options(tsval=2000, tsecr=1000))


def test_the_syn_gets_our_option_and_a_full_checksum_and_leaves_a_record() -> None:
    pair = Pair()
    syn = _syn(pair)
    # as the stack hands it over for the NIC: the checksum field holds the pseudo-header sum
    pkt = TCPPacket.parse(syn)
    pseudo = tcp_checksum(pkt.src, pkt.dst, bytes(len(syn) - 20))
    partial = syn[:36] + (~pseudo & 0xFFFF).to_bytes(2, "big") + syn[38:]
    result = pair.a.engine.handle_packet(1, partial, Direction.OUTBOUND, 0.5,
                                         checksum_partial=True)
    assert result.verdict is Verdict.ACCEPT and not result.plain
    out = TCPPacket.parse(result.data)
    option = _active_syn_option(tuple(EngineConfig().teps)).raw
    assert tcp_options.eno_options(out.options) == [option]
    assert tcp_checksum(out.src, out.dst, result.data[20:]) == 0
    assert result.data == pair.a.engine.handle_packet(2, syn, Direction.OUTBOUND, 0.5).data
    record = _record(pair)
    assert (record.local_isn, record.syn_option, record.syn_sends, record.created) == (
        ISN_A, option, 2, 0.5)
    (status,) = pair.a.engine.flows(2.0)
    assert (status.state, status.role, status.tep, status.age) == ("syn-sent", "A", "", 1.5)


def test_a_syn_without_room_for_the_option_goes_plain_and_leaves_no_record() -> None:
    pair = Pair()
    full = syn_options() + b"\x01" * 16 + b"\x1e\x04\x00\x00"   # 40 option bytes
    result = pair.send(pair.a, pair.a.seg(ISN_A, 0, SYN, options=full), deliver=False)[0]
    assert result.verdict is Verdict.ACCEPT and result.plain and result.data is None
    assert pair.a.engine.counters["plain_option-space"] == 1 and pair.a.engine._flows == {}


def test_a_syn_ack_without_eno_falls_back_from_the_record() -> None:
    pair = Pair()
    pair.send(pair.a, _syn(pair), deliver=False)
    result = pair.arrive(pair.a, _plain_syn_ack(pair))
    assert result.verdict is Verdict.ACCEPT and result.plain and result.data is None
    assert pair.a.engine._flows == {}
    counters = pair.a.engine.counters
    assert (counters["fallback"], counters["fallback_no-eno"]) == (1, 1)
    assert counters["resume_declined"] == 0
    assert [type(e) for e in result.events] == [FellBack]
    assert result.events[0].reason == "no-eno"


def test_a_declined_resumption_offer_is_counted_from_the_record() -> None:
    pair = Pair()
    pair.handshake()
    pair.send(pair.a, pair.a.seg(ISN_A + 1, ISN_B + 1, ACK | PSH, b"x"))
    # a second connection to the same peer offers the cached secret
    pair.a.port += 1
    pair.send(pair.a, _syn(pair, ISN_A + 5000), deliver=False)
    record = next(f for f in pair.a.engine._flows.values() if type(f) is SynSent)
    assert record.resume_entry is not None
    entry = record.resume_entry
    pair.b.port, pair.b.peer_port = pair.b.port, pair.a.port
    pair.arrive(pair.a, pair.b.seg(ISN_B, ISN_A + 5001, SYN | ACK, options=syn_options()))
    assert pair.a.engine.counters["resume_declined"] == 1
    assert pair.a.engine.counters["fallback_no-eno"] == 1
    assert record.resume_entry is None and pair.a.engine._ctx.sessions.for_peer(
        (4, pair.a.ip, pair.a.peer_ip), 0.0) is not entry


def test_retransmitted_syns_repeat_the_option_from_the_record() -> None:
    pair = Pair()
    first = pair.send(pair.a, _syn(pair), deliver=False)[0]
    again = pair.send(pair.a, _syn(pair, tsval=2000), deliver=False)[0]
    assert again.verdict is Verdict.ACCEPT and not again.plain
    assert (tcp_options.eno_options(TCPPacket.parse(again.data).options)
            == tcp_options.eno_options(TCPPacket.parse(first.data).options))
    assert _record(pair).syn_sends == 2
    # a SYN with another ISN replaces the record outright (RFC 9293 §3.10.7.4)
    pair.send(pair.a, _syn(pair, ISN_A + 99), deliver=False)
    assert _record(pair).local_isn == ISN_A + 99 and _record(pair).syn_sends == 1
    assert pair.a.engine.counters["replaced_syn-sent"] == 1
    # the stack's data before the SYN-ACK never leaves in plaintext
    data = pair.send(pair.a, pair.a.seg(ISN_A + 100, 0, ACK | PSH, b"secret"), deliver=False)
    assert data[0].verdict is Verdict.DROP
    assert pair.a.engine.counters["drops_before-established"] == 1
    assert type(_record(pair)) is SynSent


def test_rsts_and_the_timeout_end_the_record() -> None:
    config = EngineConfig()
    pair = Pair(config)
    pair.send(pair.a, _syn(pair), deliver=False)
    # a RST that does not acknowledge our SYN is dropped (RFC 9293 §3.10.7.3)
    wrong = pair.arrive(pair.a, pair.b.seg(0, ISN_A + 7, RST | ACK, options=b""))
    assert wrong.verdict is Verdict.DROP
    assert pair.a.engine.counters["drops_rst-unacceptable"] == 1
    assert type(_record(pair)) is SynSent
    # a SYN-ACK that does not answer our SYN goes to the stack (which resets it)
    assert pair.arrive(pair.a, _plain_syn_ack(pair, ISN_A + 9)).verdict is Verdict.ACCEPT
    assert type(_record(pair)) is SynSent and pair.a.engine.counters["fallback"] == 0
    refused = pair.arrive(pair.a, pair.b.seg(0, ISN_A + 1, RST | ACK, options=b""))
    assert refused.verdict is Verdict.ACCEPT and pair.a.engine._flows == {}
    pair.a.port += 1
    pair.send(pair.a, _syn(pair), deliver=False)
    pair.timer(pair.a, config.handshake_timeout + 1)
    assert pair.a.engine._flows == {} and pair.a.engine.counters["expired_handshake"] == 1


def _flow_fields(flow: Flow) -> dict:
    skip = {"cold", "eno", "scheduled", "smap", "rx", "dl_buf", "held"}
    return {name: getattr(flow, name) for name in Flow.__slots__ + ColdState.__slots__
            if name not in skip}


def test_promoted_flow_equals_the_flow_made_at_the_syn() -> None:
    """Everything the SYN's Flow held before records existed, rebuilt from the record."""
    pair = Pair()
    pair.now = 0.25
    pair.send(pair.a, _syn(pair), deliver=False)
    pair.now = 1.25
    pair.send(pair.a, _syn(pair, tsval=1900), deliver=False)
    record = _record(pair)
    promoted = promote_syn_sent(record)
    syn = TCPPacket.parse(_syn(pair))
    local = _active_syn_option(tuple(EngineConfig().teps))
    direct = Flow(syn.flow_key(), Role.A, ENOEndpoint.active(local), 0.25)
    direct.local_isn = syn.seq
    _record_syn(direct, syn, local=True)
    direct.syn_sends, direct.last_activity = 2, 1.25
    assert _flow_fields(promoted) == _flow_fields(direct)
    for name in ("local_option", "peer_option", "outcome", "is_passive", "_is_valid"):
        assert getattr(promoted.eno, name) == getattr(direct.eno, name), name
    # a resumption offer: only an answer naming its secret is valid (RFC 8548 §3.5)
    record.resume_entry = entry = type("Entry", (), {"resume_id": b"\x01" * 9})()
    assert promote_syn_sent(record).eno._is_valid == TcpcryptValidity(resume_id=entry.resume_id)


def test_a_syn_ack_with_eno_promotes_and_the_connection_is_encrypted() -> None:
    pair = Pair()
    pair.handshake()
    (flow,) = pair.a.engine._flows.values()
    assert type(flow) is Flow
    pair.send(pair.a, pair.a.seg(ISN_A + 1, ISN_B + 1, ACK | PSH, b"hello"))
    assert stack_bytes(pair.b, ISN_A) == b"hello"
    assert flow.state is State.ENCRYPTED and pair.a.engine.counters["encrypted"] == 1
    # the record's timer entry is dead; the flow has exactly one live entry
    engine = pair.a.engine
    live = [e for e in engine._deadlines.heap
            if e[2].scheduled == e[0] and engine._flows.get(e[2].key) is e[2]]
    assert [e[2] for e in live] == [flow]


def test_records_wait_in_creation_order_and_leave_no_timer_entry_behind() -> None:
    """A record's only deadline is its handshake's end: no heap entry, gone with it."""
    config = EngineConfig()
    pair = Pair(config)
    engine = pair.a.engine
    for k in range(300):
        pair.a.port = 30000 + k
        pair.b.peer_port = pair.a.port
        pair.now = k * 0.01
        pair.send(pair.a, _syn(pair), deliver=False)
        if k % 3:
            pair.arrive(pair.a, _plain_syn_ack(pair))   # falls back: forgotten
    assert len(engine._flows) == 100 and engine.counters["fallback_no-eno"] == 200
    assert engine._deadlines.heap == [] and len(engine._deadlines.records) == 100
    # the first record left (k = 0) is the next deadline; they expire in order
    assert engine.next_deadline() == config.handshake_timeout
    pair.timer(pair.a, config.handshake_timeout + 1.0)
    assert engine.counters["expired_handshake"] == 34
    assert engine.next_deadline() == config.handshake_timeout + 1.02
    pair.timer(pair.a, config.handshake_timeout + 3.0)
    assert engine._flows == {} and engine._deadlines.records == {}
    assert engine.next_deadline() is None
