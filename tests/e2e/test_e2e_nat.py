"""Through a NAT: tcpcrypt involves no address or port (the transcript is the ENO options and
Init messages, RFC 8548 §3.3; the session ID comes from the keys, §3.4; the frames'
associated data is their control byte and length, §4.2.2; TCP headers are left to the
middleboxes, §8), so a router that rewrites them changes nothing for the daemons.

The router namespace R translates (testbed ``masquerade``: A behind a source NAT that
rewrites address and source port; ``port_forward``: B reachable only through a port of R's
A-side address). Every transfer is checked by sha256 at both ends; every encrypted flow on
the wire on both sides of R (ENO in each SYN and SYN-ACK, RFC 8547 §4.1; no piece of the
transferred bytes in any segment) and in ``status`` of both daemons (the same session ID at
both ends, RFC 8548 §3.4). The captures also prove the translation happened: the two sides
of R show different addresses and ports for the same connections.

* Source NAT, IPv4 and IPv6: a download and an upload.
* Session resumption through the source NAT (RFC 8548 §3.5): B finds the secret by the
  identifier A offers, and the NAT gives both connections one address.
* Port forward (DNAT), IPv4 and IPv6.
* Plain offload through the NAT (daemon on A only): only the SYN phase is queued.
* kill -9 of A's daemon mid-transfer: no plaintext on either side of R (property 8).
* NAT on the daemon's own host (a local port redirect; a source NAT of the host's own
  connection that rewrites its port): encrypted too, because both queue hooks see the
  local stack's view of the connection (outbound before the host's NAT, inbound after it).
"""

from __future__ import annotations

import socket
import subprocess

import pytest
from capture_wait import stop_when_fins
from e2e_support import (
    HTTP_PORT,
    IMPAIRED_SIZE,
    MAIN_SIZE,
    MB,
    NC_PORT,
    E2E,
    Transfer,
    queued_packets,
    send_rest_and_stop,
    session_port,
    wait_for_size,
)
from test_e2e_resume import MAGICS
from test_e2e_security import leak_summary, plaintext_leaks

from tcpcryptd.packet.tcp import ACK, SYN
from testbed import Capture, Daemon, pcap_segments
from testbed.bed import NAT_PORTS

pytestmark = pytest.mark.e2e

#: Each transfer through the NAT: several MB, small enough for the suite's run time.
SIZE = IMPAIRED_SIZE
#: The resumption test's transfers: its point is the handshake, not the volume.
RESUME_SIZE = 1 * MB
#: The port of R's A-side address forwarded to B's HTTP_PORT.
FORWARDED_PORT = 18080
#: The SYN phase of a plain connection: SYN, SYN-ACK and the first ACK at most (issue 9).
MAX_QUEUED = 3


def _host(endpoint: str) -> str:
    """The address of an ``addr:port`` / ``[v6addr]:port`` endpoint of ``status``."""
    return endpoint.rsplit(":", 1)[0].strip("[]")


def _syns(capture: Capture) -> list[tuple[str, int, str, int]]:
    """(source address, source port, destination address, destination port) of every SYN
    without ACK in the capture (one per connection, plus retransmissions)."""
    found = []
    for seg in pcap_segments(capture.path):
        if seg is not None and seg.flags & SYN and not seg.flags & ACK:
            family = socket.AF_INET if seg.version == 4 else socket.AF_INET6
            found.append((socket.inet_ntop(family, seg.src), seg.sport,
                          socket.inet_ntop(family, seg.dst), seg.dport))
    return found


def _init_ports(capture: Capture) -> set[int]:
    """Server ports of the connections whose capture shows an Init1 or Init2 message (RFC
    8548 §3.3): a fresh key exchange, which a resumed session does without (§3.5)."""
    ports = set()
    for seg in pcap_segments(capture.path):
        if seg is not None and bytes(seg.payload[:4]) in MAGICS:
            ports |= {seg.sport, seg.dport} & {HTTP_PORT, NC_PORT}
    return ports


def _check_wire(e2e: E2E, captures: dict[str, Capture], data: bytes, connections: int) -> None:
    """Both sides of R: ENO in every SYN and SYN-ACK, no plaintext of ``data`` anywhere."""
    for side, capture in captures.items():
        report = capture.analyze(e2e.marker)
        e2e.assert_encrypted(report, connections)
        leaks = plaintext_leaks(capture.path, {"transfer": data}, e2e.marker)
        assert not leaks, f"{side} side of R: {leak_summary(leaks)}"


