"""Failures: the daemon killed mid-transfer, and a middlebox that tampers with a frame.

Properties 4 (no application byte in plaintext on an ENO flow, also when the daemon dies) and
3 / RFC 8548 §3.6 of docs/daemon.md, "What the tests check" (AEAD failure aborts the connection; no unverified byte
reaches the application).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable

import pytest
from e2e_support import (
    IMPAIRED_SIZE,
    MB,
    NC_PORT,
    TRANSFER_TIMEOUT,
    E2E,
    send_rest_and_stop,
    session_ids,
    wait_for_size,
)
from test_e2e_security import leak_summary, plaintext_leaks

pytestmark = pytest.mark.e2e

#: curl's "operation timed out": a hang, which is not the error a tampered frame must cause.
CURL_TIMED_OUT = 28
#: what an upload of the kill -9 tests has delivered before the daemon dies
FIRST_PART = 1 * MB


def _own_rules(e2e: E2E) -> str:
    """The daemon's chains still present in A (both iptables back ends)."""
    found = []
    for tool in ("iptables-save", "ip6tables-save", "iptables-legacy-save",
                 "ip6tables-legacy-save"):
        out = e2e.bed.a.run(tool, check=False).stdout.decode(errors="replace")
        found += [line for line in out.splitlines() if "TCPCRYPT" in line]
    return "\n".join(found)


def _notrack(e2e: E2E) -> None:
    """A's own ``CT --notrack`` rules for the connections to B's port NC_PORT (a busy
    server's usual exemption): conntrack never sees them, so they have no connmark."""
    for chain, match in (("OUTPUT", "--dport"), ("PREROUTING", "--sport")):
        e2e.bed.a.run("iptables", "-t", "raw", "-I", chain, "-p", "tcp", match, str(NC_PORT),
                      "-j", "CT", "--notrack")


def _upload_first_megabyte(e2e: E2E, name: str):
    """An upload A -> B through nc, started: its first megabyte has arrived. Returns the
    data, the capture, B's received file, and the listener and client processes."""
    data = e2e.payload(IMPAIRED_SIZE).read_bytes()
    capture = e2e.bed.capture(name)
    received = e2e.bed.workdir / f"{name}-received.bin"
    listener = e2e.nc_listen("B", received)
    client = e2e.bed.a.popen(["nc", "-N", e2e.bed.addr("B"), str(NC_PORT)],
                             stdin=subprocess.PIPE)
    assert client.stdin is not None
    client.stdin.write(data[:FIRST_PART])
    client.stdin.flush()
    wait_for_size(received, FIRST_PART)
    return data, capture, received, listener, client


def _upload_killed_midway(e2e: E2E, daemons: dict, name: str,
                          after_kill: Callable[[], None] | None = None) -> None:
    """An encrypted upload A -> B whose daemon in A dies by kill -9 after the first megabyte
    arrived (then ``after_kill`` runs); the local stack goes on sending the rest (and
    retransmitting) with nobody to encrypt it. Nothing of it may be on the wire in
    plaintext, and B holds a prefix only."""
    data, capture, received, listener, client = _upload_first_megabyte(e2e, name)
    assert len(session_ids(daemons["B"], NC_PORT)) == 1
    daemons["A"].kill()
    if after_kill is not None:
        after_kill()
    send_rest_and_stop(client, listener, data[FIRST_PART:])
    capture.stop()
    report = capture.analyze(e2e.marker)
    assert report.syn_with_eno == 1 and report.synack_with_eno == 1, report.summary()
    assert report.marker_hits == 0, report.summary()
    leaks = plaintext_leaks(capture.path, {"upload": data}, e2e.marker)
    assert not leaks, leak_summary(leaks)
    got = received.read_bytes()
    assert data.startswith(got)
    assert len(got) < len(data), "the flow continued without its daemon"


def test_kill9_never_leaks_a_connection_conntrack_does_not_track(e2e: E2E) -> None:
    """A busy server often exempts its ports from conntrack (``-j CT --notrack`` in raw):
    such a connection's connmark never says encrypted, so the guard that reads it cannot
    stop the stack's plaintext after kill -9. The guard for packets conntrack does not
    track does: the daemon's verdicts recorded the connection's 4-tuple as encrypted, and
    its packets without the daemon's mark are dropped."""
    daemons = e2e.daemons("A", "B")
    _notrack(e2e)
    _upload_killed_midway(e2e, daemons, "crash-untracked")


def test_disable_after_kill9_keeps_guarding_a_connection_conntrack_does_not_track(
        e2e: E2E) -> None:
    """The unit's ExecStopPost (``tcpcryptd disable``) runs right after a crash. It must not
    remove the guard of an encrypted connection conntrack does not track: the daemon's
    verdicts put such a connection's 4-tuple in the table's ``@enc4`` set, and ``disable``
    keeps the table while the set holds it (it said so), so the stack's later segments are
    still never sent in plaintext."""
    daemons = e2e.daemons("A", "B")
    _notrack(e2e)
    said = []
    _upload_killed_midway(e2e, daemons, "crash-untracked-disable",
                          after_kill=lambda: said.append(daemons["A"].disable().stdout.decode()))
    assert said[0].startswith("no tcpcryptd is running: kept the guard table 'inet tcpcryptd' "
                              "for 1 connection(s)"), said
    assert "1 untracked" in said[0], said
    assert _own_rules(e2e) == ""
    assert "table inet tcpcryptd" in e2e.bed.a.run("nft", "list", "tables").stdout.decode()


