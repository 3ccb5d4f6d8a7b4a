"""The engine's events (``Result.events``): what happened to a connection, for the key log,
status and metrics; and the key log written from them, as the daemon loop does."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _hand import ISN_A, ISN_B, Pair, syn_options, tcp_options  # noqa: E402

from tcpcryptd.daemon.keylog import KeyLog  # noqa: E402
from tcpcryptd.engine import Direction, Engine, EngineConfig  # noqa: E402
from tcpcryptd.engine.events import Aborted, FellBack, SessionEstablished  # noqa: E402
from tcpcryptd.packet.tcp import ACK, PSH, SYN, TCPPacket  # noqa: E402

A_ADDR, B_ADDR = "10.0.0.1:40000", "10.0.0.2:80"


def test_both_ends_report_the_same_session_with_their_own_role() -> None:
    pair = Pair()
    pair.handshake()
    (ea,), (eb,) = pair.a.events, pair.b.events
    assert isinstance(ea, SessionEstablished) and isinstance(eb, SessionEstablished)
    (fa,), (fb,) = pair.a.engine.flows(), pair.b.engine.flows()
    assert (ea.local, ea.remote, ea.role) == (A_ADDR, B_ADDR, "A")
    assert (eb.local, eb.remote, eb.role) == (B_ADDR, A_ADDR, "B")
    assert ea.session_id == eb.session_id and ea.session_id.hex() == fa.session_id == fb.session_id
    assert ea.tep == eb.tep == ea.session_id[0] == 0x23     # X25519, not resumed (no v bit)
    assert (ea.k_ab, ea.k_ba) == (eb.k_ab, eb.k_ba) and ea.k_ab != ea.k_ba
    assert len(ea.k_ab) == 16 + 12                      # AES-128-GCM: K | NR (RFC 8548 §4.2)
    assert ea.aead == eb.aead == fa.aead == "AES-128-GCM"
    assert not ea.resumed and not eb.resumed
    assert ea.handshake_seconds == eb.handshake_seconds == 0.0   # Pair's clock stands still
    (flow,) = pair.a.engine._flows.values()
    assert (ea.k_ab, ea.k_ba) == flow.session.traffic_keys(0)


def test_fallback_is_reported_with_its_reason() -> None:
    """A's SYN-ACK lost its ENO on the way: both ends fall back (RFC 8547 §4.6)."""
    pair = Pair()
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A, 0, SYN, options=syn_options()))
    _, (syn_ack,) = pair.send(b, b.seg(ISN_B, ISN_A + 1, SYN | ACK, options=syn_options()),
                              deliver=False)
    pkt = TCPPacket.parse(syn_ack)
    pkt.options = tcp_options.remove(pkt.options, 69)
    pair.arrive(a, pkt.to_bytes())
    pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK))
    assert a.events == [FellBack(A_ADDR, B_ADDR, "no-eno")]
    assert b.events == [FellBack(B_ADDR, A_ADDR, "no-eno")]


def test_inbound_syns_without_usable_eno_fall_back_as_counted() -> None:
    """Host B takes an inbound SYN without ENO, or with an ENO option that sets the b bit
    (both ends passive: a role conflict, RFC 8547 §4.6), as a fallback at its first sight
    of it (counted ``fallback_<reason>``, reported alike)."""
    engine = Engine(EngineConfig())
    pair = Pair()
    plain_syn = pair.a.seg(ISN_A, 0, SYN, options=syn_options())
    result = engine.handle_packet(1, plain_syn, Direction.INBOUND, 0.0)
    assert result.plain and engine.counters["fallback_no-eno"] == 1
    assert result.events == [FellBack(B_ADDR, A_ADDR, "no-eno")]
    bad = pair.a.seg(ISN_A + 5, 0, SYN, options=syn_options() + b"\x45\x03\x01\x00")
    result = engine.handle_packet(2, bad, Direction.INBOUND, 0.0)
    assert result.plain and engine.counters["fallback_role-conflict"] == 1
    assert result.events == [FellBack(B_ADDR, A_ADDR, "role-conflict")]


def test_simultaneous_open_without_a_passive_role_falls_back() -> None:
    """Both SYNs with b = 0 (neither host configured as B): a role conflict, RFC 8547 §4.5."""
    pair = Pair()
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A, 0, SYN, options=syn_options()), deliver=False)
    _, (syn_b,) = pair.send(b, b.seg(ISN_B, 0, SYN, options=syn_options()), deliver=False)
    pair.arrive(a, syn_b)
    assert a.events == [FellBack(A_ADDR, B_ADDR, "simultaneous-open")]
    assert a.engine.counters["fallback_simultaneous-open"] == 1