def _encrypted_sessions(daemon: Daemon, port: int) -> list[dict]:
    """The daemon's session rows on ``port`` (local or remote), each checked encrypted: a
    session ID, TEP and AEAD (RFC 8548 §3.4) and no abort."""
    rows = [row for row in daemon.sessions()
            if port in (session_port(row["local"]), session_port(row["remote"]))]
    for row in rows:
        assert row["state"] in ("encrypted", "closed"), row
        assert row["session_id"] and row["tep"] and row["aead"], row
        assert not row["abort_reason"], row
    return rows


def _ids(rows: list[dict]) -> list[str]:
    return sorted(row["session_id"] for row in rows)


def _assert_intact(*transfers: Transfer) -> None:
    for transfer in transfers:
        assert transfer.intact, transfer.describe()


def _nat_syns(e2e: E2E, captures: dict[str, Capture], family: int
              ) -> set[tuple[str, int]]:
    """Check the source NAT on the captures: A's address and ports on its side of R, R's
    address and ports from ``NAT_PORTS`` on B's side, as many connections on both sides.
    Returns the (address, port) B saw for each connection."""
    low, high = NAT_PORTS
    a_addr, nat_addr = e2e.bed.addr("A", family), e2e.bed.router_addr("B", family)
    inside = {(src, sport) for src, sport, _, _ in _syns(captures["A"])}
    outside = {(src, sport) for src, sport, _, _ in _syns(captures["B"])}
    assert len(inside) == len(outside), (inside, outside)
    assert all(src == a_addr and not low <= sport <= high for src, sport in inside), inside
    assert all(src == nat_addr and low <= sport <= high for src, sport in outside), outside
    return outside


def _matching_sessions(e2e: E2E, daemons: dict[str, Daemon], port: int,
                       outside: set[tuple[str, int]], family: int) -> tuple[dict, dict]:
    """The one encrypted session on ``port`` at A and at B behind the source NAT: the same
    session ID (RFC 8548 §3.4), the same resumed flag, A's peer is B, B's is the NAT."""
    at_a = _encrypted_sessions(daemons["A"], port)
    at_b = _encrypted_sessions(daemons["B"], port)
    assert len(at_a) == len(at_b) == 1, (at_a, at_b)
    assert _ids(at_a) == _ids(at_b)
    assert at_a[0]["resumed"] == at_b[0]["resumed"]
    assert _host(at_a[0]["remote"]) == e2e.bed.addr("B", family)
    assert (_host(at_b[0]["remote"]), session_port(at_b[0]["remote"])) in outside
    return at_a[0], at_b[0]


@pytest.mark.parametrize("family", [4, 6])
def test_source_nat_encrypts_both_ways(e2e: E2E, family: int) -> None:
    """A behind a MASQUERADE that rewrites its address and source port: a download
    (B -> A) and an upload (A -> B) are intact and encrypted on both sides of R, and A and
    B name the same session ID for each, although B knows A only by the NAT's address."""
    daemons = e2e.daemons("A", "B")
    e2e.bed.masquerade()
    captures = e2e.bed.router_captures(f"snat-v{family}")
    download = e2e.curl("A", "B", SIZE, family)
    upload = e2e.nc_send("A", "B", SIZE, family)
    for capture in captures.values():
        stop_when_fins(capture, directions=4)
    _assert_intact(download, upload)
    _check_wire(e2e, captures, e2e.payload(SIZE).read_bytes(), connections=2)
    outside = _nat_syns(e2e, captures, family)
    assert len(outside) == 2, outside
    for port in (HTTP_PORT, NC_PORT):
        _matching_sessions(e2e, daemons, port, outside, family)
    for daemon in daemons.values():
        assert daemon.counters().get("encrypted", 0) == 2, daemon.counters()
    e2e.assert_no_invalid()


