"""Rekeying (RFC 8548 §3.8) and keep-alive (§3.9) on real connections.

Rekeying: a duplex transfer through two daemons with
a small ``rekey.bytes``, under 1% loss (iptables statistic DROP in the router).

Both ends send 3 MB at once over one connection; each must receive the other's bytes intact
(sha256 both ends). The capture must show the rekey bit in both directions, at least twice
each on frames that carry data (each host starting generations itself) -- read straight from
the wire stream, Init message then frames -- the key generations must be the same at both
ends' status counters, and ``tcpcryptd decode`` with either daemon's key log (one line per
generation) decrypts the whole capture across the rekeys.

Keep-alive: both kernels probe an idle encrypted connection with TCP keep-alives; the
daemons turn them into empty-frame rekeys whose answers keep the connection alive.
"""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from capture_wait import stop_when_closed
from e2e_support import TRANSFER_TIMEOUT, E2E, counter

from tcpcryptd.core.frame import CONTROL_REKEY, HEADER_LEN, MIN_CLEN
from tcpcryptd.packet.tcp import SYN
from testbed import make_payload, pcap_segments, sha256_file, tcpcryptd_command

pytestmark = pytest.mark.e2e

PORT = 5301
SIZE = 3_000_000
REKEY_BYTES = 400_000

#: One end of the duplex transfer: sends ``send`` while it receives into ``recv`` until EOF;
#: with ``idle`` > 0 it first keeps the connection idle that many seconds with TCP
#: keep-alives every second (the kernel's probes, nothing the program writes).
DUPLEX = r"""
import socket, sys, threading, time
role, host, port, send, recv, idle = sys.argv[1:7]
if role == "serve":
    listener = socket.create_server((host, int(port)))
    sock, _ = listener.accept()
else:
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.settimeout(None)
if float(idle):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 2)
def sender():
    time.sleep(float(idle))
    with open(send, "rb") as f:
        sock.sendall(f.read())
    sock.shutdown(socket.SHUT_WR)
thread = threading.Thread(target=sender)
thread.start()
with open(recv, "wb") as out:
    while chunk := sock.recv(65536):
        out.write(chunk)
thread.join()
sock.close()
"""


def _duplex(e2e: E2E, size: int, idle: float = 0.0) -> dict[str, Path]:
    """A duplex transfer A <-> B of ``size`` bytes each way; intact both ways (sha256 both
    ends). Returns what each end sent."""
    work = e2e.bed.workdir
    sources = {}
    for label, seed in (("A", 1), ("B", 2)):
        sources[label] = work / f"duplex-{label}.bin"
        sources[label].write_bytes(make_payload(size, e2e.marker, seed=seed))
    server = e2e.bed.ns("B").popen(
        [sys.executable, "-c", DUPLEX, "serve", "0.0.0.0", str(PORT), str(sources["B"]),
         str(work / "B-got.bin"), str(idle)])
    e2e.bed.ns("B").wait_listening(PORT)
    started = time.monotonic()
    client = e2e.bed.ns("A").run(
        sys.executable, "-c", DUPLEX, "connect", e2e.bed.addr("B"), str(PORT),
        str(sources["A"]), str(work / "A-got.bin"), str(idle), check=False,
        timeout=TRANSFER_TIMEOUT)
    assert client.returncode == 0, client.stderr.decode(errors="replace")
    assert server.wait(timeout=TRANSFER_TIMEOUT - (time.monotonic() - started)) == 0
    assert sha256_file(work / "B-got.bin") == sha256_file(sources["A"])
    assert sha256_file(work / "A-got.bin") == sha256_file(sources["B"])
    return sources


def _keylog_daemons(e2e: E2E) -> dict[str, Path]:
    keylogs = {}
    for label in ("A", "B"):
        keylogs[label] = e2e.bed.workdir / f"{label}.keys"
        config = e2e.bed.workdir / f"{label}-rekey.toml"
        config.write_text(f'[rekey]\nbytes = {REKEY_BYTES}\n\n'
                          f'[log]\nkeylog = "{keylogs[label]}"\n')
        e2e.bed.daemon(label, ["--config", str(config)])
    return keylogs


def _wire_streams(pcap: Path) -> dict[int, bytes]:
    """Each direction's wire stream on PORT (keyed by source port), first copy of each byte."""
    isn: dict[int, int] = {}
    bytes_at: dict[int, dict[int, int]] = {}
    for seg in pcap_segments(pcap):
        if seg is None or PORT not in (seg.sport, seg.dport):
            continue
        if seg.flags & SYN:
            isn.setdefault(seg.sport, seg.seq)
            continue
        if seg.sport not in isn:
            continue
        stream = bytes_at.setdefault(seg.sport, {})
        offset = (seg.seq - isn[seg.sport] - 1) & 0xFFFFFFFF
        for k, byte in enumerate(bytes(seg.payload)):
            stream.setdefault(offset + k, byte)
    out = {}
    for sport, stream in bytes_at.items():
        data = bytearray()
        while len(data) in stream:
            data.append(stream[len(data)])
        out[sport] = bytes(data)
    return out