def test_simultaneous_open_with_a_peer_without_eno_falls_back() -> None:
    pair = Pair()
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A, 0, SYN, options=syn_options()), deliver=False)
    pair.arrive(a, b.seg(ISN_B, 0, SYN, options=syn_options()))
    assert a.events == [FellBack(A_ADDR, B_ADDR, "no-eno")]


def test_abort_is_reported_with_its_reason() -> None:
    pair = Pair()
    pair.handshake()
    a, b = pair.a, pair.b
    _, (raw,) = pair.send(a, a.seg(ISN_A + 1, ISN_B + 1, ACK | PSH, b"attack at dawn"),
                          deliver=False)
    pkt = TCPPacket.parse(raw)
    payload = bytearray(pkt.payload)
    payload[-1] ^= 1
    pkt.payload = bytes(payload)
    result = b.engine.handle_packet(99, pkt.to_bytes(), Direction.INBOUND, 1.0)
    assert result.events == [Aborted(B_ADDR, A_ADDR, "aead-failure")]
    assert b.engine.shutdown(2.0).events == []      # already aborted: nothing more to report
    assert a.engine.shutdown(2.0).events == [Aborted(A_ADDR, B_ADDR, "shutdown")]


def test_an_idle_timeout_abort_comes_from_the_timer() -> None:
    pair = Pair()
    pair.handshake()
    idle = pair.a.engine.config.idle_timeout
    pair.timer(pair.a, idle + 1.0)
    assert pair.a.events[1:] == [Aborted(A_ADDR, B_ADDR, "idle")]


def test_the_key_log_writes_each_session_from_its_event(tmp_path: Path) -> None:
    """KeyLog.record, fed the events as the daemon loop feeds it: one line per session per
    host, the same session and keys at both ends; events without keys write nothing."""
    pair = Pair()
    pair.handshake()
    logs = {}
    for host in (pair.a, pair.b):
        path = tmp_path / f"{host.name}.keys"
        keylog = KeyLog(str(path))
        for event in host.events + host.engine.shutdown(1.0).events:
            keylog.record(event)
        keylog.record(FellBack(A_ADDR, B_ADDR, "no-eno"))
        keylog.close()
        logs[host.name] = path
    assert len(logs["A"].read_text().splitlines()) == len(logs["B"].read_text().splitlines()) == 1
    (fa,), (fb,) = pair.a.engine.flows(), pair.b.engine.flows()
    line_a = logs["A"].read_text().split()
    line_b = logs["B"].read_text().split()
    assert line_a[0] == line_b[0] == "TCPCRYPT_KEYS"
    assert (line_a[1], line_a[2]) == (fa.local, fa.remote) == (A_ADDR, B_ADDR)
    assert (line_b[1], line_b[2]) == (fb.local, fb.remote) == (B_ADDR, A_ADDR)
    assert (line_a[3], line_b[3]) == ("A", "B")
    assert line_a[4:8] == line_b[4:8] == ["23", "AES-128-GCM", fa.session_id, "0"]
    assert fa.session_id == fb.session_id
    assert line_a[8:] == line_b[8:]                      # k_ab[0], k_ba[0], new
    assert len(bytes.fromhex(line_a[8])) == 16 + 12      # AES-128-GCM: K | NR
    assert line_a[10] == "new"
    assert logs["A"].stat().st_mode & 0o777 == 0o600


def test_keys_and_nonces_come_from_the_configured_random_source() -> None:
    """``EngineConfig.random`` is the engine's only source of randomness: two runs with the
    same seeded source make the same session; the bytes drawn are the key exchange's."""
    import random

    sessions = []
    for _ in range(2):
        drawn: list[int] = []
        source = random.Random("seed").randbytes

        def counted(n: int, source=source, drawn=drawn) -> bytes:
            drawn.append(n)
            return source(n)

        pair = Pair(EngineConfig(random=counted), EngineConfig(random=counted))
        pair.handshake()
        sessions.append((pair.a.events[0], pair.b.events[0]))
        # A: N_A and its X25519 key (32 + 32); B: N_B and its key (32 + 32)
        assert sorted(drawn) == [32, 32, 32, 32]
    assert sessions[0] == sessions[1]
