"""Workers (``queue.workers = 2``) in both namespaces: each connection, both directions, is
handled by one worker (the one the spread program picks), connections between one pair of
hosts spread over the workers, and a worker killed mid-transfer never lets its encrypted
connection go on in plaintext and is started again. IPv4 and IPv6."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from e2e_support import (
    HTTP_PORT,
    IMPAIRED_SIZE,
    MB,
    NC_PORT,
    E2E,
    send_rest_and_stop,
    session_port,
    wait_for_size,
)

from tcpcryptd.daemon import control
from tcpcryptd.daemon.firewall import spread_program
from testbed import Daemon

pytestmark = pytest.mark.e2e

WORKERS = 2
_MODEL = importlib.util.spec_from_file_location(
    "bpf_model", Path(__file__).resolve().parent.parent / "daemon" / "bpf_model.py")
bpf_model = importlib.util.module_from_spec(_MODEL)
_MODEL.loader.exec_module(bpf_model)


def _start(e2e: E2E) -> dict[str, Daemon]:
    config = e2e.bed.workdir / "workers.toml"
    config.write_text(f"[queue]\nworkers = {WORKERS}\n")
    return {label: e2e.bed.daemon(label, ["--config", str(config)]) for label in ("A", "B")}


def _bucket(e2e: E2E, family: int, sport: int, dport: int) -> int:
    make = bpf_model.ipv4_tcp if family == 4 else bpf_model.ipv6_tcp
    packet = make(e2e.bed.addr("A", family), e2e.bed.addr("B", family), sport, dport)
    return next(k for k in range(WORKERS)
                if bpf_model.run(spread_program(family, k, WORKERS), packet))


def _ports(e2e: E2E, family: int, dport: int, per_worker: int, first: int) -> dict[int, int]:
    """Client port -> the worker the model picks, ``per_worker`` ports for each worker."""
    chosen: dict[int, int] = {}
    port = first
    while any(list(chosen.values()).count(k) < per_worker for k in range(WORKERS)):
        k = _bucket(e2e, family, port, dport)
        if list(chosen.values()).count(k) < per_worker:
            chosen[port] = k
        port += 1
    return chosen


def _worker_rows(daemon: Daemon, index: int) -> list[dict]:
    return control.request(f"{daemon.control}.w{index}", {"command": "status"})["sessions"]


def _status(daemon: Daemon) -> dict:
    return control.request(str(daemon.control), {"command": "status"})


@pytest.mark.parametrize("family", (4, 6))
def test_each_connection_one_worker_both_ways_and_pairs_spread(e2e: E2E, family: int) -> None:
    daemons = _start(e2e)
    ports = _ports(e2e, family, HTTP_PORT, per_worker=2, first=41000 + 100 * family)
    capture = e2e.bed.capture(f"workers-v{family}")
    for port in ports:
        transfer = e2e.curl("A", "B", 1 * MB, family, extra=("--local-port", str(port)))
        assert transfer.intact, transfer.describe()
    capture.stop()
    e2e.assert_encrypted(capture.analyze(e2e.marker), connections=len(ports))
    for label, daemon in daemons.items():
        for index in range(WORKERS):
            rows = [row for row in _worker_rows(daemon, index) if row.get("session_id")]
            client_end = "local" if label == "A" else "remote"
            seen = {session_port(row[client_end]) for row in rows} & set(ports)
            # exactly the connections the spread program gives this worker, nothing of the
            # others' (a connection split over two workers would have no session at all)
            assert seen == {p for p, k in ports.items() if k == index}, (label, index, rows)
    total = _status(daemons["A"])
    assert len(total["daemon"]["workers"]) == WORKERS
    assert {session_port(r["local"]) for r in total["sessions"]} >= set(ports)


@pytest.mark.parametrize("family", (4, 6))
def test_a_killed_worker_never_lets_its_flow_go_on_in_plaintext_and_restarts(
        e2e: E2E, family: int) -> None:
    daemons = _start(e2e)
    data = e2e.payload(IMPAIRED_SIZE).read_bytes()
    port, index = next(iter(_ports(e2e, family, NC_PORT, per_worker=1, first=42000).items()))
    capture = e2e.bed.capture(f"worker-kill-v{family}")
    received = e2e.bed.workdir / f"worker-kill-v{family}.bin"
    listener = e2e.nc_listen("B", received, family)
    client = e2e.bed.a.popen(["nc", "-N", "-p", str(port), e2e.bed.addr("B", family),
                              str(NC_PORT)], stdin=subprocess.PIPE)
    assert client.stdin is not None
    client.stdin.write(data[:MB])
    client.stdin.flush()
    wait_for_size(received, MB, timeout=60)
    rows = [r for r in _worker_rows(daemons["A"], index) if session_port(r["local"]) == port]
    assert rows and rows[0]["session_id"], rows
    worker = _status(daemons["A"])["daemon"]["workers"][index]
    os.kill(worker["pid"], signal.SIGKILL)

    send_rest_and_stop(client, listener, data[MB:])
    capture.stop()
    report = capture.analyze(e2e.marker)
    assert report.marker_hits == 0, report.summary()
    got = received.read_bytes()
    assert data.startswith(got) and len(got) < len(data), "the flow went on without its worker"

    # the supervisor started the worker again; a new connection in its bucket is encrypted
    deadline = time.monotonic() + 30
    while True:
        now = _status(daemons["A"])["daemon"]["workers"][index]
        if now["alive"] and now["restarts"] == 1 and now["pid"] != worker["pid"]:
            break
        assert time.monotonic() < deadline, now
        time.sleep(0.1)
    again_port = next(p for p, k in _ports(e2e, family, HTTP_PORT, 1, 43000).items()
                      if k == index)
    capture = e2e.bed.capture(f"worker-restarted-v{family}")
    again = e2e.curl("A", "B", 2 * MB, family, extra=("--local-port", str(again_port)))
    capture.stop()
    assert again.intact, again.describe()
    e2e.assert_encrypted(capture.analyze(e2e.marker))