def _rekey_frames(wire: bytes) -> tuple[int, int, int]:
    """(frames, rekey frames with data, empty rekey frames) of one wire stream."""
    pos = struct.unpack_from("!I", wire, 4)[0]   # Init message: magic, message_len
    frames = with_data = empty = 0
    while pos + HEADER_LEN <= len(wire):
        clen = struct.unpack_from("!H", wire, pos + 1)[0]
        frames += 1
        if wire[pos] & CONTROL_REKEY:
            if clen > MIN_CLEN:
                with_data += 1
            else:
                empty += 1
        pos += HEADER_LEN + clen
    return frames, with_data, empty


def test_duplex_transfer_crosses_rekeys_in_both_directions_under_loss(e2e: E2E) -> None:
    keylogs = _keylog_daemons(e2e)
    daemon_a, daemon_b = e2e.bed.daemons
    # veth hands the stacks' GSO super-packets to R whole, so R's 1% would drop one in a
    # hundred packets of up to 64 KB: few enough that a run once saw no drop at all.
    # Without TSO on the endpoints' links the kernel cuts them into wire segments before R,
    # as a real link carries them; the daemons still see super-packets.
    for label in ("A", "B"):
        e2e.bed.ns(label).run("ethtool", "-K", "eth0", "tso", "off")
    e2e.bed.forward_loss(0.01)
    capture = e2e.bed.capture("rekey")
    sources = _duplex(e2e, SIZE)   # intact both ways, sha256 at both ends
    stop_when_closed(capture, PORT, timeout=120.0)
    e2e.assert_encrypted(capture.analyze(e2e.marker, ports=(PORT,)))
    assert e2e.bed.loss_drops() > 0
    # the rekey bit on the wire, both directions, each host starting generations itself
    streams = _wire_streams(capture.path)
    assert len(streams) == 2
    for sport, wire in streams.items():
        frames, with_data, empty = _rekey_frames(wire)
        assert with_data >= 2, (sport, frames, with_data, empty)
    generations = counter(daemon_a, "rekeys")
    assert generations >= 4 and counter(daemon_b, "rekeys") == generations
    for daemon in (daemon_a, daemon_b):
        assert counter(daemon, "aborts") == 0
    # the key logs: a line per generation, and decode follows the capture across the rekeys
    for keylog in keylogs.values():
        lines = keylog.read_text().splitlines()
        assert sorted(int(line.split()[7]) for line in lines) == list(range(generations + 1))
        done = subprocess.run([*tcpcryptd_command(), "decode", str(capture.path), "--keylog",
                               str(keylog), "--json"], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        (conn,) = [c for c in json.loads(done.stdout)["connections"]
                   if c["server"].endswith(f":{PORT}")]
        assert conn["status"] == "decrypted"
        for direction in conn["directions"]:
            assert direction["frames_failed"] == 0 and direction["rekeys"] >= 2, direction
            assert direction["fin"] and direction["finp"] and not direction["problems"], (
                direction, capture.kernel_drops)
            sent_by = "A" if direction["from"].startswith(e2e.bed.addr("A") + ":") else "B"
            assert direction["sha256"] == hashlib.sha256(
                sources[sent_by].read_bytes()).hexdigest(), (direction, capture.kernel_drops)


def test_linux_keepalives_become_authenticated_rekeys(e2e: E2E) -> None:
    """Both kernels send TCP keep-alives (every second, given up after two unanswered) on an
    idle encrypted connection: each daemon turns them into empty-frame rekeys (RFC 8548
    §3.9) and the peer's answering rekey frame satisfies the kernel -- the connection
    outlives many probe rounds and then carries data intact both ways."""
    daemon_a, daemon_b = e2e.daemons("A", "B").values()
    capture = e2e.bed.capture("keepalive")
    _duplex(e2e, 200_000, idle=8.0)
    stop_when_closed(capture, PORT, timeout=120.0)
    e2e.assert_encrypted(capture.analyze(e2e.marker, ports=(PORT,)))
    for daemon in (daemon_a, daemon_b):
        assert counter(daemon, "keepalive_rekeys") >= 3
        assert counter(daemon, "aborts") == 0
    assert counter(daemon_a, "rekeys") == counter(daemon_b, "rekeys") >= 6
    for sport, wire in _wire_streams(capture.path).items():
        _, _, empty = _rekey_frames(wire)
        assert empty >= 3, (sport, empty)
