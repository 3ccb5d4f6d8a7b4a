"""Session resumption between two daemons (RFC 8548 §3.5).

Three connections between hosts A and B, one after the other: a curl download (A opens, a
fresh key exchange), an nc upload A -> B (resumes the first session's secret) and an nc
upload B -> A (resumes the second's; B opens, but was B in the original session, so it
still sends with k_ba).  Each transfer is intact (sha256 both ends) and encrypted (ENO in
every SYN and SYN-ACK, no plaintext in the capture).  The resumed connections carry no Init
message on the wire, ``status`` reports them resumed with a session ID whose TEP byte has
the v bit, both key logs mark them ``resumed``, and ``tcpcryptd decode`` decrypts all three
with either key log.
"""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest
from e2e_support import HTTP_PORT, NC_PORT, E2E, counter
from capture_wait import stop_when_fins
from test_e2e_decode import _keylog_daemons

from tcpcryptd.core.constants import INIT1_MAGIC, INIT2_MAGIC
from testbed import pcap_segments, tcpcryptd_command

pytestmark = pytest.mark.e2e

SIZE = 1_000_000
MAGICS = (INIT1_MAGIC.to_bytes(4, "big"), INIT2_MAGIC.to_bytes(4, "big"))


def test_second_and_third_connections_are_resumed(e2e: E2E) -> None:
    keylogs = _keylog_daemons(e2e)
    capture = e2e.bed.capture("resume")
    download = e2e.curl("A", "B", SIZE)
    upload = e2e.nc_send("A", "B", SIZE)
    upload_back = e2e.nc_send("B", "A", SIZE)
    stop_when_fins(capture, directions=6)
    for transfer in (download, upload, upload_back):
        assert transfer.intact, transfer.describe()
    e2e.assert_encrypted(capture.analyze(e2e.marker), connections=3)
    assert e2e.marker not in capture.path.read_bytes()
    a_ip, b_ip = e2e.bed.addr("A"), e2e.bed.addr("B")

    # the wire: Init messages only on the fresh connection (the HTTP one)
    init_ports = set()
    for seg in pcap_segments(capture.path):
        if seg is not None and bytes(seg.payload[:4]) in MAGICS:
            init_ports.add(HTTP_PORT if HTTP_PORT in (seg.sport, seg.dport) else seg.dport)
    assert init_ports == {HTTP_PORT}, init_ports

    # status of both daemons: the nc sessions resumed, the HTTP one not
    daemons = {d.ns.label: d for d in e2e.bed.daemons}
    for label, daemon in daemons.items():
        by_port = {}
        for session in daemon.sessions():
            ports = {int(session[k].rsplit(":", 1)[1]) for k in ("local", "remote")}
            by_port.setdefault(HTTP_PORT if HTTP_PORT in ports else NC_PORT, []).append(session)
        assert [s["resumed"] for s in by_port[HTTP_PORT]] == [False], label
        assert [s["resumed"] for s in by_port[NC_PORT]] == [True, True], label
        for session in by_port[NC_PORT]:
            assert int(session["session_id"][:2], 16) & 0x80
        assert counter(daemon, "resumed") == 2, label

    # the key logs: two resumed sessions each; decode decrypts all three with either
    for label, keylog in keylogs.items():
        markers = [line.split()[-1] for line in keylog.read_text().splitlines()
                   if line.startswith("TCPCRYPT_KEYS")]
        assert sorted(markers) == ["new", "resumed", "resumed"], (label, markers)
        done = subprocess.run([*tcpcryptd_command(), "decode", str(capture.path), "--keylog",
                               str(keylog), "--json"], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert len(report["connections"]) == 3
        payload_sha = hashlib.sha256(e2e.payload(SIZE).read_bytes()).hexdigest()
        for conn in report["connections"]:
            assert conn["status"] == "decrypted", conn
            resumed = conn["server"].endswith(f":{NC_PORT}")
            assert conn["resumed"] == resumed
            for d in conn["directions"]:
                assert d["frames_failed"] == 0 and d["frames_verified"] > 0, d
                assert (d["init_bytes"] == 0) == resumed, d
            if resumed:
                client = conn["client"].rsplit(":", 1)[0]
                sender = next(d for d in conn["directions"] if d["from"] == conn["client"])
                assert sender["sha256"] == payload_sha
                assert client in (a_ip, b_ip)
        servers = {c["server"].rsplit(":", 1)[0] for c in report["connections"]
                   if c["server"].endswith(f":{NC_PORT}")}
        assert servers == {a_ip, b_ip}
