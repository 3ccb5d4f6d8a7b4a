"""Simultaneous open between two daemons (RFC 8547 §4.5, §4.6).

A and B each bind port 5401 and connect to the other's port 5401.  To make the SYNs cross
for sure (no timing), the router first drops every SYN-only segment; once it has dropped one
from each side both sockets are in SYN-SENT, the rule goes, and the kernels' SYN
retransmissions meet a socket in SYN-SENT at each end: a simultaneous open.  B's daemon sets
b = 1 on that port (``encryption.passive_role_ports``), so B is host B: the connection is
encrypted (ENO in every SYN and SYN-ACK, no plaintext in the capture), both transfers
intact (sha256 both ends), and both daemons report the same session with roles A and B.
Neither end listens, so only a simultaneous open can connect them (at both ends, or at one:
when one SYN is lost again, its sender takes the peer's SYN-ACK as the answer to it).
"""

from __future__ import annotations

import hashlib
import sys
import time

import pytest
from e2e_support import E2E, session_port

pytestmark = pytest.mark.e2e

PORT = 5401
HOLD = "tcpcryptd-e2e-simultaneous-hold"

#: One end: bind the port, connect to the peer's (retrying a refused connect), send the
#: file, half-close, read to EOF; prints sha256 of what it sent and of what it received.
PEER = r"""
import hashlib, socket, sys, time
peer, port, data = sys.argv[1], int(sys.argv[2]), open(sys.argv[3], "rb").read()
deadline = time.monotonic() + 60
while True:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.settimeout(60)
    try:
        s.connect((peer, port))
        break
    except OSError:
        s.close()
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
s.sendall(data); s.shutdown(socket.SHUT_WR)
got = b""
while chunk := s.recv(65536):
    got += chunk
print(hashlib.sha256(data).hexdigest(), hashlib.sha256(got).hexdigest(), flush=True)
"""


def test_simultaneous_open_is_encrypted_with_b_set_on_one_host(e2e: E2E) -> None:
    bed = e2e.bed
    config = bed.workdir / "B-passive-role.toml"
    config.write_text(f"[encryption]\npassive_role_ports = [{PORT}]\n")
    bed.daemon("A")
    bed.daemon("B", ["--config", str(config)])
    script = bed.workdir / "simultaneous_peer.py"
    script.write_text(PEER)
    sizes = {"A": 300_000, "B": 200_000}
    capture = bed.capture("simultaneous")
    bed.r.iptables("-I", "FORWARD", "1", "-p", "tcp", "--syn", "-m", "comment", "--comment",
                   HOLD, "-j", "DROP")
    procs = {label: bed.ns(label).popen(
        [sys.executable, str(script), bed.addr("B" if label == "A" else "A"), str(PORT),
         str(e2e.payload(size))], stdout=-1, stderr=-1) for label, size in sizes.items()}
    deadline = time.monotonic() + 30
    while bed.r.rule_packets("filter", "FORWARD", HOLD) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    bed.r.iptables("-D", "FORWARD", "-p", "tcp", "--syn", "-m", "comment", "--comment",
                   HOLD, "-j", "DROP")
    sent, received = {}, {}
    for label, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        sent[label], received[label] = out.decode().split()
    capture.stop()
    assert received["A"] == sent["B"] and received["B"] == sent["A"]
    assert sent["A"] == hashlib.sha256(e2e.payload(sizes["A"]).read_bytes()).hexdigest()
    report = capture.analyze(e2e.marker)
    e2e.assert_encrypted(report)
    sessions = {}
    for daemon in bed.daemons:
        found = [s for s in daemon.sessions() if session_port(s["local"]) == PORT]
        assert len(found) == 1, found
        sessions[daemon.ns.label] = found[0]
        assert daemon.counters().get("fallback", 0) == 0
    assert sessions["A"]["role"] == "A" and sessions["B"]["role"] == "B"
    assert sessions["A"]["session_id"] == sessions["B"]["session_id"] != ""