def test_resumption_through_source_nat(e2e: E2E) -> None:
    """A second connection from behind the NAT resumes the first session's secret (RFC
    8548 §3.5): B finds it by the identifier A offers, and the NAT gives both connections
    the same address. No Init message on either side of R, ``status`` says resumed at both
    ends. One worker per daemon: each worker keeps its own cache, and through a NAT A and B
    see different ports, so with several workers the two ends' worker choices differ."""
    for label in ("A", "B"):
        config = e2e.bed.workdir / f"{label}-one-worker.toml"
        config.write_text("[queue]\nworkers = 1\n")
        e2e.bed.daemon(label, ["--config", str(config)])
    daemons = {daemon.ns.label: daemon for daemon in e2e.bed.daemons}
    e2e.bed.masquerade()
    captures = e2e.bed.router_captures("snat-resume")
    download = e2e.curl("A", "B", RESUME_SIZE)
    upload = e2e.nc_send("A", "B", RESUME_SIZE)
    for capture in captures.values():
        stop_when_fins(capture, directions=4)
    _assert_intact(download, upload)
    _check_wire(e2e, captures, e2e.payload(RESUME_SIZE).read_bytes(), connections=2)
    outside = _nat_syns(e2e, captures, 4)
    assert len(outside) == 2, outside

    # Only the first connection made a key exchange, seen the same on both sides of R.
    assert _init_ports(captures["A"]) == _init_ports(captures["B"]) == {HTTP_PORT}
    for port, resumed in ((HTTP_PORT, False), (NC_PORT, True)):
        at_a, _ = _matching_sessions(e2e, daemons, port, outside, 4)
        assert at_a["resumed"] is resumed, at_a
    for daemon in daemons.values():
        counters = daemon.counters()
        assert counters.get("encrypted", 0) == 2 and counters.get("resumed", 0) == 1, counters
    e2e.assert_no_invalid()


def test_port_forward_to_b_is_encrypted(e2e: E2E) -> None:
    """B reachable only through a port of R's A-side address (DNAT), IPv4 and IPv6: A
    connects to R, B answers from its own address and port; both downloads encrypted."""
    bed = e2e.bed
    daemons = e2e.daemons("A", "B")
    bed.port_forward(FORWARDED_PORT, HTTP_PORT)
    captures = bed.router_captures("dnat")
    transfers = {family: e2e.curl("A", "B", SIZE, family,
                                  via=(bed.router_addr("A", family), FORWARDED_PORT))
                 for family in (4, 6)}
    for capture in captures.values():
        stop_when_fins(capture, directions=4)
    _assert_intact(*transfers.values())
    _check_wire(e2e, captures, e2e.payload(SIZE).read_bytes(), connections=2)

    # A's side shows R's address and the forwarded port, B's side B's own.
    for family in (4, 6):
        a_addr, b_addr = bed.addr("A", family), bed.addr("B", family)
        assert any(src == a_addr and dst == bed.router_addr("A", family)
                   and dport == FORWARDED_PORT for src, _, dst, dport in _syns(captures["A"]))
        assert any(src == a_addr and dst == b_addr and dport == HTTP_PORT
                   for src, _, dst, dport in _syns(captures["B"]))

    at_a = _encrypted_sessions(daemons["A"], FORWARDED_PORT)
    at_b = _encrypted_sessions(daemons["B"], HTTP_PORT)
    assert len(at_a) == len(at_b) == 2, (at_a, at_b)
    assert _ids(at_a) == _ids(at_b)
    assert {_host(row["remote"]) for row in at_a} == {bed.router_addr("A", f) for f in (4, 6)}
    assert {_host(row["remote"]) for row in at_b} == {bed.addr("A", f) for f in (4, 6)}
    e2e.assert_no_invalid()


def test_plain_connection_through_nat_is_offloaded(e2e: E2E) -> None:
    """Daemon on A only, A behind the source NAT, IPv4 and IPv6: B's SYN-ACK has no ENO,
    the connection is plain and, after its SYN phase, never queued (the kernel's own queue
    count, as in test_e2e_offload)."""
    daemon = e2e.bed.daemon("A")
    e2e.bed.masquerade()
    e2e.http_server("B")
    for family in (4, 6):
        before = queued_packets(e2e.bed.a)
        transfer = e2e.curl("A", "B", MAIN_SIZE, family)
        queued = queued_packets(e2e.bed.a) - before
        assert transfer.intact, transfer.describe()
        assert queued <= MAX_QUEUED, f"A queued {queued} packets of a plain connection"
    counters = daemon.counters()
    assert counters.get("daemon_offloaded", 0) == 2, counters
    assert counters.get("fallback_no-eno", 0) == 2, counters
    assert counters.get("encrypted", 0) == 0, counters


