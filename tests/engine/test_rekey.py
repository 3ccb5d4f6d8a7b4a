"""Rekeying (RFC 8548 §3.8) and keep-alive (§3.9) of the engine, packet by packet.

Two engines back to back (tests/engine/_hand.py), each local stack played by hand: the rekey
bit on the wire, the peer's immediate answer, the generations and the keys each engine
keeps, the ``Rekeyed`` events, and the local stack's TCP keep-alive turned into an
authenticated empty-frame rekey.
"""

from __future__ import annotations

from _hand import ACK, ISN_A, ISN_B, M32, PSH, EngineConfig, Pair, TCPPacket, stack_bytes

from tcpcryptd.core.constants import INIT1_MAGIC, INIT2_MAGIC
from tcpcryptd.core.frame import CONTROL_REKEY, FRAME_OVERHEAD
from tcpcryptd.engine.events import Rekeyed

INIT1_LEN = 79   # X25519 with three ciphers
INIT2_LEN = 74


def _flow(host):
    (flow,) = host.engine._flows.values()
    return flow


def _frames(wire: list[bytes], sport: int) -> list[tuple[int, bool, int]]:
    """(wire seq, rekey bit, length) of each frame segment ``sport`` sent, in order."""
    out = []
    inits = {INIT1_MAGIC.to_bytes(4, "big"), INIT2_MAGIC.to_bytes(4, "big")}
    for raw in wire:
        pkt = TCPPacket.parse(raw)
        if (pkt.sport == sport and len(pkt.payload) >= FRAME_OVERHEAD
                and bytes(pkt.payload[:4]) not in inits):
            out.append((pkt.seq, bool(pkt.payload[0] & CONTROL_REKEY), len(pkt.payload)))
    return out


def _rekeyed(host) -> list[Rekeyed]:
    return [e for e in host.events if isinstance(e, Rekeyed)]


def test_byte_limit_starts_a_generation_and_the_peer_answers_at_once():
    config = EngineConfig(rekey_bytes=100)
    pair = Pair(config, config)
    pair.handshake()
    a, b = pair.a, pair.b
    # A's wire stream: Init1 (79) then frames of 60 + 20; the limit counts from Init1's end
    # (generation 0 begins with the keys), so the second frame's seal is still below it
    for k in range(4):
        pair.send(a, a.seg(ISN_A + 1 + 60 * k, ISN_B + 1, ACK | PSH, bytes([65 + k]) * 60))
    assert stack_bytes(b, ISN_A) == b"A" * 60 + b"B" * 60 + b"C" * 60 + b"D" * 60
    frames_a = _frames(pair.wire, a.port)
    # frames 1-2 sealed under generation 0 (80 + 80 wire bytes reach 100 at the third)
    assert [bit for _, bit, _ in frames_a] == [False, False, True, False]
    # B answered the rekey frame at once with an empty frame with rekey = 1 (§3.8)
    frames_b = _frames(pair.wire, b.port)
    assert frames_b == [((ISN_B + 1 + INIT2_LEN) & M32, True, FRAME_OVERHEAD)]
    fa, fb = _flow(a), _flow(b)
    for session in (fa.session, fb.session):
        assert (session.local_generation, session.remote_generation,
                session.send_generation) == (1, 1, 1)
        # generation 0 is gone: nothing under it can be sent or received any more
        assert session.schedule.lowest_generation == 1
    # both engines report generation 1 once, with the same keys (the key log's lines)
    (ea,), (eb,) = _rekeyed(a), _rekeyed(b)
    assert ea.generation == eb.generation == 1
    assert (ea.k_ab, ea.k_ba) == (eb.k_ab, eb.k_ba) == fa.session.traffic_keys(1)
    assert ea.session_id == eb.session_id == fa.session.session_id
    assert a.engine.counters["rekeys"] == b.engine.counters["rekeys"] == 1
    # status reports the generations of both directions (tcpcryptd status, generation_*)
    for flow in (fa, fb):
        status = flow.status(0.0)
        assert (status.generation_out, status.generation_in) == (1, 1)
    # B's empty frame never reached A's stack as data, and A's stack saw no byte of it
    assert stack_bytes(a, ISN_B) == b""


