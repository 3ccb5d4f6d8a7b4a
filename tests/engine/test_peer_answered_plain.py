"""The kernel's word that the peer answered our ENO SYN without ENO (daemon/nftables.py):
the engine forgets exactly the syn-sent flow of that connection (RFC 8547 §4.6)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _hand import ACK, ISN_A, ISN_B, SYN, Pair, TCPPacket, syn_options  # noqa: E402


def _syn_sent() -> tuple[Pair, tuple]:
    pair = Pair()
    syn = pair.a.seg(ISN_A, 0, SYN, options=syn_options())
    pair.send(pair.a, syn)
    return pair, TCPPacket.parse(syn).flow_key()


def test_a_syn_sent_flow_is_forgotten_without_counting():
    pair, key = _syn_sent()
    engine = pair.a.engine
    assert [flow.state for flow in engine.flows()] == ["syn-sent"]
    counters = dict(engine.counters)
    result = engine.peer_answered_plain(key, 1.0)
    assert engine.flows() == [] and engine.next_deadline() is None
    # the kernel counted it (fallback_no-eno); the engine must not count it again
    assert dict(engine.counters) == counters
    assert not (result.releases or result.transmit or result.events)


def test_a_flow_that_saw_its_syn_ack_or_another_key_is_left_alone():
    pair, key = _syn_sent()
    engine = pair.a.engine
    other = (key[0], key[1], key[2] + 1, key[3], key[4])
    engine.peer_answered_plain(other, 1.0)
    assert [flow.state for flow in engine.flows()] == ["syn-sent"]
    pair.send(pair.b, pair.b.seg(ISN_B, ISN_A + 1, SYN | ACK, options=syn_options()))
    state = [flow.state for flow in engine.flows()]
    assert state and state != ["syn-sent"]
    engine.peer_answered_plain(key, 2.0)
    assert [flow.state for flow in engine.flows()] == state


def test_a_secret_offered_to_a_peer_that_answered_plain_counts_as_declined():
    """The kernel decided the SYN-ACK, so the daemon never saw it: forgetting the record
    still counts the secret its SYN offered as declined (RFC 8548 §3.5), as a SYN-ACK
    without ENO that the daemon sees does; the secret is gone from the cache either way."""
    pair = Pair()
    pair.handshake()
    pair.send(pair.a, pair.a.seg(ISN_A + 1, ISN_B + 1, ACK, b"x"))
    pair.a.port += 1    # a second connection to the same peer offers the cached secret
    syn = pair.a.seg(ISN_A + 5000, 0, SYN, options=syn_options())
    pair.send(pair.a, syn, deliver=False)
    key = TCPPacket.parse(syn).flow_key()
    engine = pair.a.engine
    assert engine._flows[key].resume_entry is not None      # the SYN offered the secret
    assert engine.counters["resume_declined"] == 0
    engine.peer_answered_plain(key, 1.0)
    assert engine.counters["resume_declined"] == 1
    assert [flow for flow in engine.flows() if flow.state == "syn-sent"] == []
