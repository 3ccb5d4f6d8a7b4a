"""Encrypted transfers with tcpcryptd in both namespaces: curl, nc, iperf3, session IDs.

RFC 8547 §4.1 (ENO option in SYN and SYN-ACK), RFC 8548 §3.4 (33-byte session ID: the
negotiated TEP byte then 32 bytes of CPRF output, the same at both ends of a connection).
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from e2e_support import (
    IPERF_PORT,
    MAIN_SIZE,
    NC_PORT,
    TRANSFER_TIMEOUT,
    E2E,
    session_ids,
)

from tcpcryptd.core.constants import TEP

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(("client", "server", "family"),
                         [("A", "B", 4), ("B", "A", 4), ("A", "B", 6)])
def test_curl_from_http_server(e2e: E2E, client: str, server: str, family: int) -> None:
    e2e.daemons("A", "B")
    capture = e2e.bed.capture("curl")
    transfer = e2e.curl(client, server, MAIN_SIZE, family)
    capture.stop()
    assert transfer.intact, transfer.describe()
    e2e.assert_encrypted(capture.analyze(e2e.marker))
    e2e.assert_no_invalid()


@pytest.mark.parametrize("family", [4, 6])
def test_nc_upload(e2e: E2E, family: int) -> None:
    e2e.daemons("A", "B")
    capture = e2e.bed.capture("nc")
    transfer = e2e.nc_send("A", "B", MAIN_SIZE, family)
    capture.stop()
    assert transfer.intact, transfer.describe()
    e2e.assert_encrypted(capture.analyze(e2e.marker))
    e2e.assert_no_invalid()


def test_iperf3_throughput(e2e: E2E) -> None:
    """iperf3 sends the marked payload file (-F): throughput is reported, integrity is
    checked by curl/nc above; the wire check covers its control and data connections."""
    e2e.daemons("A", "B")
    server = e2e.bed.b.popen(["iperf3", "--server", "--one-off", "--port", str(IPERF_PORT)])
    e2e.bed.b.wait_listening(IPERF_PORT)
    capture = e2e.bed.capture("iperf3")
    done = e2e.bed.a.run("iperf3", "--client", e2e.bed.addr("B"), "--port", str(IPERF_PORT),
                         "--bytes", str(MAIN_SIZE), "--file", str(e2e.payload(MAIN_SIZE)),
                         "--json", timeout=TRANSFER_TIMEOUT)
    server.wait(timeout=30)
    capture.stop()
    result = json.loads(done.stdout)
    sent, received = result["end"]["sum_sent"], result["end"]["sum_received"]
    print(f"iperf3 through tcpcryptd: {received['bits_per_second'] / 1e6:.0f} Mbit/s, "
          f"{received['bytes']} bytes")
    # The server's count may stop short of the client's at the end of the test (iperf3's
    # accounting): throughput only, integrity is curl's and nc's job.
    assert 0 < received["bytes"] <= sent["bytes"]
    assert received["bits_per_second"] > 0
    e2e.assert_encrypted(capture.analyze(e2e.marker), connections=2)


@pytest.mark.parametrize("family", [4, 6])
def test_session_id_is_the_same_on_both_sides(e2e: E2E, family: int) -> None:
    """While an nc connection is open, ``status --json`` of A and B name one 33-byte ID."""
    daemons = e2e.daemons("A", "B")
    data = e2e.payload(256 * 1024).read_bytes()
    received = e2e.bed.workdir / "held-open.bin"
    listener = e2e.nc_listen("B", received, family)
    client = e2e.bed.a.popen(["nc", "-N", e2e.bed.addr("B", family), str(NC_PORT)],
                             stdin=subprocess.PIPE)
    assert client.stdin is not None
    client.stdin.write(data[:65536])
    client.stdin.flush()
    deadline = time.monotonic() + TRANSFER_TIMEOUT
    while received.stat().st_size < 65536:
        assert time.monotonic() < deadline, "first 64 KiB never arrived"
        time.sleep(0.05)

    ids_a = session_ids(daemons["A"], NC_PORT)
    ids_b = session_ids(daemons["B"], NC_PORT)
    assert len(ids_a) == 1, daemons["A"].status()
    assert ids_a == ids_b
    session_id = bytes.fromhex(ids_a[0])
    assert len(session_id) == 33
    assert session_id[0] & 0x7F in {tep.value for tep in TEP}

    client.stdin.write(data[65536:])
    client.stdin.close()
    client.wait(timeout=TRANSFER_TIMEOUT)
    listener.wait(timeout=TRANSFER_TIMEOUT)
    assert received.read_bytes() == data