def test_retransmission_across_a_rekey_replays_the_first_bytes():
    """A range sent under generation 0 and resent after the rekey leaves with its original
    wire bytes (§3.8: the same key as the first transmission; §3.6: no second seal)."""
    config = EngineConfig(rekey_bytes=100)
    pair = Pair(config, config)
    pair.handshake()
    a, b = pair.a, pair.b
    _, first = pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK | PSH, b"x" * 90), deliver=False)
    pair.send(a, a.seg(ISN_A + 91, ISN_B + 1, ACK | PSH, b"y" * 90), deliver=False)
    assert _flow(a).session.send_generation == 1
    # the stack retransmits both ranges as one segment: the stored frames, as first sent
    _, again = pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK | PSH, b"x" * 90 + b"y" * 90),
                         deliver=False)
    replay = b"".join(bytes(TCPPacket.parse(raw).payload) for raw in again)
    assert replay.startswith(bytes(TCPPacket.parse(first[0]).payload))
    assert len(replay) == 2 * (90 + FRAME_OVERHEAD)
    for raw in again:
        pair.arrive(b, raw)
    assert stack_bytes(b, ISN_A) == b"x" * 90 + b"y" * 90
    assert a.engine.counters["aborts"] == b.engine.counters["aborts"] == 0


def test_interval_starts_a_generation_with_the_next_data():
    config = EngineConfig(rekey_interval=10.0, rekey_bytes=0)
    pair = Pair(config, config)
    pair.handshake()
    a, b = pair.a, pair.b
    pair.send(b, b.seg(ISN_B + 1, ISN_A + 1, ACK | PSH, b"early"))
    pair.now = 11.0
    pair.send(b, b.seg(ISN_B + 6, ISN_A + 1, ACK | PSH, b"late"))
    assert [bit for _, bit, _ in _frames(pair.wire, b.port)] == [False, True]
    assert [bit for _, bit, _ in _frames(pair.wire, a.port)] == [True]   # A's answer
    assert stack_bytes(a, ISN_B) == b"earlylate"
    assert [e.generation for e in _rekeyed(a)] == [e.generation for e in _rekeyed(b)] == [1]
    # the limit counts from the generation's start: not again before 21 s
    pair.now = 20.0
    pair.send(b, b.seg(ISN_B + 10, ISN_A + 1, ACK | PSH, b"more"))
    assert _flow(b).session.local_generation == 1


def test_both_ends_rekeying_at_once_need_no_answer():
    """Each end starts generation 1 on its own data before the other's rekey frame arrives:
    the remote generation then only catches up (§3.8), no empty frame is sent."""
    config = EngineConfig(rekey_bytes=50)
    pair = Pair(config, config)
    pair.handshake()
    a, b = pair.a, pair.b
    _, wa = pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK | PSH, b"a" * 40), deliver=False)
    _, wb = pair.send(b, b.seg(ISN_B + 1, ISN_A + 1, ACK | PSH, b"b" * 40), deliver=False)
    _, wa2 = pair.send(a, a.seg(ISN_A + 41, ISN_B + 1, ACK | PSH, b"c" * 40), deliver=False)
    _, wb2 = pair.send(b, b.seg(ISN_B + 41, ISN_A + 1, ACK | PSH, b"d" * 40), deliver=False)
    for raw in wa + wa2:
        pair.arrive(b, raw)
    for raw in wb + wb2:
        pair.arrive(a, raw)
    assert stack_bytes(b, ISN_A) == b"a" * 40 + b"c" * 40
    assert stack_bytes(a, ISN_B) == b"b" * 40 + b"d" * 40
    for host in (a, b):
        session = _flow(host).session
        assert (session.local_generation, session.remote_generation) == (1, 1)
        assert [e.generation for e in _rekeyed(host)] == [1]
        assert len(_frames(pair.wire, host.port)) == 2   # no empty answer frame


def test_keepalive_becomes_an_authenticated_rekey_probe():
    """The stack's keep-alive (snd.una - 1, one garbage byte) leaves as an empty frame with
    rekey = 1 (§3.9); the peer's answering rekey frame reaches the stack as an ACK."""
    pair = Pair()
    pair.handshake()
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK, b"k" * 10))
    pair.send(b, b.seg(ISN_B + 1, ISN_A + 11, ACK))
    a_stack = len(a.to_stack)
    result, (probe,) = pair.send(a, a.seg(ISN_A + 10, ISN_B + 1, ACK, b"k"), deliver=False)
    assert result.verdict.name == "DROP"   # the stack's segment itself never leaves
    pkt = TCPPacket.parse(probe)
    assert len(pkt.payload) == FRAME_OVERHEAD and pkt.payload[0] & CONTROL_REKEY
    assert pkt.seq == (ISN_A + 1 + INIT1_LEN + 30) & M32   # a new frame at the wire end
    pair.arrive(b, probe)
    # B answered with its own rekey frame; A's stack got an ACK of everything it sent
    (answer,) = _frames(pair.wire, b.port)
    assert answer[1] and answer[2] == FRAME_OVERHEAD
    (ack,) = a.to_stack[a_stack:]
    assert ack.ack == (ISN_A + 11) & M32 and not len(ack.payload)
    assert stack_bytes(b, ISN_A) == b"k" * 10 and stack_bytes(a, ISN_B) == b""
    assert a.engine.counters["keepalive_rekeys"] == 1
    # the next keep-alive (no data this time) is a second generation
    pair.send(a, a.seg(ISN_A + 10, ISN_B + 1, ACK))
    for host in (a, b):
        assert _flow(host).session.local_generation == 2
        assert [e.generation for e in _rekeyed(host)] == [1, 2]


