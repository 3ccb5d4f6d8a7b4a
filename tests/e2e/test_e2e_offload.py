"""Plain connections leave the queue after their SYN phase: plain TCP at kernel speed.

Once the ENO handshake has decided "plain" (RFC 8547 §4.6: no ENO in the peer's SYN or
SYN-ACK, no ENO on the third segment, encryption disabled), the daemon marks its verdict and
the kernel queues none of the connection's later packets, in either direction. Counted from
the kernel's own queue ids (``/proc/net/netfilter/nfnetlink_queue``), never from timing.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from e2e_support import (HTTP_PORT, IMPAIRED_SIZE, MAIN_SIZE, MB, NC_PORT, E2E, counter,
                          queued_packets, session_ids)
from test_e2e_security import spoof

from tcpcryptd.daemon import control
from tcpcryptd.daemon.firewall import spread_program
from testbed import Daemon, sha256_file

pytestmark = pytest.mark.e2e

#: The SYN phase: SYN, SYN-ACK and the first ACK at most.
MAX_QUEUED = 3
#: Seconds the daemon may take to hear of a connection the kernel made plain (hang
#: protection: the kernel sends its batch after 0.1 s).
FORGET_TIMEOUT = 30.0


def _queued(e2e: E2E) -> dict[str, int]:
    return {label: queued_packets(e2e.bed.ns(label)) for label in ("A", "B")}


def _assert_offloaded(e2e: E2E, before: dict[str, int], limits: dict[str, int]) -> None:
    after = _queued(e2e)
    for label, limit in limits.items():
        queued = after[label] - before[label]
        assert queued <= limit, f"{label} queued {queued} packets of a plain connection"


def _forgotten(daemon: Daemon) -> None:
    """Wait until the daemon has forgotten every flow: the kernel's word on a connection it
    made plain reaches it in nflog batches (hang protection only, never a timing check)."""
    deadline = time.monotonic() + FORGET_TIMEOUT
    while daemon.sessions():
        assert time.monotonic() < deadline, daemon.status()
        time.sleep(0.1)


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("client", ["A", "B"])
def test_connection_with_a_peer_without_daemon_is_offloaded(e2e: E2E, family: int,
                                                            client: str) -> None:
    """Daemon on A only. A connects: only its SYN (ENO added) is queued; the kernel makes
    the connection plain on B's SYN-ACK without ENO once A's stack acknowledges it, and the
    daemon forgets its flow, counted as a fallback for no ENO. B connects: its SYN without
    ENO is left plain by the kernel alone, nothing of the connection is queued."""
    daemon = e2e.bed.daemon("A")
    server = "B" if client == "A" else "A"
    e2e.http_server(server)
    before = _queued(e2e)
    transfer = e2e.curl(client, server, MAIN_SIZE, family)
    assert transfer.intact, transfer.describe()
    if client == "A":
        assert _queued(e2e)["A"] - before["A"] == 1
        counters = daemon.counters()
        assert counters.get("fallback_no-eno", 0) == 1, counters
        assert counters.get("offloaded_no-eno-syn-ack", 0) == 1, counters
        assert counters.get("daemon_offloaded", 0) == 1, counters
        assert counters.get("plain", 0) == 0, counters
        _forgotten(daemon)
    else:
        _assert_offloaded(e2e, before, {"A": 0})
        counters = daemon.counters()
        assert counters.get("plain_no-eno-syn", 0) >= 1, counters
        assert counters.get("plain", 0) >= 1, counters
    assert counters.get("encrypted", 0) == 0, counters


def test_connections_started_while_disabled_are_offloaded_on_both_hosts(e2e: E2E) -> None:
    daemons = e2e.daemons("A", "B")
    daemons["A"].cli("disable")
    for client, server in (("A", "B"), ("B", "A")):
        e2e.http_server(server)
        before = _queued(e2e)
        transfer = e2e.curl(client, server, MAIN_SIZE)
        assert transfer.intact, transfer.describe()
        _assert_offloaded(e2e, before, {"A": MAX_QUEUED, "B": MAX_QUEUED})
    assert counter(daemons["A"], "encrypted") == counter(daemons["B"], "encrypted") == 0


def test_late_fallback_on_the_third_segment_is_offloaded(e2e: E2E) -> None:
    """A middlebox strips ENO from SYN-ACKs: A falls back on the SYN-ACK, B only on the
    third segment, which lacks ENO (RFC 8547 §4.6); after that neither queues anything.

    B decides on the third segment itself, so a segment the client sends right behind it
    (curl's request) can reach B's queue while the daemon is still deciding: one more.
    """
    daemons = e2e.daemons("A", "B")
    e2e.bed.r.both_families("-t", "mangle", "-A", "FORWARD", "-p", "tcp", "--tcp-flags",
                            "SYN,ACK", "SYN,ACK", "-j", "TCPOPTSTRIP", "--strip-options", "69")
    e2e.http_server("B")
    before = _queued(e2e)
    transfer = e2e.curl("A", "B", MAIN_SIZE)
    assert transfer.intact, transfer.describe()
    _assert_offloaded(e2e, before, {"A": MAX_QUEUED, "B": MAX_QUEUED + 1})
    assert counter(daemons["A"], "fallback_no-eno") == 1, daemons["A"].counters()
    assert counter(daemons["B"], "fallback") == 1, daemons["B"].counters()
    assert counter(daemons["A"], "encrypted") == counter(daemons["B"], "encrypted") == 0


def _set_elements(e2e: E2E, label: str, name: str) -> int:
    """Elements of the table's set ``name`` in namespace ``label``."""
    listing = json.loads(e2e.bed.ns(label).run("nft", "-j", "list", "set", "inet", "tcpcryptd",
                                                name).stdout)
    return sum(len(item["set"].get("elem", ())) for item in listing["nftables"] if "set" in item)


def test_a_full_offload_set_bounds_kernel_state_and_leaves_connections_working(
        e2e: E2E) -> None:
    """``firewall.offload_max`` bounds the set: beyond it, a plain connection's outbound
    packets are queued (the daemon leaves each plain again), and its bytes still arrive."""
    config = e2e.bed.workdir / "offload-max.toml"
    config.write_text("[firewall]\noffload_max = 2\n")
    e2e.bed.daemon("A", ["--config", str(config)])
    e2e.http_server("A")
    queued = []
    for _ in range(4):
        before = _queued(e2e)
        transfer = e2e.curl("B", "A", IMPAIRED_SIZE)       # A sends: outbound needs the set
        assert transfer.intact, transfer.describe()
        queued.append(_queued(e2e)["A"] - before["A"])
        assert _set_elements(e2e, "A", "plain4") <= 2
    # the first two connections fill the set and are offloaded; the next two find it full
    assert queued[:2] == [0, 0], queued
    assert min(queued[2:]) > MAX_QUEUED, queued


_CLIENT = """
import socket, sys
data = open(sys.argv[3], "rb").read()
half = len(data) // 2
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
sock.sendall(data[:half])
print("half", flush=True)
sys.stdin.readline()
sock.sendall(data[half:])
sock.close()
"""


def test_an_offloaded_connection_keeps_working_across_a_daemon_restart(e2e: E2E) -> None:
    daemon = e2e.bed.daemon("A")
    source = e2e.payload(8 * 1024 * 1024)
    out = e2e.bed.workdir / "restart-received.bin"
    listener = e2e.nc_listen("B", out)
    client = e2e.bed.ns("A").popen(
        [sys.executable, "-c", _CLIENT, e2e.bed.addr("B"), str(NC_PORT), str(source)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert client.stdout is not None and client.stdin is not None
    assert client.stdout.readline() == b"half\n"
    assert daemon.stop() == 0
    daemon.start()
    client.stdin.write(b"go\n")
    client.stdin.close()
    assert client.wait(timeout=60) == 0
    listener.wait(timeout=60)
    assert sha256_file(out) == sha256_file(source)


#: Prints the sequence number of the first SYN from TCP port argv[1] to argv[2] that crosses
#: the namespace (IPv4 over Ethernet), after "ready" once the socket is open.
_SYN_WATCH = """
import socket, struct, sys
sport, dport = int(sys.argv[1]), int(sys.argv[2])
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
print("ready", flush=True)
while True:
    frame = sock.recv(2048)
    if frame[12:14] != b"\\x08\\x00" or frame[23] != 6:
        continue
    tcp = 14 + (frame[14] & 0x0F) * 4
    ports = struct.unpack_from(">HH", frame, tcp)
    if ports == (sport, dport) and frame[tcp + 13] & 0x12 == 0x02:
        print(struct.unpack_from(">I", frame, tcp + 4)[0], flush=True)
        break
"""


def test_a_forged_syn_ack_without_eno_in_conntracks_window_changes_nothing(e2e: E2E) -> None:
    """The kernel's shortcut for a SYN-ACK without ENO is only tentative: R forges one,
    while B holds back A's ENO SYN, whose acknowledgment conntrack accepts (its window
    admits it) but A's stack does not (it is not A's ISN + 1). It makes the connection
    tentative (not queued, in the set); the stack answers it with a RST, which confirms
    nothing; B's real SYN-ACK, with ENO, goes through the daemon and cancels the tentative
    state, so A's ACK to it is queued and gets ENO: the connection is encrypted and intact,
    nothing is counted plain or offloaded, the set is empty."""
    daemons = e2e.daemons("A", "B")
    e2e.http_server("B")
    b = e2e.bed.ns("B")
    hold = ("PREROUTING", "-p", "tcp", "--dport", str(HTTP_PORT), "--syn", "-j", "DROP")
    b.run("iptables", "-t", "raw", "-I", *hold)
    port = 45069
    watch = e2e.bed.ns("R").popen([sys.executable, "-c", _SYN_WATCH, str(port), str(HTTP_PORT)],
                                  stdout=subprocess.PIPE)
    assert watch.stdout is not None and watch.stdout.readline() == b"ready\n"
    capture = e2e.bed.capture("forged-syn-ack-in-window")
    result: list = []
    fetch = threading.Thread(target=lambda: result.append(e2e.curl(
        "A", "B", IMPAIRED_SIZE, extra=("--local-port", str(port)))))
    fetch.start()
    isn = int(watch.stdout.readline())          # A's ENO SYN is out (and dropped by B)
    spoof(e2e.bed, [{"src": e2e.bed.addr("B"), "dst": e2e.bed.addr("A"), "sport": HTTP_PORT,
                     "dport": port, "seq": 123456789, "ack": isn + 1 - 1000, "flags": "SA"}])
    tentative = _set_elements(e2e, "A", "tentative4")
    b.run("iptables", "-t", "raw", "-D", *hold)     # A's next SYN retransmission reaches B
    fetch.join(timeout=180)
    capture.stop()
    assert tentative == 1       # the kernel took it, the queue did not
    assert result and result[0].intact, result[0].describe() if result else "curl hung"
    e2e.assert_encrypted(capture.analyze(e2e.marker, (HTTP_PORT,)))
    assert session_ids(daemons["A"], port)
    counters = daemons["A"].counters()
    for name in ("fallback", "daemon_offloaded", "offloaded_no-eno-syn-ack", "plain"):
        assert counters.get(name, 0) == 0, counters
    assert _set_elements(e2e, "A", "tentative4") == 0


_MODEL = importlib.util.spec_from_file_location(
    "bpf_model", Path(__file__).resolve().parent.parent / "daemon" / "bpf_model.py")
bpf_model = importlib.util.module_from_spec(_MODEL)
_MODEL.loader.exec_module(bpf_model)


def test_with_workers_the_worker_that_has_the_flow_forgets_it(e2e: E2E) -> None:
    """``queue.workers = 2`` on A only: A's connections to B spread over both workers
    (client ports picked with the spread program's model); each connection queues only its
    SYN, and every worker is left without a flow (each hears of every connection the kernel
    made plain and forgets the ones it has)."""
    workers = 2
    config = e2e.bed.workdir / "offload-workers.toml"
    config.write_text(f"[queue]\nworkers = {workers}\n")
    daemon = e2e.bed.daemon("A", ["--config", str(config)])
    e2e.http_server("B")
    ports: dict[int, int] = {}
    port = 43000
    while sorted(ports.values()) != [0, 0, 1, 1]:
        packet = bpf_model.ipv4_tcp(e2e.bed.addr("A"), e2e.bed.addr("B"), port, HTTP_PORT)
        bucket = next(k for k in range(workers)
                      if bpf_model.run(spread_program(4, k, workers), packet))
        if list(ports.values()).count(bucket) < 2:
            ports[port] = bucket
        port += 1
    for port in ports:
        before = queued_packets(e2e.bed.a)
        transfer = e2e.curl("A", "B", MB, extra=("--local-port", str(port)))
        assert transfer.intact, transfer.describe()
        assert queued_packets(e2e.bed.a) - before == 1
    deadline = time.monotonic() + FORGET_TIMEOUT
    while any(control.request(f"{daemon.control}.w{k}", {"command": "status"})["sessions"]
              for k in range(workers)):
        assert time.monotonic() < deadline, daemon.status()
        time.sleep(0.1)
    counters = daemon.counters()
    assert counters.get("fallback_no-eno", 0) == len(ports), counters
    assert counters.get("daemon_nflog_lost", 0) == 0, counters
