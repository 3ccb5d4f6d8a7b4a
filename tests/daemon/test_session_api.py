"""The TCPINC API request ``session``: answers, access control, and tcpcryptd.api.

Access control is checked with real credentials where it matters: a child process that
drops to uid 65534 (nobody) connects to the control socket, so ``SO_PEERCRED`` and the
kernel's socket owner (sock_diag) are the kernel's, not a stand-in's (root only).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from pathlib import Path

import pytest

from tcpcryptd import api
from tcpcryptd.daemon.config import Config
from tcpcryptd.daemon.control import Caller, ControlServer, request
from tcpcryptd.daemon.errors import ControlError
from tcpcryptd.daemon.loop import Daemon, PacketPath
from tcpcryptd.daemon.nfqueue import Verdicts
from tcpcryptd.daemon.sockdiag import socket_owner

from .fakes import ControlThread, FakeSender, ScriptedEngine, flow_status

NOBODY = 65534
SESSION_ID = "23" + "ab" * 32
ROOT = Caller(1, 0)
USER = Caller(2, 1000)


def make_daemon(flows, owners):
    """A Daemon whose engine has ``flows`` and whose sockets are ``owners`` (4-tuple -> uid)."""
    engine = ScriptedEngine(flows)
    path = PacketPath(engine, FakeSender(), Verdicts(2, 1, 8))
    return Daemon(Config(), engine, path, "nft", clock=lambda: 50.0,
                  owner=lambda local, remote: owners.get((local, remote)))


def ask(daemon, caller, local, remote, **extra):
    return daemon.handle({"command": "session", "local_addr": local[0], "local_port": local[1],
                          "remote_addr": remote[0], "remote_port": remote[1], **extra}, caller)


LOCAL, REMOTE = ("10.0.0.1", 40000), ("10.0.0.2", 80)


def test_encrypted_connection_answer_uses_the_tcpinc_terms():
    daemon = make_daemon([flow_status()], {(LOCAL, REMOTE): 1000})
    answer = ask(daemon, USER, LOCAL, REMOTE)
    assert answer == {"ok": True, "local": "10.0.0.1:40000", "remote": "10.0.0.2:80",
                      "state": "encrypted", "encrypted": True, "resumed": False,
                      "session_id": SESSION_ID, "negotiated_tep": 0x23, "tep": "X25519",
                      "aead": "AES-128-GCM", "aead_id": 1, "role": "A"}


def test_a_resumed_session_is_reported_resumed_with_the_v_bit_tep():
    resumed = flow_status(session_id="a3" + SESSION_ID[2:], resumed=True)
    answer = ask(make_daemon([resumed], {(LOCAL, REMOTE): 1000}), USER, LOCAL, REMOTE)
    assert answer["resumed"] is True and answer["negotiated_tep"] == 0xA3


def test_plain_and_handshaking_connections_have_no_session_fields():
    keying = flow_status(local="10.0.0.1:40001", state="keying", session_id="", aead="")
    daemon = make_daemon([keying], {(LOCAL, REMOTE): 0, (("10.0.0.1", 40001), REMOTE): 0})
    plain = ask(daemon, ROOT, LOCAL, REMOTE)    # the kernel has it, the engine does not
    assert plain["state"] == "plain" and plain["encrypted"] is False
    pending = ask(daemon, ROOT, ("10.0.0.1", 40001), REMOTE)
    assert pending["state"] == "keying" and pending["encrypted"] is False
    for answer in (plain, pending):
        assert [answer[k] for k in ("session_id", "negotiated_tep", "tep", "aead", "aead_id",
                                    "role")] == [None] * 6


def test_aborted_connection_is_not_encrypted():
    daemon = make_daemon([flow_status(state="aborted")], {(LOCAL, REMOTE): 0})
    answer = ask(daemon, ROOT, LOCAL, REMOTE)
    assert answer["state"] == "aborted" and not answer["encrypted"] and answer["session_id"] is None


def test_ipv6_and_ipv4_mapped_addresses_are_canonical():
    flow = flow_status(local="[fd00:201::1]:5000", remote="[fd00:201::2]:6000", role="B")
    daemon = make_daemon([flow], {(("fd00:201::1", 5000), ("fd00:201::2", 6000)): 0})
    answer = ask(daemon, ROOT, ("fd00:0201:0::1", 5000), ("FD00:201::2", 6000))
    assert answer["role"] == "B" and answer["local"] == "[fd00:201::1]:5000"
    daemon = make_daemon([flow_status()], {(LOCAL, REMOTE): 0})
    assert ask(daemon, ROOT, ("::ffff:10.0.0.1", 40000), ("::ffff:10.0.0.2", 80))["encrypted"]


def test_unprivileged_caller_gets_only_its_own_connections():
    daemon = make_daemon([flow_status()], {(LOCAL, REMOTE): 1000})
    assert ask(daemon, USER, LOCAL, REMOTE)["encrypted"]
    with pytest.raises(ControlError, match="permission denied: no connection 10.0.0.1:40000 "
                                           "-> 10.0.0.2:80 owned by uid 1001"):
        ask(daemon, Caller(3, 1001), LOCAL, REMOTE)
    with pytest.raises(ControlError, match="permission denied"):
        ask(daemon, Caller(3, None), LOCAL, REMOTE)
    assert ask(daemon, ROOT, LOCAL, REMOTE)["encrypted"]


def test_a_connection_without_a_socket():
    """Root still sees what the engine has (e.g. a closed socket's lingering flow); others
    own nothing there; with neither, there is no such connection."""
    daemon = make_daemon([flow_status(state="closed")], {})
    assert ask(daemon, ROOT, LOCAL, REMOTE)["encrypted"]
    with pytest.raises(ControlError, match="permission denied"):
        ask(daemon, USER, LOCAL, REMOTE)
    with pytest.raises(ControlError, match="no such connection"):
        ask(daemon, ROOT, LOCAL, ("10.0.0.2", 81))


@pytest.mark.parametrize("fields, message", [
    ({"local_addr": None}, "local_addr must be an IP address string"),
    ({"local_addr": "10.0.0.300"}, "local_addr: '10.0.0.300' is not an IP address"),
    ({"remote_port": 0}, "remote_port must be a port number"),
    ({"remote_port": True}, "remote_port must be a port number"),
    ({"local_port": "80"}, "local_port must be a port number"),
    ({"remote_addr": "fd00::2"}, "must be of one IP version"),
])
def test_bad_fields_are_named(fields, message):
    daemon = make_daemon([flow_status()], {(LOCAL, REMOTE): 0})
    base = {"command": "session", "local_addr": LOCAL[0], "local_port": LOCAL[1],
            "remote_addr": REMOTE[0], "remote_port": REMOTE[1]}
    with pytest.raises(ControlError, match=message):
        daemon.handle({**base, **fields}, ROOT)


def test_owner_lookup_failure_is_an_error_answer():
    def broken(local, remote):
        raise OSError(13, "Permission denied")
    engine = ScriptedEngine([])
    daemon = Daemon(Config(), engine, PacketPath(engine, FakeSender(), Verdicts(2, 1, 8)), "nft",
                    owner=broken)
    with pytest.raises(ControlError, match="cannot look up the socket's owner: Permission"):
        ask(daemon, ROOT, LOCAL, REMOTE)


def test_socket_owner_finds_real_sockets_by_exact_four_tuple():
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family) as server:
            server.bind((host, 0))
            server.listen()
            with socket.create_connection(server.getsockname()[:2]) as client:
                accepted, _ = server.accept()
                with accepted:
                    local, remote = client.getsockname()[:2], client.getpeername()[:2]
                    assert socket_owner(local, remote) == os.geteuid()
                    assert socket_owner(remote, local) == os.geteuid()
                    assert socket_owner(local, (remote[0], remote[1] ^ 1)) is None


# ---- real credentials: a child process as nobody ------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing uid needs root")


def _as_nobody(action) -> dict:
    """Run ``action()`` in a child process with uid/gid 65534; its JSON-able result."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:   # child: never returns into pytest
        code = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            result = action()
            os.write(write_end, json.dumps(result).encode())
        except BaseException as exc:   # noqa: BLE001 -- reported to the parent
            os.write(write_end, json.dumps({"child_error": repr(exc)}).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 65536):
        data += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    return json.loads(data)


@pytest.fixture
def served():
    """A real daemon handler (real sock_diag owner lookup) on a socket nobody can reach
    (pytest's own temporary directories are private to root); its engine knows one
    encrypted flow per connection the test registers."""
    engine = ScriptedEngine()
    flows = engine._flows
    daemon = Daemon(Config(), engine, PacketPath(engine, FakeSender(), Verdicts(2, 1, 8)), "nft")
    with tempfile.TemporaryDirectory(prefix="tcpcryptd-api-") as directory:
        os.chmod(directory, 0o755)
        path = os.path.join(directory, "c.sock")
        with ControlThread(ControlServer(path, daemon.handle)):
            yield path, flows


def _connection(flows: list, host: str = "127.0.0.1"):
    """A loopback connection (listener, client, accepted) registered as encrypted."""
    server = socket.socket()
    server.bind((host, 0))
    server.listen()
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    local, remote = client.getsockname(), client.getpeername()
    flows.append(flow_status(local=f"{local[0]}:{local[1]}", remote=f"{remote[0]}:{remote[1]}"))
    return server, client, accepted


@needs_root
def test_nobody_may_ping_and_query_its_own_connection_only(served):
    path, flows = served
    server, client, accepted = _connection(flows)   # owned by root
    root_tuple = (client.getsockname(), client.getpeername())

    def as_nobody():
        answers = {}
        own_server = socket.socket()
        own_server.bind(("127.0.0.1", 0))
        own_server.listen()
        own = socket.create_connection(own_server.getsockname())
        answers["ping"] = request(path, {"command": "ping"})["ok"]
        answers["status"] = request(path, {"command": "status"})
        answers["disable"] = request(path, {"command": "disable"})
        try:
            api.session_for(*root_tuple, control=path)
        except api.TcpincError as exc:
            answers["foreign"] = str(exc)
        answers["own"] = request(path, {"command": "session",
                                        "local_addr": "127.0.0.1",
                                        "local_port": own.getsockname()[1],
                                        "remote_addr": "127.0.0.1",
                                        "remote_port": own.getpeername()[1]})
        return answers

    with server, client, accepted:
        answers = _as_nobody(as_nobody)
    assert "child_error" not in answers, answers
    assert answers["ping"] is True
    assert answers["status"] == {"ok": False, "error": "permission denied: status needs root "
                                 "(other users may send ping and session)"}
    assert answers["disable"]["error"].startswith("permission denied: disable needs root")
    assert answers["foreign"].startswith("permission denied: no connection 127.0.0.1:")
    assert answers["foreign"].endswith(f"owned by uid {NOBODY}")
    # the daemon's stand-in engine knows no flow for the child's connection: plain, and
    # answered, not refused
    assert answers["own"]["ok"] is True, answers["own"]
    assert answers["own"]["state"] == "plain"


@needs_root
def test_root_may_query_every_connection_and_the_api_reads_a_socket(served):
    path, flows = served
    server, client, accepted = _connection(flows)
    with server, client, accepted:
        info = api.session(client, control=path)
        assert info.encrypted and info.session_id == bytes.fromhex(SESSION_ID)
        assert info.role == "A" and info.eno_role == 0
        assert info.self_name == b"\x00" + info.session_id
        assert info.peer_name == b"\x01" + info.session_id
        assert (info.negotiated_tep, info.tep, info.aead_id) == (0x23, "X25519", 1)
        # the accepted end has no flow in this stand-in engine: plain
        assert api.wait_session(accepted, control=path, wait=0.1).state == "plain"


def test_a_real_engine_answers_by_flow_key():
    """The engine's own lookup (not the stand-in's): both ends of a handshake, each from
    its own side, and an unknown 4-tuple."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
    from _hand import A_PORT, B_PORT, Pair

    pair = Pair()
    pair.handshake()
    a_end, b_end = ("10.0.0.1", A_PORT), ("10.0.0.2", B_PORT)
    answers = []
    for host, local, remote in ((pair.a, a_end, b_end), (pair.b, b_end, a_end)):
        daemon = Daemon(Config(), host.engine, PacketPath(host.engine, FakeSender(),
                                                          Verdicts(2, 1, 8)), "nft",
                        owner=lambda local, remote: 0)
        answers.append(ask(daemon, ROOT, local, remote))
        [flow] = host.engine.flows()
        assert answers[-1]["session_id"] == flow.session_id
        assert ask(daemon, ROOT, local, (remote[0], remote[1] + 1))["state"] == "plain"
    assert [answer["role"] for answer in answers] == ["A", "B"]
    assert answers[0]["session_id"] == answers[1]["session_id"]
    assert all(answer["encrypted"] and answer["tep"] == "X25519" for answer in answers)
