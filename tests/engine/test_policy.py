"""Encryption policy: rule matching (most specific wins) and the engine's skip / require."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _hand import A_IP, A_PORT, B_IP, B_PORT, ISN_A, ISN_B, M32, Pair, syn_options  # noqa: E402

from tcpcryptd.engine import Direction, Engine, EngineConfig, Verdict  # noqa: E402
from tcpcryptd.engine.policy import Mode, Policy, Rule, resets  # noqa: E402
from tcpcryptd.packet import options as tcp_options  # noqa: E402
from tcpcryptd.packet.tcp import ACK, PSH, RST, SYN, TCPPacket  # noqa: E402

NET = ipaddress.ip_network


def packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


RULES = (
    Rule(Mode.REQUIRE, peer=NET("10.0.0.0/8")),
    Rule(Mode.SKIP, peer=NET("10.1.0.0/16")),
    Rule(Mode.PREFER, peer=NET("10.1.2.3/32")),
    Rule(Mode.SKIP, remote_port=443),
    Rule(Mode.REQUIRE, peer=NET("192.0.2.0/24"), remote_port=443),
    Rule(Mode.REQUIRE, local_port=22),
    Rule(Mode.SKIP, peer=NET("fd00::/16")),
)


@pytest.mark.parametrize("remote, local_port, remote_port, expected", [
    ("10.9.9.9", 40000, 80, Mode.REQUIRE),       # /8
    ("10.1.9.9", 40000, 80, Mode.SKIP),          # /16 beats /8
    ("10.1.2.3", 40000, 80, Mode.PREFER),        # /32 beats /16
    ("10.1.2.3", 40000, 443, Mode.SKIP),         # a port beats any prefix
    ("192.0.2.7", 40000, 443, Mode.REQUIRE),     # a port and a prefix beat the port alone
    ("198.51.100.1", 40000, 443, Mode.SKIP),
    ("198.51.100.1", 22, 50000, Mode.REQUIRE),   # local port
    ("198.51.100.1", 40000, 22, Mode.PREFER),    # a remote port 22 is not a local one
    ("172.16.0.1", 40000, 80, Mode.PREFER),      # no rule: the default
])
def test_most_specific_rule_wins_v4(remote, local_port, remote_port, expected):
    assert Policy(RULES).mode(4, packed(remote), local_port, remote_port) is expected


def test_prefixes_match_their_own_ip_version_only():
    policy = Policy(RULES, default=Mode.REQUIRE)
    assert policy.mode(6, packed("fd00::1"), 40000, 80) is Mode.SKIP
    assert policy.mode(6, packed("fe80::1"), 40000, 80) is Mode.REQUIRE    # default
    # 10.0.0.0/8 as the first bytes of an IPv6 address is not 10.0.0.0/8
    assert policy.mode(6, packed("a00::1"), 40000, 80) is Mode.REQUIRE
    assert Policy(RULES).mode(6, packed("a00::1"), 40000, 80) is Mode.PREFER


def test_equally_specific_rules_keep_their_order():
    first, second = Rule(Mode.SKIP, local_port=22), Rule(Mode.REQUIRE, remote_port=22)
    assert Policy((first, second)).mode(4, packed("1.2.3.4"), 22, 22) is Mode.SKIP
    assert Policy((second, first)).mode(4, packed("1.2.3.4"), 22, 22) is Mode.REQUIRE


def test_require_flag_only_when_some_connection_may_be_required():
    assert not Policy().require and not Policy((Rule(Mode.SKIP, local_port=1),)).require
    assert Policy((Rule(Mode.REQUIRE, local_port=1),)).require
    assert Policy(default=Mode.REQUIRE).require


def test_policy_of_a_packet_uses_the_connection_view():
    policy = Policy((Rule(Mode.SKIP, peer=NET("10.0.0.2/32"), local_port=A_PORT),))
    out = TCPPacket.parse(Pair().a.seg(ISN_A, 0, SYN))
    assert policy.of_packet(out, outbound=True) is Mode.SKIP
    back = TCPPacket.parse(Pair().b.seg(ISN_B, ISN_A + 1, SYN | ACK))
    assert policy.of_packet(back, outbound=False) is Mode.SKIP
    assert policy.of_packet(back, outbound=True) is Mode.PREFER


# ---- RSTs -------------------------------------------------------------------------------


def test_resets_of_a_syn_ack_end_both_sides_at_their_expected_numbers():
    syn_ack = TCPPacket.parse(Pair().b.seg(ISN_B, ISN_A + 1, SYN | ACK))
    to_peer, to_stack = resets(syn_ack, outbound=False)
    assert to_peer.direction is Direction.OUTBOUND and to_stack.direction is Direction.INBOUND
    peer_rst, stack_rst = TCPPacket.parse(to_peer.data), TCPPacket.parse(to_stack.data)
    # to B (sender): <SEQ=SEG.ACK><CTL=RST>, from A's address
    assert (peer_rst.src, peer_rst.dst, peer_rst.sport, peer_rst.dport) == (A_IP, B_IP, A_PORT,
                                                                             B_PORT)
    assert peer_rst.flags == RST and peer_rst.seq == (ISN_A + 1) & M32
    # to A's stack (SYN-SENT): acknowledges its SYN, so it is taken
    assert (stack_rst.src, stack_rst.dst) == (B_IP, A_IP)
    assert stack_rst.flags == RST | ACK and stack_rst.ack == (ISN_A + 1) & M32
    assert stack_rst.seq == ISN_B + 1


def test_resets_of_a_syn_answer_only_its_sender():
    syn = TCPPacket.parse(Pair().a.seg(ISN_A, 0, SYN))
    [to_stack] = resets(syn, outbound=True)
    rst = TCPPacket.parse(to_stack.data)
    assert to_stack.direction is Direction.INBOUND
    assert rst.flags == RST | ACK and rst.ack == (ISN_A + 1) & M32 and rst.seq == 0
    assert not resets(TCPPacket.parse(Pair().a.seg(ISN_A, 0, RST)), outbound=True)


def test_a_peers_syn_reaches_the_stack_and_its_syn_ack_is_reset():
    """The passive side: the peer's SYN without ENO passes (unmarked: never offloaded),
    the stack's answer is dropped and both ends get a RST at their expected numbers."""
    engine = Engine(config(default=Mode.REQUIRE))
    pair = Pair()
    a, b = pair.a, pair.b
    syn = a.seg(ISN_A, 0, SYN, options=syn_options())
    result = engine.handle_packet(1, syn, Direction.INBOUND, 0.0)
    assert result.verdict is Verdict.ACCEPT and not result.plain and not result.transmit
    assert engine.counters["fallback_no-eno"] == 1 and engine.flows() == []
    syn_ack = b.seg(ISN_B, ISN_A + 1, SYN | ACK, options=syn_options())
    result = engine.handle_packet(2, syn_ack, Direction.OUTBOUND, 0.0)
    assert result.verdict is Verdict.DROP and not result.plain
    to_stack, to_peer = result.transmit
    assert to_stack.direction is Direction.INBOUND and to_peer.direction is Direction.OUTBOUND
    stack_rst, peer_rst = TCPPacket.parse(to_stack.data), TCPPacket.parse(to_peer.data)
    assert stack_rst.flags == RST and stack_rst.seq == (ISN_A + 1) & M32
    assert (stack_rst.src, stack_rst.dst) == (A_IP, B_IP)
    assert peer_rst.flags == RST | ACK and peer_rst.seq == ISN_B + 1
    assert peer_rst.ack == (ISN_A + 1) & M32 and (peer_rst.src, peer_rst.dst) == (B_IP, A_IP)
    assert engine.counters["require_resets"] == 1


