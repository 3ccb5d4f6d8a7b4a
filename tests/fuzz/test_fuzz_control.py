"""Fuzz target: the control protocol under request lines of every shape.

Lines are arbitrary bytes, arbitrary JSON values (nesting, huge integers, floats including
NaN and infinities, unicode, duplicate keys), the known commands with fuzzed fields, byte
damage of valid requests, and oversized lines.  They are answered by a real
:class:`~tcpcryptd.daemon.control.ControlServer` on a unix socket, driven step by step as
the daemon's loop drives it, with the real :meth:`tcpcryptd.daemon.loop.Daemon.handle`
over a real engine holding flows in several states.  Invariants: ``parse_request`` returns
a known command or raises ControlError, nothing else; the server raises nothing, and
answers every line with exactly one JSON object whose ``ok`` is a boolean (with an
``error`` string when false), never an "internal error" (a handler bug).

Deep nesting is drawn separately (:func:`test_deeply_nested_json_gets_an_error_answer`):
a 1,000-deep array used to raise RecursionError out of ``parse_request`` (issue 13).
"""

from __future__ import annotations

import functools
import json
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypothesis import event, given, settings
from hypothesis import strategies as st

from _bench import A_PORT, Bench
from tcpcryptd.daemon.config import Config
from tcpcryptd.daemon.control import COMMANDS, MAX_REQUEST, ControlServer, parse_request
from tcpcryptd.daemon.errors import ControlError
from tcpcryptd.daemon.loop import Daemon, PacketPath
from tcpcryptd.daemon.nfqueue import Verdicts
from tcpcryptd.engine import Engine

SEEN, ENCRYPTED, PLAIN = 0x20000000, 0x10000000, 0x08000000
FIELDS = ("command", "remote_addr", "remote_port", "local_port")
#: CPython's default recursion limit: the daemon runs with it.
DAEMON_RECURSION_LIMIT = 1000


@contextmanager
def daemon_stack() -> Iterator[None]:
    """Run with the recursion budget the daemon has (the default limit, counted from here).

    Hypothesis raises the limit while it runs a test, which would hide a RecursionError the
    daemon meets.
    """
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + DAEMON_RECURSION_LIMIT)
    try:
        yield
    finally:
        sys.setrecursionlimit(previous)


class _Sender:
    """Raw-socket stand-in: the control requests never send packets."""

    def send(self, packet: bytes) -> None:
        raise AssertionError(f"a control request sent a packet: {packet.hex()}")


@functools.cache
def _engine() -> Engine:
    """An engine with flows in several states: encrypted (IPv4), keying and syn (IPv6)."""
    bench = Bench(4)
    bench.handshake()
    bench.stack_data(bench.a, 100)
    keying = Bench(6)
    keying.syn()
    keying.syn_ack()
    keying.cut = True
    keying.stack_ack(keying.a)
    engine = bench.a.engine
    engine._flows.update(keying.a.engine._flows)   # one table, for status and session-id
    return engine


def _daemon() -> Daemon:
    engine = _engine()
    return Daemon(Config(), engine, PacketPath(engine, _Sender(), Verdicts(SEEN, ENCRYPTED, PLAIN)),
                  "nft", clock=lambda: 100.0)


def serve(lines: list[bytes]) -> list[bytes]:
    """Send ``lines`` (newline added) on one control connection; return the answer lines.

    The server runs in this thread, entry point by entry point as the daemon's loop calls
    it: accept, readable until the client's EOF, writable while output is pending.
    """
    payload = b"".join(line + b"\n" for line in lines)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "control.sock")
        server = ControlServer(path, _daemon().handle)
        server.open()
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            client.connect(path)
            sock = server.accept()
            assert sock is not None
            fd = sock.fileno()
            client.setblocking(False)
            received = bytearray()
            sent = 0
            while fd in server.connections:
                if sent < len(payload):
                    try:
                        sent += client.send(payload[sent:sent + 65536])
                    except BlockingIOError:
                        pass
                    if sent == len(payload):
                        client.shutdown(socket.SHUT_WR)
                server.readable(fd)
                while server.wants_write(fd) and not server.finished(fd):
                    server.writable(fd)
                    received += _read_available(client)
                if server.finished(fd):
                    server.drop(fd)
            received += _read_available(client)
        finally:
            client.close()
            server.close()
    return bytes(received).splitlines()


def _read_available(client: socket.socket) -> bytes:
    out = bytearray()
    while True:
        try:
            chunk = client.recv(1 << 16)
        except BlockingIOError:
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk


def check_answers(lines: list[bytes], answers: list[bytes]) -> list[bool]:
    """One JSON object per line, ``ok`` a boolean, an error string when not ok, no bug;
    returns the ``ok`` of each."""
    assert len(answers) == len(lines), (len(lines), answers)
    oks = []
    for line, raw in zip(lines, answers):
        answer = json.loads(raw)
        assert isinstance(answer, dict) and isinstance(answer.get("ok"), bool), (line, answer)
        if not answer["ok"]:
            assert isinstance(answer.get("error"), str), (line, answer)
            assert not answer["error"].startswith("internal error"), (line, answer)
        oks.append(answer["ok"])
    return oks


