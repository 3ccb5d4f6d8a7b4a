"""Session resumption in the engine (RFC 8548 §3.5), driven by hand between two engines.

Two machines, each an :class:`Engine`; connections between them in both directions, the
local stacks played by hand.  What the simulation scenarios (tests/engine/test_sim.py,
``resume-*``) cannot set up: both ends opening to each other at once, the original host B
opening the resumed connection, a resumption SYN replayed after its secret was used, the
cache's bounds.
"""

from __future__ import annotations

import pytest
from _hand import ACK, SYN, EngineConfig, Host, TCPPacket, syn_options, tcp_options

from tcpcryptd.core.constants import INIT1_MAGIC, INIT2_MAGIC
from tcpcryptd.core.eno import parse_syn_option
from tcpcryptd.engine import Direction, Engine, Verdict
from tcpcryptd.engine.events import SessionEstablished

IP_X, IP_Y = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])


class Net:
    """Machines X and Y, one engine each; a packet from a connection end goes through its
    machine's engine, across the wire (unless held back) and through the other engine to
    the end it is addressed to."""

    def __init__(self, config_x: EngineConfig | None = None,
                 config_y: EngineConfig | None = None) -> None:
        self.engines = {IP_X: Engine(config_x or EngineConfig()),
                        IP_Y: Engine(config_y or EngineConfig())}
        self.ends: dict[tuple[bytes, int], Host] = {}
        self.now = 0.0
        self.ids = 0
        self.wire: list[bytes] = []

    def end(self, ip: bytes, port: int, peer_ip: bytes, peer_port: int) -> Host:
        host = Host(f"{ip[-1]}:{port}", self.engines[ip], ip, port, peer_ip, peer_port)
        self.ends[(ip, port)] = host
        return host

    def send(self, host: Host, data: bytes, *, deliver: bool = True) -> list[bytes]:
        self.ids += 1
        result = host.engine.handle_packet(self.ids, data, Direction.OUTBOUND, self.now)
        host.events.extend(result.events)
        assert result.verdict is Verdict.ACCEPT, result
        out = [result.data if result.data is not None else data]
        out += [t.data for t in result.transmit if t.direction is Direction.OUTBOUND]
        if deliver:
            for packet in out:
                self.arrive(packet)
        return out

    def arrive(self, data: bytes) -> None:
        self.wire.append(data)
        pkt = TCPPacket.parse(data)
        host = self.ends[(pkt.dst, pkt.dport)]
        self.ids += 1
        result = host.engine.handle_packet(self.ids, data, Direction.INBOUND, self.now)
        host.events.extend(result.events)
        if result.verdict is Verdict.ACCEPT:
            host.to_stack.append(TCPPacket.parse(result.data if result.data is not None else data))
        for transmit in result.transmit:
            if transmit.direction is Direction.OUTBOUND:
                self.arrive(transmit.data)
            else:
                host.to_stack.append(TCPPacket.parse(transmit.data))


def connect(net: Net, client: Host, server: Host, isn_c: int, isn_s: int) -> None:
    """SYN, SYN-ACK, third ACK, then one byte each way: Init messages (if any) flow."""
    net.send(client, client.seg(isn_c, 0, SYN, options=syn_options(tsval=1000)))
    net.send(server, server.seg(isn_s, isn_c + 1, SYN | ACK,
                                options=syn_options(tsval=2000, tsecr=1000)))
    net.send(client, client.seg(isn_c + 1, isn_s + 1, ACK))
    net.send(client, client.seg(isn_c + 1, isn_s + 1, ACK, b"c"))
    net.send(server, server.seg(isn_s + 1, isn_c + 2, ACK, b"s"))


def established(host: Host) -> SessionEstablished:
    events = [e for e in host.events if isinstance(e, SessionEstablished)]
    assert len(events) == 1, host.events
    return events[0]


def eno_of(packet: bytes):
    return parse_syn_option(tcp_options.eno_options(TCPPacket.parse(packet).options)[0])


