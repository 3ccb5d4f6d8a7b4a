"""Control protocol: JSON lines, error answers for bad requests, one instance per socket."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import stat
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcpcryptd.daemon import control
from tcpcryptd.daemon.control import MAX_REQUEST, ControlServer, parse_request, request
from tcpcryptd.daemon.errors import ControlError, DaemonTimeoutError, NoDaemonError

from .fakes import ControlThread


def echo(message, caller=None):
    if message["command"] == "enable":
        raise RuntimeError("handler bug")
    if message["command"] == "disable":
        raise ControlError("refused politely")
    return {"ok": True, "echo": message}


@pytest.fixture
def sock_path(tmp_path):
    return str(tmp_path / "run" / "control.sock")


@pytest.mark.parametrize("line, message", [
    (b"{nope", "request is not JSON"),
    (b"\xff\xfe", "request is not UTF-8: invalid start byte at byte 0"),
    (b"[1, 2]", "request must be a JSON object"),
    (b'{"command": "reboot"}', "unknown command 'reboot'"),
    (b'{"cmd": "status"}', "unknown command None"),
])
def test_parse_request_rejects(line, message):
    with pytest.raises(ControlError, match=message):
        parse_request(line)


def test_parse_request_accepts_known_commands():
    assert parse_request(b'{"command": "status"}') == {"command": "status"}


def _exchange(path: str, payload: bytes) -> list[dict]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect(path)
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := client.recv(65536):
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


def test_round_trip_and_error_answers_keep_the_server_alive(sock_path):
    with ControlThread(ControlServer(sock_path, echo)):
        assert request(sock_path, {"command": "ping"}) == {"ok": True,
                                                           "echo": {"command": "ping"}}
        answers = _exchange(sock_path, b'garbage\n{"command":"enable"}\n'
                            b'{"command":"disable"}\n{"command":"ping"}\n')
        assert answers[0]["ok"] is False and "not JSON" in answers[0]["error"]
        assert answers[1] == {"ok": False,
                              "error": "internal error while handling 'enable'"}
        assert answers[2] == {"ok": False, "error": "refused politely"}
        assert answers[3]["ok"] is True
        assert request(sock_path, {"command": "status"})["ok"] is True


def test_oversized_request_gets_an_error_and_is_skipped(sock_path):
    with ControlThread(ControlServer(sock_path, echo)):
        answers = _exchange(sock_path, b"x" * (3 * MAX_REQUEST + 10) + b'\n{"command":"ping"}\n')
        assert answers == [{"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"},
                           {"ok": True, "echo": {"command": "ping"}}]


def test_socket_is_reachable_by_every_user_and_removed_on_close(sock_path):
    server = ControlServer(sock_path, echo)
    old_umask = os.umask(0o077)
    try:
        server.open()
    finally:
        os.umask(old_umask)
    try:
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o666
        # the directory it made for the socket, whatever the umask (systemd: UMask=0077)
        assert stat.S_IMODE(os.stat(os.path.dirname(sock_path)).st_mode) == 0o755
        assert open(f"{sock_path}.lock").read().strip() == str(os.getpid())
    finally:
        server.close()
    assert not os.path.exists(sock_path)


def test_second_instance_is_refused_by_the_lock(sock_path):
    first = ControlServer(sock_path, echo)
    first.open()
    try:
        with pytest.raises(ControlError, match=f"another tcpcryptd is running \\(pid {os.getpid()}"):
            ControlServer(sock_path, echo).open()
    finally:
        first.close()


def test_stale_socket_is_replaced_but_a_live_one_is_not_stolen(sock_path):
    os.makedirs(os.path.dirname(sock_path))
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()  # file left behind, nobody listening: a crashed daemon
    server = ControlServer(sock_path, echo)
    server.open()
    server.close()
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(sock_path)
    live.listen()
    try:
        with pytest.raises(ControlError, match="is in use by another process"):
            ControlServer(sock_path, echo).open()
    finally:
        live.close()


def test_request_errors_are_readable(sock_path, tmp_path):
    with pytest.raises(NoDaemonError, match="no tcpcryptd is running"):
        request(sock_path, {"command": "ping"})
    assert control.daemon_running(sock_path) is False
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = str(tmp_path / "silent.sock")
    silent.bind(path)
    silent.listen()
    try:
        with pytest.raises(DaemonTimeoutError, match="is running but did not answer"):
            request(path, {"command": "ping"}, timeout=0.2)
        # a daemon too busy to answer is not reported as absent
        with pytest.raises(DaemonTimeoutError):
            control.daemon_running(path, timeout=0.2)
    finally:
        silent.close()
    # a socket file nobody listens on any more (daemon crashed): connection refused
    with pytest.raises(NoDaemonError):
        request(path, {"command": "ping"})


def test_large_answer_arrives_whole(sock_path):
    sessions = [{"local": f"10.0.{i >> 8}.{i & 255}:443", "n": i} for i in range(20_000)]
    with ControlThread(ControlServer(sock_path, lambda *_: {"ok": True, "sessions": sessions})):
        assert request(sock_path, {"command": "status"})["sessions"] == sessions


# ---- hostile requests: bounded parsing, an error answer for each, never a crash

DEEP_ARRAY = b"[" * 1000 + b"]" * 1000   # 2,001 bytes: under MAX_REQUEST


@pytest.mark.parametrize("line, message", [
    (DEEP_ARRAY, f"nests deeper than {control.MAX_DEPTH} levels"),
    (b'{"a":' * 500 + b"1" + b"}" * 500, "nests deeper than"),
    (b'{"command": "ping", "x": ' + b"[" * 9 + b"]" * 9 + b"}", "nests deeper than"),
    (b'{"command": "status", "limit": NaN}', "NaN is not a JSON number"),
    (b'{"command": "status", "limit": -Infinity}', "-Infinity is not a JSON number"),
    (b'\xed\xa0\x80', "request is not UTF-8"),     # an encoded surrogate
    (b'{"command": "st\xc3atus"}', "request is not UTF-8"),
    (b"", "request is not JSON"),
    (b"[]", "request must be a JSON object"),
    (b'"status"', "request must be a JSON object"),
    (b"null", "request must be a JSON object"),
    (b"1" * 4000, "request must be a JSON object"),
    (b'{"command": ["status"]}', "unknown command \\['status'\\]"),
    (b'{"command": "' + b"x" * 3000 + b'"}', "unknown command 'xxxxxxxxxxxx"),
    (b'{"command": "ping", "verbose": true}',
     "ping does not take 'verbose' \\(it takes no fields\\)"),
    (b'{"command": "status", "state": ["encrypted"]}', "status does not take 'state'"),
])
def test_parse_request_rejects_hostile_lines(line, message):
    with pytest.raises(ControlError, match=message):
        parse_request(line)


def test_unknown_command_answers_stay_short():
    with pytest.raises(ControlError) as caught:
        parse_request(b'{"command": "' + b"x" * 3000 + b'"}')
    assert len(str(caught.value)) < 150


def test_depth_scan_ignores_brackets_inside_strings():
    assert control.nesting_depth('{"peer": "[[[[[[[[[[[[[[[[[[[[", "x": "\\"[[[[[[[[[["}') == 1
    assert control.nesting_depth('[[{"a": [1]}]]') == 4
    line = b'{"command": "session-id", "remote_addr": "' + b"[{" * 100 + b'"}'
    assert parse_request(line)["remote_addr"] == "[{" * 100


def test_recursion_in_the_parser_is_an_error_too(monkeypatch):
    """Were the depth scan ever wrong, json's own RecursionError is still an answer."""
    monkeypatch.setattr(control, "MAX_DEPTH", 10**6)
    with pytest.raises(ControlError, match="request is not JSON: maximum recursion depth"):
        parse_request(b"[" * 2000 + b"]" * 2000)