def test_a_restarted_daemon_does_not_let_an_untracked_encrypted_connection_go_plain(
        e2e: E2E) -> None:
    """kill -9, then the unit restarts the daemon: the new instance does not know the
    connection and takes its packets for plain. The new table carries the old one's @enc
    elements over and the untracked guard does not count the plain mark, so the stack's
    segments are still never sent in plaintext."""
    daemons = e2e.daemons("A", "B")
    _notrack(e2e)
    _upload_killed_midway(e2e, daemons, "crash-untracked-restart",
                          after_kill=lambda: e2e.bed.daemon("A"))


def test_an_untracked_encrypted_connection_that_closed_is_guarded_for_its_closing_time_only(
        e2e: E2E) -> None:
    """The 4-tuple of an encrypted connection conntrack does not track is recorded while it
    runs; once both ends closed it (FINs), the record lives no longer than the closing
    timeout (30 minutes: the local stack may still retransmit data sent before its FIN),
    not the five days of an open connection, so ``tcpcryptd disable`` can soon remove the
    table."""
    e2e.daemons("A", "B")
    _notrack(e2e)
    capture = e2e.bed.capture("untracked-closed")
    transfer = e2e.nc_send("A", "B", 2 * MB)
    capture.stop()
    assert transfer.intact, transfer.describe()
    e2e.assert_encrypted(capture.analyze(e2e.marker))
    assert not plaintext_leaks(capture.path, {"upload": e2e.payload(2 * MB).read_bytes()},
                               e2e.marker)
    listed = json.loads(e2e.bed.a.run("nft", "-j", "list", "set", "inet", "tcpcryptd",
                                      "enc4").stdout)
    elements = next(item["set"] for item in listed["nftables"] if "set" in item)["elem"]
    assert [element["elem"]["val"]["concat"][2:] for element in elements] == [
        [e2e.bed.addr("B"), NC_PORT]]
    assert 0 < elements[0]["elem"]["expires"] <= 1800


def test_a_plain_connection_conntrack_does_not_track_survives_kill9(e2e: E2E) -> None:
    """A plain connection conntrack does not track (B runs no daemon, so ENO is not agreed)
    goes through the daemon packet by packet while it runs; after kill -9 it carries on
    without it: the untracked guard stops only the 4-tuples the daemon saw encrypted."""
    daemons = e2e.daemons("A")
    _notrack(e2e)
    data, capture, received, listener, client = _upload_first_megabyte(
        e2e, "plain-untracked-kill9")
    assert daemons["A"].counters().get("fallback_no-eno") == 1   # the daemon had it
    daemons["A"].kill()
    try:   # the timeouts are hang protection only
        client.communicate(data[FIRST_PART:], timeout=TRANSFER_TIMEOUT)
        listener.wait(timeout=TRANSFER_TIMEOUT)
    finally:
        client.kill()
        listener.kill()
        capture.stop()
    assert hashlib.sha256(received.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    report = capture.analyze(e2e.marker)
    assert report.syn_with_eno == 1, report.summary()     # A's daemon offered ENO
    e2e.assert_plaintext(report)


def test_kill9_mid_transfer_never_leaks_then_recovers(e2e: E2E) -> None:
    daemons = e2e.daemons("A", "B")
    # 1. An encrypted upload A -> B; the daemon in A dies after the first megabyte arrived.
    _upload_killed_midway(e2e, daemons, "crash")

    # 2. While the daemon is down, new flows pass as plain TCP (queue bypass).
    capture = e2e.bed.capture("daemon-down")
    plain = e2e.curl("A", "B", 2 * MB)
    capture.stop()
    assert plain.intact, plain.describe()
    down = capture.analyze(e2e.marker)
    assert down.syn_with_eno == 0, down.summary()
    e2e.assert_plaintext(down)

    # 3. `tcpcryptd disable` cleans up after the crash; a restarted daemon encrypts again.
    daemons["A"].disable()
    assert _own_rules(e2e) == ""
    e2e.bed.daemon("A")
    capture = e2e.bed.capture("restarted")
    again = e2e.curl("A", "B", IMPAIRED_SIZE)
    capture.stop()
    assert again.intact, again.describe()
    e2e.assert_encrypted(capture.analyze(e2e.marker))


def test_tampered_frame_resets_the_connection(e2e: E2E) -> None:
    daemons = e2e.daemons("A", "B")
    capture = e2e.bed.capture("tamper")
    e2e.bed.start_impairment("--tamper", "30")
    transfer = e2e.curl("A", "B", IMPAIRED_SIZE, timeout=120)
    stats = e2e.bed.stop_impairment()
    capture.stop()

    assert stats["tampered"] == 1, stats
    assert transfer.exit_code not in (0, CURL_TIMED_OUT), transfer.describe()
    assert transfer.received_is_prefix(), "corrupted bytes reached the application"
    assert transfer.received_size < IMPAIRED_SIZE
    aborts = sum(daemon.counters().get("aborts", 0) for daemon in daemons.values())
    assert aborts >= 1
    report = capture.analyze(e2e.marker)
    assert report.marker_hits == 0, report.summary()