def payloads(net: Net, sport: int) -> list[bytes]:
    return [bytes(p.payload) for p in map(TCPPacket.parse, net.wire)
            if p.sport == sport and len(p.payload)]


def fresh_then(net: Net) -> tuple[SessionEstablished, SessionEstablished]:
    """A fresh connection X -> Y:80; returns both ends' events."""
    x, y = net.end(IP_X, 40000, IP_Y, 80), net.end(IP_Y, 80, IP_X, 40000)
    connect(net, x, y, 1000, 5000)
    ex, ey = established(x), established(y)
    assert not ex.resumed and (ex.role, ey.role) == ("A", "B")
    return ex, ey


def test_the_original_b_resumes_and_the_key_roles_follow_the_original_session() -> None:
    """Y was B; it opens the next connection (role A now) and resumes: no Init message, the
    v bit in the session ID, and Y still sends with k_ba, so its event says "B" (the key
    log's role field is the k_ab sender's, for `tcpcryptd decode`)."""
    net = Net()
    fresh_then(net)
    y, x = net.end(IP_Y, 50000, IP_X, 22), net.end(IP_X, 22, IP_Y, 50000)
    connect(net, y, x, 7000, 9000)
    ey, ex = established(y), established(x)
    assert ey.resumed and ex.resumed
    assert ey.session_id == ex.session_id and ey.session_id[0] & 0x80
    assert (ey.role, ex.role) == ("B", "A")
    assert (ey.k_ab, ey.k_ba) == (ex.k_ab, ex.k_ba)
    for port in (50000, 22):
        first = payloads(net, port)[0]
        assert first[:4] not in (INIT1_MAGIC.to_bytes(4, "big"), INIT2_MAGIC.to_bytes(4, "big"))
        assert first[0] == 0 and len(first) == 3 + 1 + 1 + 16   # one frame, offset 0
    status = {f.local: f for f in net.engines[IP_X].flows()}
    assert status["10.0.0.1:22"].resumed and not status["10.0.0.1:40000"].resumed


def test_both_ends_racing_never_use_one_secret_twice() -> None:
    """X and Y open to each other at once, each offering the one secret it cached: each
    took its entry out of the cache when it offered it, so the peer's offer misses and both
    connections are fresh (a secret secures at most one connection, §3.5)."""
    net = Net()
    fresh_then(net)
    x1, y1 = net.end(IP_X, 40001, IP_Y, 80), net.end(IP_Y, 80, IP_X, 40001)
    y2, x2 = net.end(IP_Y, 50001, IP_X, 22), net.end(IP_X, 22, IP_Y, 50001)
    syn_x = net.send(x1, x1.seg(100, 0, SYN, options=syn_options()), deliver=False)
    syn_y = net.send(y2, y2.seg(300, 0, SYN, options=syn_options()), deliver=False)
    assert eno_of(syn_x[0]).suboptions[-1].v and eno_of(syn_y[0]).suboptions[-1].v
    for packet in syn_x + syn_y:
        net.arrive(packet)
    for client, server, isn_c, isn_s in ((x1, y1, 100, 200), (y2, x2, 300, 400)):
        net.send(server, server.seg(isn_s, isn_c + 1, SYN | ACK, options=syn_options()))
        net.send(client, client.seg(isn_c + 1, isn_s + 1, ACK))
        net.send(client, client.seg(isn_c + 1, isn_s + 1, ACK, b"c"))
    events = [established(h) for h in (x1, y1, y2, x2)]
    assert not any(e.resumed for e in events)
    assert events[0].session_id == events[1].session_id != events[2].session_id
    for engine in net.engines.values():
        assert engine.counters["resume_miss"] == engine.counters["resume_declined"] == 1
    # each machine now holds the secrets of both new sessions: the next one resumes
    x3, y3 = net.end(IP_X, 40002, IP_Y, 80), net.end(IP_Y, 80, IP_X, 40002)
    connect(net, x3, y3, 500, 600)
    assert established(x3).resumed and established(y3).resumed