def test_numbers_too_long_for_int_are_an_error(monkeypatch):
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(640)
    try:
        with pytest.raises(ControlError, match="request is not JSON: Exceeds the limit"):
            parse_request(b'{"command": "status", "limit": ' + b"9" * 1000 + b"}")
    finally:
        sys.set_int_max_str_digits(limit)


def test_deep_request_over_the_socket_is_answered_and_the_server_lives(sock_path):
    with ControlThread(ControlServer(sock_path, echo)):
        answers = _exchange(sock_path, DEEP_ARRAY + b'\n{"command":"ping"}\n')
        assert answers == [{"ok": False, "error": "request nests deeper than "
                                                  f"{control.MAX_DEPTH} levels"},
                           {"ok": True, "echo": {"command": "ping"}}]
        assert request(sock_path, {"command": "ping"})["ok"] is True


def test_unencodable_answer_becomes_an_error_answer(sock_path):
    with ControlThread(ControlServer(sock_path, lambda *_: {"ok": True, "x": object()})):
        assert request(sock_path, {"command": "ping"}) == {
            "ok": False, "error": "internal error: the answer could not be encoded"}


# ---- connections: one request per turn, idle timeout, eviction at the cap


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def served(sock_path):
    """An open server driven by hand (no thread), its fake clock, and a client factory."""
    clock = FakeClock()
    server = ControlServer(sock_path, echo, clock=clock)
    server.open()
    clients = []

    def connect() -> tuple[socket.socket, int]:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(2)
        client.connect(sock_path)
        clients.append(client)
        accepted = server.accept()
        assert accepted is not None
        return client, accepted.fileno()

    yield server, clock, connect
    for client in clients:
        client.close()
    server.close()