def test_kill9_through_nat_never_leaks(e2e: E2E) -> None:
    """An encrypted upload A -> B through the source NAT; A's daemon is killed (SIGKILL)
    after the first megabyte arrived. The stack goes on sending with nobody to encrypt: not
    a byte of it may cross either side of R in plaintext, and B receives no more."""
    bed = e2e.bed
    daemons = e2e.daemons("A", "B")
    bed.masquerade()
    data = e2e.payload(IMPAIRED_SIZE).read_bytes()
    first_part = 1 * MB
    captures = bed.router_captures("nat-kill9")
    received = bed.workdir / "nat-kill9-received.bin"
    listener = e2e.nc_listen("B", received)
    client = bed.a.popen(["nc", "-N", bed.addr("B"), str(NC_PORT)], stdin=subprocess.PIPE)
    assert client.stdin is not None
    client.stdin.write(data[:first_part])
    client.stdin.flush()
    wait_for_size(received, first_part)
    at_a = _encrypted_sessions(daemons["A"], NC_PORT)
    at_b = _encrypted_sessions(daemons["B"], NC_PORT)
    assert len(at_a) == 1 and _ids(at_a) == _ids(at_b), (at_a, at_b)
    assert _host(at_b[0]["remote"]) == bed.router_addr("B")
    daemons["A"].kill()

    send_rest_and_stop(client, listener, data[first_part:])
    for side, capture in captures.items():
        capture.stop()
        report = capture.analyze(e2e.marker)
        assert report.syn_with_eno == 1 and report.synack_with_eno == 1, report.summary()
        leaks = plaintext_leaks(capture.path, {"upload": data}, e2e.marker)
        assert not leaks, f"{side} side of R after kill -9: {leak_summary(leaks)}"
        if capture.kernel_drops:
            pytest.fail(f"tcpdump lost {capture.kernel_drops} packets: the proof is incomplete")
    got = received.read_bytes()
    assert data.startswith(got), "B received bytes that A never sent"
    assert len(got) < len(data), "the flow continued without its daemon"


# --------------------------------------------------------------------------------------------
# NAT on the daemon's own host. The outbound queue (raw OUTPUT, priority -300) runs before
# the host's NAT in POSTROUTING, the inbound one (mangle INPUT) after PREROUTING's NAT (-100)
# has undone a source NAT or applied a redirect: the daemon sees the connection under one
# 4-tuple in both directions. With the inbound queue in mangle PREROUTING (-150, before the
# NAT) both tests below failed: the redirect stayed plain, the source NAT hung.

def test_port_redirect_on_the_daemons_host(e2e: E2E) -> None:
    """B redirects FORWARDED_PORT to its HTTP server's port itself (nat REDIRECT, as a web
    server on an unprivileged port does): A's download through it is encrypted."""
    daemons = e2e.daemons("A", "B")
    e2e.bed.b.both_families("-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport",
                            str(FORWARDED_PORT), "-j", "REDIRECT", "--to-ports", str(HTTP_PORT))
    capture = e2e.bed.capture("redirect-on-b")
    transfer = e2e.curl("A", "B", RESUME_SIZE,
                        via=(e2e.bed.addr("B"), FORWARDED_PORT))
    assert transfer.intact, transfer.describe()
    stop_when_fins(capture, directions=2)
    e2e.assert_encrypted(capture.analyze(e2e.marker))
    assert len(_encrypted_sessions(daemons["B"], HTTP_PORT)) == 1, daemons["B"].status()


def test_source_nat_on_the_daemons_host(e2e: E2E) -> None:
    """The router R runs the daemon and connects to B itself through its own MASQUERADE
    (which rewrites the source port of R's connections too): the download is
    intact and encrypted."""
    daemons = {label: e2e.bed.daemon(label) for label in ("R", "B")}
    e2e.bed.masquerade()
    capture = e2e.bed.capture("snat-on-r")
    transfer = e2e.curl("R", "B", RESUME_SIZE)
    assert transfer.intact, transfer.describe()
    stop_when_fins(capture, directions=2)
    e2e.assert_encrypted(capture.analyze(e2e.marker))
    assert len(_encrypted_sessions(daemons["R"], HTTP_PORT)) == 1, daemons["R"].status()
