"""Control protocol: JSON lines, error answers for bad requests, one instance per socket."""

from __future__ import annotations

import json
import os
import socket
import stat

import pytest

from tcpcryptd.daemon import control
from tcpcryptd.daemon.control import MAX_REQUEST, ControlServer, parse_request, request
from tcpcryptd.daemon.errors import ControlError, DaemonTimeoutError, NoDaemonError

from .fakes import ControlThread


def echo(message):
    if message.get("boom"):
        raise RuntimeError("handler bug")
    if message.get("refuse"):
        raise ControlError("refused politely")
    return {"ok": True, "echo": message}


@pytest.fixture
def sock_path(tmp_path):
    return str(tmp_path / "run" / "control.sock")


@pytest.mark.parametrize("line, message", [
    (b"{nope", "request is not JSON"),
    (b"\xff\xfe", "request is not JSON"),
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
        answers = _exchange(sock_path, b'garbage\n{"command":"status","boom":1}\n'
                            b'{"command":"status","refuse":1}\n{"command":"ping"}\n')
        assert answers[0]["ok"] is False and "not JSON" in answers[0]["error"]
        assert answers[1] == {"ok": False,
                              "error": "internal error while handling 'status'"}
        assert answers[2] == {"ok": False, "error": "refused politely"}
        assert answers[3]["ok"] is True
        assert request(sock_path, {"command": "status"})["ok"] is True


def test_oversized_request_gets_an_error_and_is_skipped(sock_path):
    with ControlThread(ControlServer(sock_path, echo)):
        answers = _exchange(sock_path, b"x" * (3 * MAX_REQUEST + 10) + b'\n{"command":"ping"}\n')
        assert answers == [{"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"},
                           {"ok": True, "echo": {"command": "ping"}}]


def test_socket_is_private_and_removed_on_close(sock_path):
    server = ControlServer(sock_path, echo)
    server.open()
    try:
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
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
    with ControlThread(ControlServer(sock_path, lambda _: {"ok": True, "sessions": sessions})):
        assert request(sock_path, {"command": "status"})["sessions"] == sessions