def test_unanswered_keepalive_probe_is_not_repeated_and_gives_up():
    """While the empty-frame rekey waits for its answer no second one starts (§3.8); the
    engine retransmits it and aborts when the peer never answers."""
    config = EngineConfig(max_retransmits=2)
    pair = Pair(config, config)
    pair.handshake()
    a = pair.a
    _, (probe,) = pair.send(a, a.seg(ISN_A, ISN_B + 1, ACK), deliver=False)
    result, wire = pair.send(a, a.seg(ISN_A, ISN_B + 1, ACK), deliver=False)
    assert result.verdict.name == "DROP" and wire == []
    assert a.engine.counters["keepalive_waiting"] == 1
    assert _flow(a).session.local_generation == 1
    resent = []
    for _ in range(3):
        result = a.engine.handle_timer(a.engine.next_deadline())
        resent += [t.data for t in result.transmit]
    assert bytes(TCPPacket.parse(resent[0]).payload) == bytes(TCPPacket.parse(probe).payload)
    assert a.engine.counters["aborts_retransmit-limit"] == 1


def test_zero_window_probe_stays_a_plain_probe():
    """A probe while the peer's window is closed is no keep-alive: it passes, translated,
    without payload (the stack has data waiting; an empty frame would not help)."""
    pair = Pair()
    pair.handshake()
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK, b"z" * 10))
    pair.send(b, b.seg(ISN_B + 1, ISN_A + 11, ACK, window=0))
    _, (probe,) = pair.send(a, a.seg(ISN_A + 10, ISN_B + 1, ACK, b"z"), deliver=False)
    pkt = TCPPacket.parse(probe)
    assert not len(pkt.payload)
    assert pkt.seq == (ISN_A + 1 + INIT1_LEN + 30 - 1) & M32
    assert _flow(a).session.local_generation == 0


def test_keepalive_announces_a_pending_generation_without_starting_another():
    """A generation started by data that never got sealed (the segment was dropped) is
    announced by the keep-alive's empty frame: one new generation, not two."""
    config = EngineConfig(rekey_bytes=50)
    pair = Pair(config, config)
    pair.handshake()
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK | PSH, b"p" * 40))
    pair.send(b, b.seg(ISN_B + 1, ISN_A + 41, ACK))
    # new data beyond a gap: the limit is reached, generation 1 starts, the segment is dropped
    result, wire = pair.send(a, a.seg(ISN_A + 51, ISN_B + 1, ACK | PSH, b"q" * 10))
    assert wire == [] and a.engine.counters["drops_local-gap"] == 1
    assert _flow(a).session.rekey_pending
    pair.send(a, a.seg(ISN_A + 40, ISN_B + 1, ACK))   # the stack's keep-alive
    for host in (a, b):
        session = _flow(host).session
        assert (session.local_generation, session.remote_generation) == (1, 1)
        assert [e.generation for e in _rekeyed(host)] == [1]
    assert [bit for _, bit, length in _frames(pair.wire, a.port)] == [False, True]


def test_keepalive_after_our_finp_frame_stays_a_tcp_keepalive():
    """No frame may follow the FINp frame (§3.7): a probe at snd.una - 1 then passes as a
    plain TCP keep-alive (translated, no payload), which §3.9 allows.  The same after the
    peer's FINp frame: the peer would not answer a rekey (§3.8)."""
    pair = Pair()
    pair.handshake()
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK | PSH, b"f" * 10))
    pair.send(b, b.seg(ISN_B + 1, ISN_A + 11, ACK))
    pair.send(a, a.seg(ISN_A + 11, ISN_B + 1, ACK | 0x01))   # bare FIN: an empty FINp frame
    assert _flow(a).session.fin_sent
    result, (probe,) = pair.send(a, a.seg(ISN_A + 10, ISN_B + 1, ACK), deliver=False)
    pkt = TCPPacket.parse(probe)
    assert not len(pkt.payload) and _flow(a).session.local_generation == 0
    assert a.engine.counters["keepalive_rekeys"] == 0
    # B, which received A's FINp frame, probes in plain TCP as well
    pair.send(b, b.seg(ISN_B + 1, ISN_A + 12, ACK | PSH, b"g" * 5))
    pair.send(a, a.seg(ISN_A + 12, ISN_B + 6, ACK))
    result, (probe,) = pair.send(b, b.seg(ISN_B + 5, ISN_A + 12, ACK), deliver=False)
    assert not len(TCPPacket.parse(probe).payload)
    assert b.engine.counters["keepalive_rekeys"] == 0 and _flow(b).rx_finp