def _lines(client: socket.socket, count: int = 1) -> list[dict]:
    data = b""
    while data.count(b"\n") < count:
        data += client.recv(65536)
    return [json.loads(line) for line in data.splitlines()]


def test_pipelined_requests_are_answered_one_per_turn(served):
    server, _, connect = served
    client, fd = connect()
    client.sendall(b'{"command":"ping"}\n' * 3)
    server.readable(fd)
    assert len(_lines(client)) == 1
    assert server.wants_write(fd)   # the loop comes back for the next one
    server.writable(fd)
    server.writable(fd)
    assert len(_lines(client, 2)) == 2
    assert not server.wants_write(fd)


def test_idle_connection_is_told_and_closed(served):
    server, clock, connect = served
    assert server.next_deadline() is None
    client, fd = connect()
    assert server.next_deadline() == clock.now + control.IDLE_TIMEOUT
    clock.now += control.IDLE_TIMEOUT - 0.1
    assert server.expire(clock.now) == []
    clock.now += 0.1
    assert server.expire(clock.now) == [fd]
    server.drop(fd)
    assert _lines(client) == [{"ok": False, "error": "control connection closed: no request "
                                                     f"for {control.IDLE_TIMEOUT:g}s"}]
    assert client.recv(1) == b""


def test_a_partial_line_does_not_keep_a_connection_alive(served):
    server, clock, connect = served
    client, fd = connect()
    for _ in range(20):   # one byte a second, never a newline
        clock.now += 1
        client.sendall(b" ")
        server.readable(fd)
    assert server.expire(clock.now) == [fd]


def test_requests_keep_a_connection_alive(served):
    server, clock, connect = served
    client, fd = connect()
    for _ in range(5):
        clock.now += control.IDLE_TIMEOUT - 1
        client.sendall(b'{"command":"ping"}\n')
        server.readable(fd)
        assert _lines(client)[0]["ok"] is True
        assert server.expire(clock.now) == []


def test_at_the_cap_the_longest_idle_connection_is_evicted(served):
    server, clock, connect = served
    clients = []
    for _ in range(control.MAX_CLIENTS):
        clock.now += 0.01
        clients.append(connect())
    first_client, first_fd = clients[0]
    second_client, second_fd = clients[1]
    first_client.sendall(b'{"command":"ping"}\n')   # the first one is active again
    server.readable(first_fd)
    _lines(first_client)
    newest_client, newest_fd = connect()
    assert server.expire(clock.now) == [second_fd]
    server.drop(second_fd)
    assert _lines(second_client) == [{"ok": False, "error": "control connection closed: "
                                                            "too many control connections"}]
    newest_client.sendall(b'{"command":"ping"}\n')
    server.readable(newest_fd)
    assert _lines(newest_client)[0]["ok"] is True
    assert len(server.connections) == control.MAX_CLIENTS