# ---- the engine -------------------------------------------------------------------------


def config(*rules: Rule, default: Mode = Mode.PREFER, **kwargs) -> EngineConfig:
    return EngineConfig(policy=Policy(rules, default), **kwargs)


def test_skip_sends_no_eno_and_the_peer_daemon_leaves_it_plain():
    pair = Pair(config_a=config(Rule(Mode.SKIP, remote_port=B_PORT)))
    a, b = pair.a, pair.b
    syn = a.seg(ISN_A, 0, SYN, options=syn_options())
    r, (wire,) = pair.send(a, syn)
    assert wire == syn and r.plain           # no ENO option added
    assert a.engine.counters["plain_policy-skip"] == 1 and a.engine.flows() == []
    data = a.seg(ISN_A + 1, ISN_B + 1, ACK | PSH, b"in the clear")
    _, (wire,) = pair.send(a, data)
    assert wire == data and b.engine.flows() == []


def test_skip_on_the_passive_side_answers_without_eno():
    pair = Pair(config_b=config(Rule(Mode.SKIP, local_port=B_PORT)))
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A, 0, SYN, options=syn_options()))
    assert tcp_options.eno_options(b.to_stack[-1].options) != []   # the SYN passed untouched
    assert b.engine.counters["plain_policy-skip"] == 1 and b.engine.flows() == []
    syn_ack = b.seg(ISN_B, ISN_A + 1, SYN | ACK, options=syn_options())
    _, (wire,) = pair.send(b, syn_ack)
    assert wire == syn_ack                    # B's stack knows no ENO: plain (RFC 8547 §4.6)
    assert a.engine.counters["fallback_no-eno"] == 1 and a.engine.flows() == []


