"""4-tuple reuse with both daemons: 20 encrypted connections from one client port (issue 15).

A client bound to a fixed local port connects 20 times, one after the other, to the same
server port.  Even-numbered connections are closed by the server first (its socket is in
TIME-WAIT when the next SYN arrives: RFC 9293 §3.10.7.4, the kernel takes a SYN with a
higher ISN or newer timestamps), odd ones by the client first (its own socket is in
TIME-WAIT when it connects again: ``net.ipv4.tcp_tw_reuse=1``).  Every connection must
complete intact (sha256 at both ends) and encrypted (ENO in every SYN and SYN-ACK, RFC 8547
§4.1; no byte of the plaintext on the wire), and no segment may leave in the plaintext
sequence space: in the capture the ACKs of each connection never go back.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest
from e2e_support import E2E

from tcpcryptd.packet.tcp import ACK, SYN, TCPPacket
from testbed import make_payload, pcap_segments

pytestmark = pytest.mark.e2e

PORT = 5301
CLIENT_PORT = 45678
CONNECTIONS = 20
REQUEST, RESPONSE = 60_000, 40_000

#: The server: per connection, reads an 8-byte header (request length, who closes first),
#: the request, answers with sha256(request) and the response payload, then closes first or
#: after the client's FIN; prints one line per connection.
SERVER = r"""
import hashlib, socket, struct, sys
port, count, response = int(sys.argv[1]), int(sys.argv[2]), open(sys.argv[3], "rb").read()
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", port)); srv.listen(4)
print("listening", flush=True)
for _ in range(count):
    conn, peer = srv.accept()
    conn.settimeout(60)
    def read(n):
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                raise SystemExit(f"short read from {peer}")
            buf += chunk
        return buf
    size, server_first = struct.unpack("!IB", read(5))
    digest = hashlib.sha256(read(size)).hexdigest()
    conn.sendall(bytes.fromhex(digest) + response)
    if not server_first:
        while conn.recv(65536):
            pass
    conn.close()
    print(peer[1], digest, flush=True)
"""

#: The client: one connection from the fixed port; prints sha256(response) and the server's
#: digest of what it received.
CLIENT = r"""
import hashlib, socket, struct, sys
host, port, cport, server_first = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
request, rsize = open(sys.argv[5], "rb").read(), int(sys.argv[6])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", cport)); s.settimeout(60)
s.connect((host, port))
s.sendall(struct.pack("!IB", len(request), server_first) + request)
buf = b""
while len(buf) < 32 + rsize:
    chunk = s.recv(65536)
    if not chunk:
        break
    buf += chunk
if server_first:
    while s.recv(65536):
        pass
s.close()
print(buf[:32].hex(), hashlib.sha256(buf[32:]).hexdigest())
"""


def _segments(pcap: Path) -> list[TCPPacket]:
    return [segment for segment in pcap_segments(pcap)
            if segment is not None and PORT in (segment.sport, segment.dport)]


def _acks_going_back(segments: list[TCPPacket]) -> list[str]:
    """Per connection and direction, every ACK at or above the ones before it.

    A segment belongs to the connection whose sender ISN lies closest below its sequence
    number (its numbers are ``ISN + 1 + offset``); a connection's ISNs come from its SYN and
    SYN-ACK.  An ACK below an earlier one of the same connection is one that left in the
    plaintext sequence space (the wire space is ahead of it by the Init message and the
    frame overhead)."""
    isns: dict[str, list[int]] = {"c": [], "s": []}     # sender ISNs in order
    peer_of: dict[tuple[str, int], int] = {}           # (sender, its ISN) -> peer's ISN
    pending_syn: int | None = None
    problems = []
    high: dict[tuple[str, int], int] = {}
    for seg in segments:
        side = "c" if seg.dport == PORT else "s"
        if seg.flags & SYN:
            if side == "c" and not seg.flags & ACK:
                pending_syn = seg.seq
                if seg.seq not in isns["c"]:
                    isns["c"].append(seg.seq)
            elif side == "s" and seg.flags & ACK and pending_syn is not None:
                if seg.seq not in isns["s"]:
                    isns["s"].append(seg.seq)
                peer_of[("s", seg.seq)] = (seg.ack - 1) & 0xFFFFFFFF
                peer_of[("c", (seg.ack - 1) & 0xFFFFFFFF)] = seg.seq
            continue
        if not seg.flags & ACK or not isns[side]:
            continue
        own = min(isns[side], key=lambda isn: (seg.seq - isn) & 0xFFFFFFFF)
        peer = peer_of.get((side, own))
        if peer is None:
            continue
        offset = (seg.ack - peer - 1) & 0xFFFFFFFF
        if offset >= 1 << 31:
            problems.append(f"{side} ACK {seg.ack} below the peer's ISN {peer}")
            continue
        key = (side, own)
        if offset < high.get(key, 0):
            problems.append(f"{side} (ISN {own}) ACK at offset {offset} after {high[key]}")
        high[key] = max(high.get(key, 0), offset)
    return problems


def test_twenty_connections_from_one_port_through_time_wait(e2e: E2E) -> None:
    bed = e2e.bed
    daemons = e2e.daemons("A", "B")
    bed.ns("A").sysctl("net.ipv4.tcp_tw_reuse", 1)
    request = bed.workdir / "reuse-request.bin"
    response = bed.workdir / "reuse-response.bin"
    request.write_bytes(make_payload(REQUEST, e2e.marker, seed=1))
    response.write_bytes(make_payload(RESPONSE, e2e.marker, seed=2))
    request_sha = hashlib.sha256(request.read_bytes()).hexdigest()
    response_sha = hashlib.sha256(response.read_bytes()).hexdigest()
    server = bed.ns("B").popen([sys.executable, "-c", SERVER, str(PORT), str(CONNECTIONS),
                                str(response)], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdout.readline().strip() == "listening"
    capture = bed.capture("reuse")
    results = []
    for k in range(CONNECTIONS):
        server_first = k % 2 == 0
        done = bed.ns("A").run(sys.executable, "-c", CLIENT, bed.addr("B"), str(PORT),
                               str(CLIENT_PORT), str(int(server_first)), str(request),
                               str(RESPONSE), check=False, timeout=90)
        results.append((k, done.returncode, done.stdout.decode().split(),
                        done.stderr.decode(errors="replace")[-300:]))
        assert done.returncode == 0, results[-1]
        # the previous connection is in TIME-WAIT on one side; tcp_tw_reuse needs its last
        # timestamp to be over a second old before the client may take the port again
        time.sleep(1.1)
    server_lines = [server.stdout.readline().split() for _ in range(CONNECTIONS)]
    server.wait(timeout=30)
    capture.stop()
    for k, _, (server_digest, got_sha), _ in results:
        assert server_digest == request_sha and got_sha == response_sha, f"connection {k}"
    assert [line for line in server_lines if line[1:] != [request_sha]] == []
    assert {int(line[0]) for line in server_lines} == {CLIENT_PORT}
    report = capture.analyze(e2e.marker, ports=[PORT])
    e2e.assert_encrypted(report, connections=CONNECTIONS)
    assert report.syn_with_eno >= CONNECTIONS and report.synack_with_eno >= CONNECTIONS
    assert _acks_going_back(_segments(capture.path)) == []
    counters = {label: daemon.counters() for label, daemon in daemons.items()}
    assert int(counters["B"].get("encrypted", 0)) >= CONNECTIONS, counters
    replaced = sum(int(v) for c in counters.values() for k, v in c.items()
                   if k.startswith("replaced_"))
    assert replaced >= CONNECTIONS - 1, counters
    e2e.assert_no_invalid()
