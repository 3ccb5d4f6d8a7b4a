"""The TCPINC API end to end: examples/authchat.py authenticates the tcpcrypt session ID.

Through the two daemons both ends see one session ID and prove the passphrase over it; the
client runs as an unprivileged user (uid 65534), so its ``session`` request passes the
daemon's access control for real. A man in the middle (the router namespace takes over B's
address, runs its own tcpcryptd and relays A's connection to B on a new one) makes two
encrypted connections with different session IDs: both ends detect it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from capture_wait import stop_when_closed
from e2e_support import MB, E2E, session_ids

from testbed import Daemon, Namespace, sha256_file

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
AUTHCHAT = ROOT / "examples" / "authchat.py"
RELAY = Path(__file__).resolve().parent / "tcprelay.py"
PORT = 7000
NOBODY = "65534"
#: Exit statuses of authchat (its module doc).
AUTH_FAILED = 3
#: B's second address: the one the man in the middle re-originates to.
B_HIDDEN = "10.201.2.3"


def _prepare(e2e: E2E, passphrase: str) -> tuple[Path, Path]:
    """The passphrase file and the payload, readable by the unprivileged client; the work
    directory (daemon control sockets) reachable by it."""
    workdir = e2e.bed.workdir
    workdir.chmod(0o755)
    key = workdir / "passphrase"
    key.write_text(passphrase + "\n")
    key.chmod(0o644)
    return key, e2e.payload(1 * MB)


def _server(ns: Namespace, daemon: Daemon, key: Path, out: Path, log: Path) -> subprocess.Popen:
    with open(log, "wb") as sink:
        proc = ns.popen([sys.executable, str(AUTHCHAT), "--control", str(daemon.control),
                         "--passphrase-file", str(key), "serve", "--port", str(PORT),
                         "--output", str(out)], stdout=sink, stderr=subprocess.STDOUT)
    ns.wait_listening(PORT)
    return proc


def _client(ns: Namespace, daemon: Daemon, key: Path, host: str,
            payload: Path) -> subprocess.CompletedProcess:
    """authchat connect as uid/gid 65534 (not root: the daemon's access control applies)."""
    return ns.run("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                  sys.executable, str(AUTHCHAT), "--control", str(daemon.control),
                  "--passphrase-file", str(key), "connect", host, str(PORT),
                  "--input", str(payload), check=False, timeout=90)


def _session_in(output: str) -> str:
    """The session ID (hex) an authchat run printed in its ``authenticated`` line."""
    for line in output.splitlines():
        if line.startswith("authenticated "):
            return line.split(" session ", 1)[1].split()[0]
    raise AssertionError(f"no authenticated line in {output!r}")


def test_authchat_authenticates_the_session_through_the_daemons(e2e: E2E) -> None:
    bed = e2e.bed
    key, payload = _prepare(e2e, "correct horse battery staple")
    daemons = e2e.daemons("A", "B")
    capture = bed.capture("authchat")
    out = bed.workdir / "authchat-received.bin"
    server = _server(bed.b, daemons["B"], key, out, bed.workdir / "authchat-server.log")
    client = _client(bed.a, daemons["A"], key, bed.addr("B"), payload)
    server.wait(timeout=60)
    stop_when_closed(capture, PORT)
    client_out = client.stdout.decode()
    server_out = (bed.workdir / "authchat-server.log").read_text()
    assert client.returncode == 0, client_out + client.stderr.decode()
    assert server.returncode == 0, server_out
    assert sha256_file(out) == sha256_file(payload)          # server end
    assert f"sha256 {sha256_file(payload)} confirmed" in client_out   # client end

    session_id = _session_in(client_out)
    assert _session_in(server_out) == session_id
    assert session_ids(daemons["A"], PORT) == [session_id]
    assert session_ids(daemons["B"], PORT) == [session_id]
    e2e.assert_encrypted(capture.analyze(e2e.marker, ports=[PORT]))
    e2e.assert_no_invalid()


def test_authchat_wrong_passphrase_fails_on_both_ends(e2e: E2E) -> None:
    bed = e2e.bed
    key, payload = _prepare(e2e, "the client's passphrase")
    other = bed.workdir / "other-passphrase"
    other.write_text("the server's passphrase\n")
    daemons = e2e.daemons("A", "B")
    capture = bed.capture("authchat-wrong")
    log = bed.workdir / "authchat-server.log"
    server = _server(bed.b, daemons["B"], other, bed.workdir / "never.bin", log)
    client = _client(bed.a, daemons["A"], key, bed.addr("B"), payload)
    server.wait(timeout=60)
    stop_when_closed(capture, PORT)
    assert client.returncode == AUTH_FAILED, client.stdout + client.stderr
    assert b"authentication FAILED" in client.stderr
    assert server.returncode == AUTH_FAILED, log.read_text()
    assert not (bed.workdir / "never.bin").exists()
    e2e.assert_encrypted(capture.analyze(e2e.marker, ports=[PORT]))


def test_authchat_detects_a_man_in_the_middle(e2e: E2E) -> None:
    """R takes over B's address (a local address there, so its daemon sees the connection
    as its own, with the connection's real addresses), relays to B's other address, and
    encrypts each leg with its own tcpcryptd: both legs are encrypted, their session IDs
    differ, and authchat fails on both ends."""
    bed = e2e.bed
    key, payload = _prepare(e2e, "correct horse battery staple")
    assert bed.r is not None
    bed.b.run("ip", "addr", "add", f"{B_HIDDEN}/24", "dev", "eth0")
    bed.r.run("ip", "addr", "add", f"{bed.addr('B')}/32", "dev", "lo")
    daemons = e2e.daemons("A", "B")
    middle = bed.daemon("R")
    relay = bed.r.popen([sys.executable, str(RELAY), bed.addr("B"), str(PORT), B_HIDDEN,
                         str(PORT)], stdout=subprocess.PIPE)
    assert relay.stdout is not None and relay.stdout.readline() == b"relay: ready\n"
    near = bed.capture("mitm-a-leg", label="A")
    far = bed.capture("mitm-b-leg", label="B")
    log = bed.workdir / "authchat-server.log"
    server = _server(bed.b, daemons["B"], key, bed.workdir / "never.bin", log)
    client = _client(bed.a, daemons["A"], key, bed.addr("B"), payload)
    server.wait(timeout=60)
    stop_when_closed(near, PORT)
    stop_when_closed(far, PORT)

    assert client.returncode == AUTH_FAILED, client.stdout + client.stderr
    assert b"authentication FAILED" in client.stderr
    assert server.returncode == AUTH_FAILED, log.read_text()
    assert not (bed.workdir / "never.bin").exists()
    # each leg is a tcpcrypt session of its own: A's with R, R's with B
    [a_side] = session_ids(daemons["A"], PORT)
    [b_side] = session_ids(daemons["B"], PORT)
    assert a_side != b_side
    assert sorted(session_ids(middle, PORT)) == sorted([a_side, b_side])
    for capture in (near, far):
        e2e.assert_encrypted(capture.analyze(e2e.marker, ports=[PORT]))