def test_require_resets_a_peer_without_eno_and_counts_it():
    pair = Pair(config_a=config(Rule(Mode.REQUIRE, peer=NET("10.0.0.0/24"))),
                config_b=EngineConfig(enabled=False))
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A, 0, SYN, options=syn_options()))
    r, wire = pair.send(b, b.seg(ISN_B, ISN_A + 1, SYN | ACK, options=syn_options()),
                        deliver=False)
    arrival = pair.arrive(a, wire[0])
    assert arrival.verdict is Verdict.DROP and not arrival.plain
    assert a.engine.counters["require_resets"] == 1
    assert a.engine.flows() == []
    to_stack = a.to_stack[-1]
    assert to_stack.flags == RST | ACK and to_stack.ack == (ISN_A + 1) & M32
    rst = TCPPacket.parse(pair.wire[-1])
    assert rst.flags == RST and rst.seq == (ISN_A + 1) & M32 and rst.sport == A_PORT


def test_require_lets_an_encrypted_connection_through():
    pair = Pair(config_a=config(default=Mode.REQUIRE), config_b=config(default=Mode.REQUIRE))
    pair.handshake()
    assert [flow.state for flow in pair.a.engine.flows()] == ["encrypted"]
    assert [flow.state for flow in pair.b.engine.flows()] == ["encrypted"]
    assert "require_resets" not in pair.a.engine.counters


def test_require_resets_what_would_be_left_plain_for_any_reason():
    """Encryption disabled, the flow limit, a plain connection the engine does not know."""
    engine = Engine(config(default=Mode.REQUIRE, enabled=False))
    pair = Pair()
    syn = pair.a.seg(ISN_A, 0, SYN, options=syn_options())
    result = engine.handle_packet(1, syn, Direction.OUTBOUND, 0.0)
    assert result.verdict is Verdict.DROP and not result.plain
    [rst] = [TCPPacket.parse(t.data) for t in result.transmit]
    assert rst.flags == RST | ACK and rst.ack == (ISN_A + 1) & M32
    unknown = pair.a.seg(ISN_A + 1, ISN_B + 1, ACK | PSH, b"plain")
    result = engine.handle_packet(2, unknown, Direction.OUTBOUND, 0.0)
    assert result.verdict is Verdict.DROP and len(result.transmit) == 2
    # a RST of an unknown connection passes (nothing answers a RST), not offloaded
    result = engine.handle_packet(3, pair.a.seg(ISN_A + 1, 0, RST), Direction.OUTBOUND, 0.0)
    assert result.verdict is Verdict.ACCEPT and not result.transmit and not result.plain
    assert engine.counters["require_resets"] == 2


def test_require_for_other_peers_leaves_this_fallback_plain():
    pair = Pair(config_a=config(Rule(Mode.REQUIRE, peer=NET("192.0.2.0/24"))),
                config_b=EngineConfig(enabled=False))
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A, 0, SYN, options=syn_options()))
    syn_ack = b.seg(ISN_B, ISN_A + 1, SYN | ACK, options=syn_options())
    _, (wire,) = pair.send(b, syn_ack)
    assert wire == syn_ack and a.to_stack[-1].flags == SYN | ACK
    assert a.engine.counters["fallback_no-eno"] == 1 and "require_resets" not in a.engine.counters