def test_a_replayed_resumption_syn_gets_a_fresh_answer() -> None:
    """The secret is gone from Y's cache once it resumed: the same SYN again (a replay on
    a new port) is answered with a fresh TEP, never the resumption answer."""
    net = Net()
    fresh_then(net)
    x, y = net.end(IP_X, 40001, IP_Y, 80), net.end(IP_Y, 80, IP_X, 40001)
    syn = net.send(x, x.seg(100, 0, SYN, options=syn_options()))[0]
    synack = net.send(y, y.seg(200, 101, SYN | ACK, options=syn_options()))[0]
    assert eno_of(synack).suboptions[0].v
    replay = TCPPacket.parse(syn)
    replay.sport = 40009
    net.end(IP_Y, 80, IP_X, 40009)
    net.arrive(replay.to_bytes())
    answer = net.end(IP_Y, 80, IP_X, 40009)
    synack2 = net.send(answer, answer.seg(900, 101, SYN | ACK, options=syn_options()),
                       deliver=False)[0]
    assert not eno_of(synack2).suboptions[0].v
    assert net.engines[IP_Y].counters["resume_miss"] == 1


def test_resumption_off_neither_offers_nor_resumes() -> None:
    net = Net(EngineConfig(resumption_enabled=False), EngineConfig(resumption_enabled=False))
    fresh_then(net)
    x, y = net.end(IP_X, 40001, IP_Y, 80), net.end(IP_Y, 80, IP_X, 40001)
    syn = net.send(x, x.seg(100, 0, SYN, options=syn_options()))[0]
    assert not any(sub.v for sub in eno_of(syn).suboptions)
    connect_rest = y.seg(200, 101, SYN | ACK, options=syn_options())
    net.send(y, connect_rest)
    net.send(x, x.seg(101, 201, ACK))
    net.send(x, x.seg(101, 201, ACK, b"c"))
    assert not established(x).resumed and not established(y).resumed


def test_the_resumption_offer_fits_the_option_space_with_fresh_teps() -> None:
    """A full Linux SYN (20 option bytes) leaves 20 for ENO: the offer keeps the other TEPs
    fresh and shortens its nonce (6 bytes with two fresh TEPs); B's answer, sized against
    the SYN's options, has the global suboption and a 7-byte nonce (RFC 8548 §3.5)."""
    net = Net()
    fresh_then(net)
    x, y = net.end(IP_X, 40001, IP_Y, 80), net.end(IP_Y, 80, IP_X, 40001)
    syn = net.send(x, x.seg(100, 0, SYN, options=syn_options()))[0]
    offer = eno_of(syn)
    assert [s.v for s in offer.suboptions] == [False, False, True]
    assert len(offer.suboptions[-1].data) == 9 + 6 and len(TCPPacket.parse(syn).options) <= 40
    synack = net.send(y, y.seg(200, 101, SYN | ACK, options=syn_options()))[0]
    answer = eno_of(synack)
    assert answer.gopt == 0x01 and len(answer.suboptions[0].data) == 9 + 7
    assert len(TCPPacket.parse(synack).options) <= 40


def test_the_cache_is_bounded_and_secrets_expire() -> None:
    """``resumption_cache_size`` secrets at most; past ``resumption_lifetime`` a secret is
    not offered (the SYN carries fresh TEPs only)."""
    config = EngineConfig(resumption_cache_size=2, resumption_lifetime=10.0)
    net = Net(config, config)
    pairs = [(net.end(IP_X, 41000 + k, IP_Y, 80), net.end(IP_Y, 80, IP_X, 41000 + k))
             for k in range(3)]
    for x, _ in pairs:     # three SYNs before any session exists: three fresh sessions
        net.send(x, x.seg(100, 0, SYN, options=syn_options()))
    for x, y in pairs:
        net.send(y, y.seg(200, 101, SYN | ACK, options=syn_options()))
        net.send(x, x.seg(101, 201, ACK))
        net.send(x, x.seg(101, 201, ACK, b"c"))
        assert not established(x).resumed
    assert len(net.engines[IP_X]._ctx.sessions) == 2
    net.now = 11.0
    x = net.end(IP_X, 42000, IP_Y, 90)
    syn = net.send(x, x.seg(100, 0, SYN, options=syn_options()), deliver=False)[0]
    assert not any(sub.v for sub in eno_of(syn).suboptions)