def test_at_the_cap_unprivileged_connections_are_evicted_before_root_ones(served):
    """Every user may connect; a user filling the cap pushes out only unprivileged
    connections, never an idle root client (the oldest here)."""
    server, clock, connect = served
    clients = []
    for _ in range(control.MAX_CLIENTS):
        clock.now += 0.01
        clients.append(connect())
    root_fd = clients[0][1]
    for _, fd in clients[1:]:
        server.connections[fd].caller = control.Caller(4242, 65534)
    connect()
    assert server.expire(clock.now) == [clients[1][1]]
    assert not server.connections[root_fd].evicted


def test_failing_accept_is_not_fatal(served):
    server, _, _ = served

    class Exhausted:
        def accept(self):
            raise OSError(errno.EMFILE, "Too many open files")

    real, server.listener = server.listener, Exhausted()
    try:
        assert server.accept() is None
    finally:
        server.listener = real


def test_idle_flood_does_not_lock_out_status(sock_path):
    """100 idle connections (the kernel backlog and the cap full), then a request."""
    with ControlThread(ControlServer(sock_path, echo)):
        idle = []
        try:
            for _ in range(100):
                client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                client.connect(sock_path)
                idle.append(client)
            for _ in range(3):
                assert request(sock_path, {"command": "status"})["ok"] is True
        finally:
            for client in idle:
                client.close()


# ---- property: whatever a line holds, one well-formed answer and a live server

def _json_values():
    scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def _requests():
    def with_fields(command: str):
        names = control.COMMAND_FIELDS[command] + ("junk",)
        return st.dictionaries(st.sampled_from(names), _json_values(), max_size=3).map(
            lambda fields: {"command": command, **fields})
    return st.sampled_from(control.COMMANDS).flatmap(with_fields)


def _lines_strategy():
    return st.one_of(
        st.binary(max_size=300).map(lambda raw: raw.replace(b"\n", b" ")),
        st.integers(MAX_REQUEST - 8, 3 * MAX_REQUEST).map(lambda size: b"{" * size),
        _json_values().map(lambda value: json.dumps(value).encode()),
        _requests().map(lambda value: json.dumps(value).encode()),
        st.tuples(st.integers(1, 2040), st.sampled_from([b"[", b'{"a":', b'{"command":'])).map(
            lambda nest: nest[1] * nest[0] + b"]" * nest[0]),
    )


@contextlib.contextmanager
def _daemon_recursion_headroom():
    """Hypothesis raises the recursion limit while a test runs; the daemon's loop has the
    default 1000 frames of headroom, and so has the server inside this context."""
    depth, frame = 0, sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + 1000)
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


def test_any_line_gets_exactly_one_wellformed_answer(tmp_path):
    from .fakes import FakeSender, ScriptedEngine, flow_status
    from tcpcryptd.daemon.config import Config
    from tcpcryptd.daemon.loop import Daemon, PacketPath
    from tcpcryptd.daemon.nfqueue import Verdicts

    engine = ScriptedEngine([flow_status(), flow_status(local="10.0.0.1:40001", state="keying",
                                                        session_id="")])
    daemon = Daemon(Config(), engine, PacketPath(engine, FakeSender(), Verdicts(2, 1, 8)), "nft")
    server = ControlServer(str(tmp_path / "c.sock"), daemon.handle)
    server.open()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(tmp_path / "c.sock"))
    client.setblocking(False)
    fd = server.accept().fileno()

    def exchange(line: bytes) -> dict:
        client.sendall(line + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            with _daemon_recursion_headroom():
                if server.wants_write(fd):
                    server.writable(fd)
                else:
                    server.readable(fd)
            try:
                data += client.recv(1 << 20)
            except BlockingIOError:
                pass
        [answer] = [json.loads(text) for text in data.splitlines()]
        return answer

    @settings(max_examples=400, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(_lines_strategy())
    def check(line: bytes) -> None:
        answer = exchange(line)
        assert answer["ok"] in (True, False)
        if answer["ok"] is False:
            assert isinstance(answer["error"], str) and answer["error"]

    try:
        check()
        assert exchange(b'{"command":"ping"}')["ok"] is True
    finally:
        client.close()
        server.close()
