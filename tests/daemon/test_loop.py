"""The packet path (engine results -> verdicts) and the control requests, with stand-ins."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from tcpcryptd.daemon import control
from tcpcryptd.daemon.config import Config
from tcpcryptd.daemon.control import ControlServer, request
from tcpcryptd.daemon.errors import ControlError
from tcpcryptd.daemon.loop import Daemon, PacketPath
from tcpcryptd.daemon.nfqueue import MAX_COPY, Verdicts
from tcpcryptd.engine.actions import Direction, Release, Result, Transmit, Verdict

from .fakes import FakePacket, FakeSender, ScriptedEngine, flow_status, ipv4_packet

SEEN, ENCRYPTED, PLAIN = 0x20000000, 0x10000000, 0x08000000


@pytest.fixture
def parts():
    engine = ScriptedEngine()
    sender = FakeSender()
    clock = iter(float(t) for t in range(100, 10_000))
    path = PacketPath(engine, sender, Verdicts(SEEN, ENCRYPTED, PLAIN), clock=lambda: next(clock))
    return engine, sender, path


def test_accept_passes_direction_and_time_and_marks_seen(parts):
    engine, _, path = parts
    packet = FakePacket(7, mark=0x3)
    path.on_packet(packet)
    assert engine.calls == [(7, packet.payload, Direction.OUTBOUND, 100.0)]
    assert packet.verdict == "accept" and packet.new_payload is None
    assert packet.new_mark == 0x3 | SEEN
    inbound = FakePacket.inbound(8)
    path.on_packet(inbound)
    assert engine.calls[-1][2] is Direction.INBOUND


def test_accept_with_rewritten_bytes(parts):
    engine, _, path = parts
    engine.script.append(Result(Verdict.ACCEPT, data=b"rewritten"))
    packet = FakePacket(1)
    path.on_packet(packet)
    assert packet.verdict == "accept" and packet.new_payload == b"rewritten"


def test_drop(parts):
    engine, _, path = parts
    engine.script.append(Result(Verdict.DROP))
    packet = FakePacket(1)
    path.on_packet(packet)
    assert packet.verdict == "drop" and packet.new_mark is None


def test_hold_then_release_in_any_order(parts):
    engine, _, path = parts
    first, second = FakePacket(1), FakePacket(2)
    engine.script += [Result(Verdict.HOLD), Result(Verdict.HOLD)]
    path.on_packet(first)
    path.on_packet(second)
    assert first.retained and second.retained
    assert first.verdict is None and set(path.verdicts.held) == {1, 2}
    engine.script.append(Result(Verdict.ACCEPT, releases=[Release(2, b"sealed", True),
                                                          Release(1, None, False)]))
    third = FakePacket(3)
    path.on_packet(third)
    assert second.verdict == "accept" and second.new_payload == b"sealed"
    assert second.new_mark == SEEN | ENCRYPTED   # a held packet: its connection is keying
    assert first.verdict == "drop"
    assert third.verdict == "accept" and not path.verdicts.held


def test_hold_and_release_in_one_result(parts):
    engine, _, path = parts
    engine.script.append(Result(Verdict.HOLD, releases=[Release(4, b"x", True)]))
    packet = FakePacket(4)
    path.on_packet(packet)
    assert packet.verdict == "accept" and packet.new_payload == b"x"


def test_unknown_release_is_counted_not_fatal(parts):
    engine, _, path = parts
    engine.script.append(Result(Verdict.ACCEPT, releases=[Release(99, None, True)]))
    path.on_packet(FakePacket(1))
    assert path.counters["daemon_unknown_releases"] == 1


def test_transmit_goes_to_the_sender_and_failures_are_counted(parts):
    engine, sender, path = parts
    engine.script.append(Result(Verdict.ACCEPT, transmit=[Transmit(b"a", Direction.OUTBOUND),
                                                          Transmit(b"b", Direction.INBOUND)]))
    path.on_packet(FakePacket(1))
    assert sender.sent == [b"a", b"b"]
    sender.fail = True
    engine.script.append(Result(Verdict.ACCEPT, transmit=[Transmit(b"c", Direction.OUTBOUND)]))
    path.on_packet(FakePacket(2))
    assert path.counters["daemon_inject_errors"] == 1


def test_engine_error_outbound_passes_unseen_so_the_guard_decides(parts):
    engine, _, path = parts
    engine.script.append(ValueError("bug"))
    packet = FakePacket(1)
    path.on_packet(packet)
    assert packet.verdict == "accept" and packet.new_mark is None
    assert path.counters["daemon_engine_errors"] == 1


def test_engine_error_inbound_drops_on_encrypted_connections_only(parts):
    engine, _, path = parts
    engine.script += [ValueError("bug"), ValueError("bug")]
    encrypted = FakePacket.inbound(1, mark=ENCRYPTED)
    plain = FakePacket.inbound(2)
    path.on_packet(encrypted)
    path.on_packet(plain)
    assert encrypted.verdict == "drop"
    assert plain.verdict == "accept" and plain.new_mark is None


def test_truncated_packet_never_reaches_the_engine(parts):
    engine, _, path = parts
    packet = FakePacket(1, payload=ipv4_packet(MAX_COPY - 20, total_len=0xFFFF))
    path.on_packet(packet)
    assert engine.calls == [] and packet.verdict == "accept"
    assert path.counters["daemon_truncated"] == 1


def test_verdict_failure_is_counted_not_raised(parts):
    engine, _, path = parts
    packet = FakePacket(1)
    packet.verdict = "accept"  # a second verdict raises like NetfilterQueue's
    path.on_packet(packet)
    assert path.counters["daemon_verdict_errors"] == 1


def test_timer_results_are_applied_and_errors_counted(parts):
    engine, sender, path = parts
    engine.script.append(Result(None, transmit=[Transmit(b"rto", Direction.OUTBOUND)]))
    path.on_timer()
    assert sender.sent == [b"rto"] and engine.timer_calls == [100.0]
    engine.script.append(RuntimeError("bug"))
    path.on_timer()
    assert path.counters["daemon_timer_errors"] == 1


def test_counters_merge_engine_and_daemon(parts):
    engine, _, path = parts
    path.counters["daemon_truncated"] = 2
    assert path.counters_view() == {"encrypted": 1, "plain": 2, "daemon_truncated": 2}


# ---- control requests

@pytest.fixture
def daemon():
    flows = [flow_status(),
             flow_status(local="10.0.0.1:40001", remote="10.0.0.3:80", session_id="",
                         state="keying", tep="", aead=""),
             flow_status(local="[fd00:0201:0000:0000:0000:0000:0000:0001]:5000",
                         remote="[fd00:0201:0000:0000:0000:0000:0000:0002]:6000",
                         session_id="24" + "cd" * 32, role="B")]
    engine = ScriptedEngine(flows)
    path = PacketPath(engine, FakeSender(), Verdicts(SEEN, ENCRYPTED, PLAIN))
    return Daemon(Config(), engine, path, "nft", clock=lambda: 50.0)


def test_ping(daemon):
    answer = daemon.handle({"command": "ping"})
    assert answer["ok"] and answer["version"]


def test_enable_disable_toggle_the_engine(daemon):
    assert daemon.handle({"command": "disable"}) == {"ok": True, "enabled": False}
    assert daemon.engine.config.enabled is False
    assert daemon.status()["daemon"]["enabled"] is False
    assert daemon.handle({"command": "enable"}) == {"ok": True, "enabled": True}
    assert daemon.engine.config.enabled is True


def test_status_schema(daemon):
    answer = daemon.handle({"command": "status"})
    assert set(answer) == {"ok", "daemon", "counters", "matched", "sessions"}
    assert answer["matched"] == 3
    assert set(answer["daemon"]) == {"pid", "version", "enabled", "queue", "firewall", "uptime",
                                     "held_packets"}
    assert answer["counters"] == {"encrypted": 1, "plain": 2}
    first = answer["sessions"][0]
    assert first["tep"] == "X25519" and first["role"] == "A"
    assert answer["sessions"][2]["local"] == "[fd00:201::1]:5000"


def test_status_adds_what_the_kernel_counted(daemon):
    daemon.kernel_counters = lambda: {"plain": 5, "plain_no-eno-syn": 5}
    counters = daemon.handle({"command": "status"})["counters"]
    assert counters == {"encrypted": 1, "plain": 7, "plain_no-eno-syn": 5}


def test_status_ages_are_taken_at_the_daemon_clock(daemon):
    daemon.handle({"command": "status"})
    assert daemon.engine.flows_now == 50.0


def test_session_id_by_remote_or_local_port(daemon):
    by_remote = daemon.handle({"command": "session-id", "remote_addr": "10.0.0.2",
                               "remote_port": 80})
    assert by_remote == {"ok": True, "session_id": "23" + "ab" * 32,
                         "local": "10.0.0.1:40000", "remote": "10.0.0.2:80"}
    by_v6 = daemon.handle({"command": "session-id", "remote_addr": "fd00:201:0::2",
                           "remote_port": 6000})
    assert by_v6["session_id"].startswith("24")
    by_local = daemon.handle({"command": "session-id", "local_port": 5000})
    assert by_local["session_id"].startswith("24")


@pytest.mark.parametrize("request_, message", [
    ({"remote_addr": "10.0.0.9", "remote_port": 80}, "no such connection"),
    ({"remote_addr": "10.0.0.3", "remote_port": 80}, "has no tcpcrypt session"),
    ({"remote_port": 80, "remote_addr": None, "local_port": None}, "needs remote_addr"),
    ({"local_port": "80"}, "local_port must be a port number"),
    ({"local_port": 0}, "local_port must be a port number"),
    ({"remote_addr": 5, "remote_port": 80}, "remote_addr must be a string"),
])
def test_session_id_errors_never_return_an_empty_id(daemon, request_, message):
    with pytest.raises(ControlError, match=message):
        daemon.handle({"command": "session-id", **request_})


def test_session_id_ambiguous_when_two_connections_go_to_one_server():
    flows = [flow_status(), flow_status(local="10.0.0.1:40002", session_id="23" + "ef" * 32)]
    engine = ScriptedEngine(flows)
    daemon = Daemon(Config(), engine, PacketPath(engine, FakeSender(), Verdicts(SEEN, ENCRYPTED, PLAIN)),
                    "nft")
    with pytest.raises(ControlError, match="2 encrypted connections match"):
        daemon.handle({"command": "session-id", "remote_addr": "10.0.0.2", "remote_port": 80})
    answer = daemon.handle({"command": "session-id", "remote_addr": "10.0.0.2",
                            "remote_port": 80, "local_port": 40002})
    assert answer["session_id"] == "23" + "ef" * 32


def test_plain_connections_are_offloaded_without_the_seen_mark(parts):
    """The plain mark hands the connection to the kernel; no seen mark: the guard decides."""
    engine, _, path = parts
    engine.script += [Result(Verdict.ACCEPT, plain=True),
                      Result(Verdict.ACCEPT, data=b"clamped", plain=True),
                      Result(Verdict.ACCEPT, plain=True)]
    outbound, rewritten, inbound = FakePacket(1), FakePacket(2, mark=0x1), FakePacket.inbound(3)
    for packet in (outbound, rewritten, inbound):
        path.on_packet(packet)
    assert [p.verdict for p in (outbound, rewritten, inbound)] == ["accept"] * 3
    assert [p.new_mark for p in (outbound, rewritten, inbound)] == [PLAIN, PLAIN | 0x1, PLAIN]
    assert rewritten.new_payload == b"clamped"
    assert path.counters["daemon_offloaded"] == 3


def test_the_packet_that_starts_a_key_exchange_carries_the_encrypted_mark(parts):
    engine, _, path = parts
    engine.script += [Result(Verdict.ACCEPT, encrypted=True), Result(Verdict.ACCEPT),
                      Result(Verdict.ACCEPT, data=b"init1", encrypted=True)]
    first, second, third = FakePacket(1), FakePacket(2), FakePacket.inbound(3)
    for packet in (first, second, third):
        path.on_packet(packet)
    assert [p.new_mark for p in (first, second, third)] == [SEEN | ENCRYPTED, SEEN,
                                                             SEEN | ENCRYPTED]


def test_shutdown_sends_the_engines_resets_and_drops_its_releases(parts):
    engine, sender, path = parts
    engine.script.append(Result(Verdict.HOLD))
    held = FakePacket(1)
    path.on_packet(held)
    engine.script.append(Result(None, releases=[Release(1, None, False)],
                                transmit=[Transmit(b"rst-wire", Direction.OUTBOUND),
                                          Transmit(b"rst-local", Direction.INBOUND)]))
    path.shutdown()
    assert engine.shutdown_calls == [101.0]
    assert sender.sent == [b"rst-wire", b"rst-local"] and held.verdict == "drop"
    engine.script.append(RuntimeError("bug"))
    path.shutdown()
    assert path.counters["daemon_timer_errors"] == 1


def test_inbound_plain_to_the_engine_but_encrypted_to_the_firewall_is_dropped(parts):
    """A connection encrypted by an earlier daemon instance never continues in plaintext."""
    engine, _, path = parts
    engine.script += [Result(Verdict.ACCEPT, plain=True), Result(Verdict.ACCEPT, plain=True)]
    inbound = FakePacket.inbound(1, mark=ENCRYPTED)
    outbound = FakePacket(2, mark=ENCRYPTED)  # (outbound nfmark never has it: the guard acts)
    path.on_packet(inbound)
    path.on_packet(outbound)
    assert inbound.verdict == "drop"
    assert outbound.verdict == "accept" and outbound.new_mark == ENCRYPTED | PLAIN
    assert path.counters["daemon_stale_encrypted"] == 1


# ---- status filters and summary, validated in the daemon

def _rows(answer):
    return [(row["local"], row["state"]) for row in answer["sessions"]]


@pytest.mark.parametrize("fields, rows", [
    ({"states": ["keying"]}, [("10.0.0.1:40001", "keying")]),
    ({"states": ["keying", "encrypted"]}, [("10.0.0.1:40000", "encrypted"),
                                          ("10.0.0.1:40001", "keying"),
                                          ("[fd00:201::1]:5000", "encrypted")]),
    ({"states": ["aborted"]}, []),
    ({"peer": "10.0.0.3"}, [("10.0.0.1:40001", "keying")]),
    ({"peer": "10.0.0.2:80"}, [("10.0.0.1:40000", "encrypted")]),
    ({"peer": "10.0.0.2:81"}, []),
    ({"peer": "fd00:201:0::2"}, [("[fd00:201::1]:5000", "encrypted")]),
    ({"peer": "[fd00:201::2]:6000"}, [("[fd00:201::1]:5000", "encrypted")]),
    ({"peer": "[fd00:201::2]:6001"}, []),
    ({"states": ["encrypted"], "peer": "10.0.0.3"}, []),
    ({"limit": 1}, [("10.0.0.1:40000", "encrypted")]),
    ({"limit": 0}, []),
    ({"limit": 10**40, "states": None, "peer": None, "summary": False},
     [("10.0.0.1:40000", "encrypted"), ("10.0.0.1:40001", "keying"),
      ("[fd00:201::1]:5000", "encrypted")]),
])
def test_status_filters(daemon, fields, rows):
    answer = daemon.handle({"command": "status", **fields})
    assert _rows(answer) == rows


def test_status_limit_reports_how_many_matched(daemon):
    answer = daemon.handle({"command": "status", "states": ["encrypted"], "limit": 1})
    assert answer["matched"] == 2 and len(answer["sessions"]) == 1


def test_status_summary_counts_states_and_connections(daemon):
    daemon.path.counters["daemon_offloaded"] = 7
    answer = daemon.handle({"command": "status", "summary": True})
    assert set(answer) == {"ok", "daemon", "counters", "summary"}
    assert answer["summary"] == {"sessions": 3, "states": {"keying": 1, "encrypted": 2},
                                 "connections": {"encrypted": 1, "plain": 2, "offloaded": 7}}
    filtered = daemon.handle({"command": "status", "summary": True, "peer": "10.0.0.3"})
    assert filtered["summary"]["states"] == {"keying": 1}


@pytest.mark.parametrize("fields, message", [
    ({"states": "encrypted"}, "states must be a non-empty list of state names"),
    ({"states": []}, "states must be a non-empty list"),
    ({"states": [1]}, "states must be a non-empty list"),
    ({"states": [["encrypted"]]}, "states must be a non-empty list"),
    ({"states": ["established"]}, "unknown state 'established' \\(known: syn-sent, "),
    ({"peer": 5}, "peer must be a string"),
    ({"peer": ["10.0.0.2"]}, "peer must be a string"),
    ({"peer": "x" * 1000}, "peer must be a string"),
    ({"peer": "example.org"}, "peer: 'example.org' is not ADDR, ADDR:PORT or \\[V6ADDR\\]:PORT"),
    ({"peer": "10.0.0.2:0"}, "port 0 of '10.0.0.2:0' is not in 1..65535"),
    ({"peer": "10.0.0.2:99999"}, "is not in 1..65535"),
    ({"peer": "10.0.0.2:"}, "is not ADDR"),
    ({"peer": "[10.0.0.2"}, "is not ADDR"),
    ({"summary": 1}, "summary must be true or false"),
    ({"summary": "yes"}, "summary must be true or false"),
    ({"limit": -1}, "limit must be a non-negative integer"),
    ({"limit": 1.5}, "limit must be a non-negative integer"),
    ({"limit": float("inf")}, "limit must be a non-negative integer"),
    ({"limit": True}, "limit must be a non-negative integer"),
    ({"limit": "3"}, "limit must be a non-negative integer"),
    ({"summary": True, "limit": 3}, "limit applies to session rows: not with summary"),
])
def test_status_field_errors(daemon, fields, message):
    with pytest.raises(ControlError, match=message):
        daemon.handle({"command": "status", **fields})


@pytest.mark.parametrize("request_, message", [
    ({"remote_port": True, "remote_addr": "10.0.0.2"}, "remote_port must be a port number"),
    ({"remote_port": 10**40, "remote_addr": "10.0.0.2"}, "remote_port must be a port number"),
    ({"remote_port": 80.0, "remote_addr": "10.0.0.2"}, "remote_port must be a port number"),
    ({"remote_addr": ["10.0.0.2"]}, "remote_addr must be a string"),
    ({"remote_addr": {"a": 1}}, "remote_addr must be a string"),
    ({"local_port": [80]}, "local_port must be a port number"),
])
def test_session_id_field_type_errors(daemon, request_, message):
    with pytest.raises(ControlError, match=message):
        daemon.handle({"command": "session-id", **request_})


# ---- the loop serves the control socket: idle timeout, floods


class _IdleQueue:
    """A queue that has packets only when a test writes bytes to ``writer``: one byte is a
    packet, and ``process`` takes one per call (a batch budget smaller than what waits),
    noting it in ``log`` and then calling ``then`` (what the engine does with it)."""

    def __init__(self) -> None:
        self.reader, self.writer = socket.socketpair()
        self.flushes = 0
        self.log: list[str] = []
        self.then = lambda: None

    def fileno(self) -> int:
        return self.reader.fileno()

    def process(self) -> None:
        assert self.reader.recv(1)
        self.log.append("process")
        self.then()

    def flush(self) -> None:
        """No verdicts to send; counted."""
        self.flushes += 1


@pytest.fixture
def looping(daemon, tmp_path, monkeypatch):
    """``daemon.run`` in a thread with a real control socket; idle timeout 0.5 s."""
    monkeypatch.setattr(control, "IDLE_TIMEOUT", 0.5)
    daemon.clock = time.monotonic
    path = str(tmp_path / "control.sock")
    server = ControlServer(path, daemon.handle, clock=daemon.clock)
    server.open()
    wake_r, wake_w = socket.socketpair()
    daemon._wake = wake_r
    queue = _IdleQueue()
    thread = threading.Thread(target=daemon.run, args=(queue, server), daemon=True)
    thread.start()
    yield path, server, queue
    daemon.stopping = True
    wake_w.send(b"x")
    thread.join(timeout=5)
    assert not thread.is_alive()
    server.close()
    for sock in (wake_r, wake_w, queue.reader, queue.writer):
        sock.close()


def _connect(path):
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(5)
    client.connect(path)
    return client


def test_loop_closes_an_idle_connection_on_its_own(looping):
    """No packets, no timers: the control deadline alone wakes the loop."""
    path, server, _ = looping
    client = _connect(path)
    started = time.monotonic()
    farewell = client.recv(4096)
    assert b"control connection closed: no request for 0.5s" in farewell
    assert client.recv(1) == b""
    assert 0.4 < time.monotonic() - started < 3
    client.close()
    assert request(path, {"command": "ping"})["ok"] is True
    assert len(server.connections) <= 1


def test_loop_runs_the_engines_timer_when_due_and_sends_its_verdicts(looping, daemon):
    """No packets: the engine's deadline alone wakes the loop, which runs the timer and
    flushes the releases it gave (a request first makes the loop look at the new deadline)."""
    path, _, queue = looping
    due = daemon.engine.deadline = time.monotonic() + 0.2
    assert request(path, {"command": "ping"})["ok"] is True
    waited = time.monotonic() + 5
    while not queue.flushes and time.monotonic() < waited:
        time.sleep(0.01)
    assert len(daemon.engine.timer_calls) == 1 and daemon.engine.timer_calls[0] >= due
    assert queue.flushes == 1


def _wait_for(condition, seconds=5.0):
    waited = time.monotonic() + seconds
    while not condition() and time.monotonic() < waited:
        time.sleep(0.01)
    assert condition()


def test_loop_prepares_only_when_due_and_the_queue_is_drained(looping, daemon):
    """The engine's idle work (key pairs made ahead) runs only when the engine says it is
    due and a poll finds nothing waiting: after every packet of a burst, never between
    them; again at once while more is wanted, at the time the engine names, and not at
    all once it names none, until a packet makes it due again."""
    _, _, queue = looping
    engine = daemon.engine
    log, prepare = queue.log, engine.prepare

    def logged_prepare(now):
        log.append("prepare")
        return prepare(now)

    def take_a_pair():
        engine.due = time.monotonic()

    engine.prepare = logged_prepare
    queue.then = take_a_pair                    # every packet's connection takes a pair
    time.sleep(0.1)
    assert engine.prepare_calls == []           # nothing due yet
    later = time.monotonic() + 0.3
    engine.prepare_script = [0.0, later]        # more wanted now; then at ``later``; then none
    queue.writer.send(b"abc")                   # three packets at once
    _wait_for(lambda: len(log) == 6)
    time.sleep(0.3)
    assert log == ["process"] * 3 + ["prepare"] * 3
    assert engine.prepare_calls[2] >= later
    queue.writer.send(b"d")
    _wait_for(lambda: len(log) == 8)
    time.sleep(0.1)
    assert log[6:] == ["process", "prepare"]


def test_prepare_errors_are_counted_not_raised(parts):
    engine, _, path = parts
    engine.prepare = lambda now: 1 // 0
    path.prepare()
    assert path.counters["daemon_prepare_errors"] == 1


def test_loop_serves_status_through_an_idle_flood(looping):
    path, server, _ = looping
    idle = [_connect(path) for _ in range(100)]
    try:
        answer = request(path, {"command": "status"})
        assert answer["ok"] is True and len(answer["sessions"]) == 3
        assert len(server.connections) <= control.MAX_CLIENTS + 1
    finally:
        for client in idle:
            client.close()


def test_loop_survives_hostile_requests(looping):
    path, _, _ = looping
    client = _connect(path)
    client.sendall(b"[" * 1000 + b"]" * 1000 + b"\n\xff\n" + b'{"command":"status","limit":-1}\n')
    data = b""
    while data.count(b"\n") < 3:
        data += client.recv(4096)
    answers = [json.loads(line) for line in data.splitlines()]
    assert [answer["ok"] for answer in answers] == [False, False, False]
    client.close()
    assert request(path, {"command": "status"})["ok"] is True


def test_each_results_events_go_to_the_event_sink_in_order():
    """Result.events of packets, timers and shutdown reach the sink (the key log); a
    failing sink is counted and never stops the packet path."""
    from tcpcryptd.engine.events import Aborted, FellBack

    class Sink:
        def __init__(self):
            self.events = []

        def record(self, event):
            if event.reason == "boom":
                raise OSError("disk full")
            self.events.append(event)

    engine, sink = ScriptedEngine(), Sink()
    path = PacketPath(engine, FakeSender(), Verdicts(SEEN, ENCRYPTED, PLAIN),
                      events=sink.record)
    first, second = FellBack("a", "b", "no-eno"), Aborted("a", "b", "idle")
    engine.script += [Result(Verdict.ACCEPT, events=[first]), Result(None, events=[second]),
                      Result(Verdict.ACCEPT, events=[Aborted("a", "b", "boom")]),
                      Result(None, events=[Aborted("a", "b", "shutdown")])]
    packet = FakePacket(1)
    path.on_packet(packet)
    path.on_timer()
    path.on_packet(FakePacket(2))
    path.shutdown()
    assert packet.verdict == "accept"
    assert sink.events == [first, second, Aborted("a", "b", "shutdown")]
    assert path.counters["daemon_event_errors"] == 1
    # without a sink the events are dropped, the packet handled as ever
    engine.script.append(Result(Verdict.ACCEPT, events=[first]))
    unsunk = PacketPath(engine, FakeSender(), Verdicts(SEEN, ENCRYPTED, PLAIN))
    packet = FakePacket(3)
    unsunk.on_packet(packet)
    assert packet.verdict == "accept" and not unsunk.counters