# -- simultaneous open (RFC 8547 §4.5, §4.6) ------------------------------------------------


def simultaneous_open(net: Net, x: Host, y: Host, *, x_synack_first: bool = True) -> None:
    """Both stacks send a SYN, each gets the other's, answers with a SYN-ACK (its own ISN,
    the option unchanged), then gets the other's SYN-ACK."""
    syn_x = net.send(x, x.seg(100, 0, SYN, options=syn_options(tsval=1000)), deliver=False)
    syn_y = net.send(y, y.seg(300, 0, SYN, options=syn_options(tsval=2000)), deliver=False)
    for packet in syn_x + syn_y:
        net.arrive(packet)
    synack_x = net.send(x, x.seg(100, 301, SYN | ACK, options=syn_options(1001, 2000)),
                        deliver=False)
    synack_y = net.send(y, y.seg(300, 101, SYN | ACK, options=syn_options(2001, 1000)),
                        deliver=False)
    assert eno_of(synack_x[0]).raw == eno_of(syn_x[0]).raw     # unchanged (§4.6)
    assert eno_of(synack_y[0]).raw == eno_of(syn_y[0]).raw
    for packet in (synack_x + synack_y if x_synack_first else synack_y + synack_x):
        net.arrive(packet)


def test_simultaneous_open_with_one_host_set_to_b_is_encrypted() -> None:
    """Y sets b = 1 on its port (``passive_role_ports``): Y is host B, X host A; the TEP is
    the last valid one of Y's list; X's engine sends Init1 itself (no third segment carries
    it), Y answers Init2, and data flows encrypted both ways."""
    net = Net(None, EngineConfig(passive_role_ports=frozenset({50000})))
    x, y = net.end(IP_X, 40000, IP_Y, 50000), net.end(IP_Y, 50000, IP_X, 40000)
    simultaneous_open(net, x, y)
    ex, ey = established(x), established(y)
    assert (ex.role, ey.role) == ("A", "B") and ex.session_id == ey.session_id
    assert ex.tep == 0x23 and not ex.resumed
    assert payloads(net, 40000)[0][:4] == INIT1_MAGIC.to_bytes(4, "big")
    assert payloads(net, 50000)[0][:4] == INIT2_MAGIC.to_bytes(4, "big")
    net.send(x, x.seg(101, 301, ACK, b"hello from x"))
    net.send(y, y.seg(301, 113, ACK, b"hello from y"))
    got_y = b"".join(bytes(p.payload) for p in y.to_stack)
    got_x = b"".join(bytes(p.payload) for p in x.to_stack)
    assert got_y == b"hello from x" and got_x == b"hello from y"
    assert all(b"hello" not in packet for packet in net.wire)
    status = {f.local: f for e in net.engines.values() for f in e.flows()}
    assert status["10.0.0.1:40000"].role == "A" and status["10.0.0.2:50000"].role == "B"
    assert status["10.0.0.1:40000"].state == status["10.0.0.2:50000"].state == "encrypted"


def test_simultaneous_open_init1_ahead_of_the_synack_completes_the_exchange() -> None:
    """Y's SYN-ACK reaches X first: X (host A) sends Init1 before Y has seen X's SYN-ACK.
    The segment carrying it acknowledges Y's SYN with ENO, which turns encryption on at Y
    (host B, RFC 8547 §4.6): Y takes Init1 (never to its stack) and answers Init2."""
    net = Net(None, EngineConfig(passive_role_ports=frozenset({50000})))
    x, y = net.end(IP_X, 40000, IP_Y, 50000), net.end(IP_Y, 50000, IP_X, 40000)
    simultaneous_open(net, x, y, x_synack_first=False)
    assert not any(len(p.payload) for p in y.to_stack + x.to_stack)
    assert established(x).session_id == established(y).session_id
    net.send(y, y.seg(301, 101, ACK, b"hello from y"))
    assert b"".join(bytes(p.payload) for p in x.to_stack) == b"hello from y"