# -- strategies ---------------------------------------------------------------------------

_SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(-(10 ** 300), 10 ** 300)
            | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
            | st.sampled_from(COMMANDS + ("", "PING", "status ", "session_id", "reboot")))
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(
        st.sampled_from(FIELDS) | st.text(max_size=10), children, max_size=5),
    max_leaves=25)


def _object_text(pairs: list[tuple[str, object]], ascii_only: bool) -> bytes:
    """A JSON object written pair by pair: keys may repeat (duplicate keys)."""
    body = ",".join(f"{json.dumps(k, ensure_ascii=ascii_only)}:"
                    f"{json.dumps(v, ensure_ascii=ascii_only)}" for k, v in pairs)
    return ("{" + body + "}").encode("utf-8", "surrogatepass")


_FIELD_VALUES = (JSON_VALUES | st.integers(-1, 70000) | st.sampled_from(
    ("10.0.0.2", "fd00::2", "[fd00::2]", "10.0.0.2:443", "::", "fe80::1%eth0", "", " ", "\x00",
     "999.1.1.1", "1" * 300)))
REQUESTS = st.tuples(
    st.sampled_from(COMMANDS),
    st.lists(st.tuples(st.sampled_from(FIELDS) | st.text(max_size=8), _FIELD_VALUES),
             max_size=5),
    st.booleans(),
).map(lambda t: _object_text([("command", t[0]), *t[1]], t[2]))


@st.composite
def damaged_request(draw: st.DrawFn) -> bytes:
    """A valid request with bytes changed, removed or inserted."""
    out = bytearray(draw(REQUESTS))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(out)))
        match draw(st.sampled_from(("set", "delete", "insert"))):
            case "set" if at < len(out):
                out[at] = draw(st.integers(0, 255))
            case "delete":
                del out[at:at + draw(st.integers(1, 8))]
            case _:
                out[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(out)


LINES = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.tuples(st.lists(st.tuples(st.sampled_from(FIELDS), _FIELD_VALUES), max_size=6),
              st.booleans()).map(lambda t: _object_text(*t)),
    REQUESTS,
    damaged_request(),
    st.integers(MAX_REQUEST - 3, 3 * MAX_REQUEST).map(lambda n: b"x" * n),
    st.integers(MAX_REQUEST - 40, MAX_REQUEST + 10).map(
        lambda n: _object_text([("command", "ping"), ("pad", "p" * n)], True)),
).map(lambda line: line.replace(b"\n", b" "))

_PROFILE = settings.get_profile("fuzz-active")


@settings(_PROFILE, max_examples=_PROFILE.max_examples * 8)
@given(LINES)
def test_parse_request_returns_a_known_command_or_refuses(line: bytes) -> None:
    try:
        with daemon_stack():
            request = parse_request(line)
    except ControlError:
        event("refused")
        return
    event("accepted")
    assert isinstance(request, dict) and request["command"] in COMMANDS


@settings(_PROFILE, max_examples=_PROFILE.max_examples * 2)
@given(st.lists(LINES, min_size=1, max_size=12))
def test_server_answers_every_line_with_one_ok_object(lines: list[bytes]) -> None:
    with daemon_stack():
        answers = serve(lines)
    for ok in check_answers(lines, answers):
        event("answer ok" if ok else "answer error")


@st.composite
def nested(draw: st.DrawFn) -> bytes:
    """JSON nested ``depth`` deep: arrays, objects, or a mix, bare or inside a request."""
    depth = draw(st.integers(1, 1800))
    opener, closer = draw(st.sampled_from(((b"[", b"]"), (b'{"a":', b"}"),
                                           (b'[{"command":', b"}]"))))
    value = opener * depth + b"0" + closer * depth
    if draw(st.booleans()):
        value = b'{"command":' + value + b"}"
    event(f"depth {depth // 250 * 250}-{depth // 250 * 250 + 249}")
    return value[:MAX_REQUEST - 1]


@settings(_PROFILE, max_examples=_PROFILE.max_examples)
@given(st.lists(nested(), min_size=1, max_size=3))
def test_deeply_nested_json_gets_an_error_answer(lines: list[bytes]) -> None:
    with daemon_stack():
        for line in lines:
            try:
                parse_request(line)
            except ControlError:
                pass
        answers = serve(lines)
    check_answers(lines, answers)


def test_a_1000_deep_array_gets_an_error_answer() -> None:
    line = b"[" * 1000 + b"]" * 1000
    with daemon_stack():
        answers = serve([line, b'{"command":"ping"}'])
    assert check_answers([line, b'{"command":"ping"}'], answers) == [False, True]


def test_the_daemon_under_fuzz_holds_real_flows() -> None:
    """The handler sees real flows (so session-id requests can match one)."""
    states = {status.state for status in _engine().flows()}
    assert {"encrypted", "keying"} <= states
    answer = _daemon().handle({"command": "session-id", "local_port": A_PORT})
    assert answer["ok"] and answer["session_id"]