def test_simultaneous_open_with_both_b_zero_stays_plain() -> None:
    net = Net()
    x, y = net.end(IP_X, 40000, IP_Y, 50000), net.end(IP_Y, 50000, IP_X, 40000)
    syn_x = net.send(x, x.seg(100, 0, SYN, options=syn_options()), deliver=False)
    syn_y = net.send(y, y.seg(300, 0, SYN, options=syn_options()), deliver=False)
    for packet in syn_x + syn_y:
        net.arrive(packet)
    for engine in net.engines.values():
        assert engine.counters["fallback_simultaneous-open"] == 1 and not engine.flows()


@pytest.mark.parametrize("b_host", ["x", "y"])
def test_a_simultaneous_open_only_one_end_saw(b_host: str) -> None:
    """X's SYN is lost; Y's SYN reaches X in syn-sent (a simultaneous open for X), X's
    SYN-ACK reaches Y, which takes it as the answer to its own SYN (a normal open for Y),
    and Y's ACK completes X's.  Whichever host set b = 1 is host B; the other's engine
    sends Init1 (on Y's third segment, or on its own when X is host A)."""
    b_role = EngineConfig(passive_role_ports=frozenset({40000 if b_host == "x" else 50000}))
    net = Net(b_role if b_host == "x" else None, b_role if b_host == "y" else None)
    x, y = net.end(IP_X, 40000, IP_Y, 50000), net.end(IP_Y, 50000, IP_X, 40000)
    net.send(x, x.seg(100, 0, SYN, options=syn_options(tsval=1000)), deliver=False)   # lost
    net.send(y, y.seg(300, 0, SYN, options=syn_options(tsval=2000)))
    net.send(x, x.seg(100, 301, SYN | ACK, options=syn_options(1001, 2000)))
    net.send(y, y.seg(301, 101, ACK))
    ex, ey = established(x), established(y)
    assert ex.session_id == ey.session_id
    assert (ex.role, ey.role) == (("B", "A") if b_host == "x" else ("A", "B"))
    net.send(x, x.seg(101, 301, ACK, b"hello from x"))
    assert b"".join(bytes(p.payload) for p in y.to_stack) == b"hello from x"


def test_a_promoted_resumption_record_keeps_the_negotiated_resumption() -> None:
    """Host B keeps the resumption SYN as a compact record; the third segment promotes it
    without negotiating again (the cache entry is already taken): the flow's outcome is the
    resumption both ends negotiated, host A's transcript, with the entry it resumes."""
    from tcpcryptd.engine.flow import HalfOpen
    from tcpcryptd.engine.handshake import promote
    net = Net()
    fresh_then(net)
    x, y = net.end(IP_X, 40001, IP_Y, 80), net.end(IP_Y, 80, IP_X, 40001)
    net.send(x, x.seg(3000, 0, SYN, options=syn_options(tsval=1000)))
    net.send(y, y.seg(6000, 3001, SYN | ACK, options=syn_options(tsval=2000, tsecr=1000)))
    record = net.engines[IP_Y]._flows[(4, IP_Y, 80, IP_X, 40001)]
    client = net.engines[IP_X]._flows[(4, IP_X, 40001, IP_Y, 80)]
    assert type(record) is HalfOpen and record.resume_entry is not None
    promoted = promote(record)
    assert promoted.negotiated is not None and client.negotiated is not None
    assert promoted.negotiated.resumed and promoted.resume_entry is record.resume_entry
    assert promoted.negotiated.transcript == client.negotiated.transcript
    assert (promoted.negotiated.a_suboption, promoted.negotiated.b_suboption) == (
        client.negotiated.a_suboption, client.negotiated.b_suboption)
    assert promoted.eno.local_option.raw == record.syn_option
    net.send(x, x.seg(3001, 6001, ACK))
    net.send(x, x.seg(3001, 6001, ACK, b"c"))
    assert established(x).resumed and established(y).resumed
    assert established(x).session_id == established(y).session_id
