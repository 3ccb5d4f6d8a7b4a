"""The traffic of the benchmark, run inside a :class:`~bench.bed.BenchBed` (A -> B unless a
workload is told ``client="B"``: B connects to A and sends).

Every function returns what it measured or raises :class:`~testbed.BedError`;
nothing here decides what a number means (bench/report.py does).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.bed import REPO_ROOT, BenchBed, read_line
from bench.diagnostics import RunDiagnostics
from tcpcryptd.engine.config import EngineConfig
from testbed import BedError, Namespace, sha256_file

IPERF_PORT = 5201
NC_PORT = 5001
RR_PORT = 7000
HOLD_PORT = 7001


def wait_listening(ns: Namespace, port: int, timeout: float = 15.0) -> None:
    """Wait until a TCP socket listens on ``port`` in the namespace (``ss -ltn``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ns.run("ss", "-H", "-ltn", f"sport = :{port}").stdout.strip():
            return
        time.sleep(0.05)
    raise BedError(f"[{ns.label}] nothing listens on port {port}")


def _normal_aead(name: str) -> str:
    """``AES-128-GCM``, ``aes_128_gcm``... -> ``AES128GCM`` (for comparing names)."""
    return re.sub(r"[^A-Z0-9]", "", name.upper())


def encrypted_sessions(bed: BenchBed, port: int) -> list[dict]:
    """A's daemon's sessions to B's ``port`` that completed the key exchange."""
    sessions = bed.status("A").get("sessions", [])
    return [s for s in sessions if s.get("session_id") and s.get("aead")
            and str(s.get("remote", "")).endswith(f":{port}")]


# ---------------------------------------------------------------------------------------------
# iperf3


@dataclass
class IperfRun:
    mbps: float
    bytes: int
    #: utime+stime of both daemons during the run (None without daemons)
    daemon_cpu_s: float | None
    #: AEAD names of the encrypted sessions seen while it ran (tcpcryptd only)
    aeads: set[str] = field(default_factory=set)
    #: machine idle %, daemon CPU and run-queue wait %, NFQUEUE backlog, load average
    #: (:meth:`bench.diagnostics.RunDiagnostics.stop`)
    diagnostics: dict = field(default_factory=dict)


def _other(label: str) -> str:
    return {"A": "B", "B": "A"}[label]


def _run_diagnostics(bed: BenchBed) -> RunDiagnostics:
    """Diagnostics of the daemons and of the NFQUEUE of every namespace that has one."""
    readers = {}
    queued = {"plain": (), "one_daemon": (bed.a,), "syn_passthrough": (bed.a,)}.get(
        bed.mode.kind, (bed.a, bed.b))
    if queued:
        for ns in queued:
            readers[ns.label] = (lambda ns=ns: ns.run(
                "cat", "/proc/net/netfilter/nfnetlink_queue").stdout.decode())
    return RunDiagnostics(bed.daemon_pids(), readers)


def iperf3(bed: BenchBed, seconds: float, parallel: int = 1, client: str = "A",
           reverse: bool = False) -> IperfRun:
    """One ``iperf3 -c`` run from ``client`` (it connects and sends; with ``reverse``, the
    server sends: ``-R``) to the other namespace; for tcpcryptd (both ends) the session table
    is read mid-run."""
    server_ns, client_ns = bed.bed.ns(_other(client)), bed.bed.ns(client)
    server = server_ns.popen(["iperf3", "-s", "-1", "-p", str(IPERF_PORT)])
    wait_listening(server_ns, IPERF_PORT)
    cpu_before = bed.daemon_cpu_seconds() if bed.daemons else None
    diagnostics = _run_diagnostics(bed)
    diagnostics.start()
    sender = client_ns.popen(["iperf3", "-c", bed.address(_other(client)), "-p", str(IPERF_PORT),
                              "-t", str(seconds), "-P", str(parallel), "-J",
                              *(("-R",) if reverse else ())],
                             stdout=subprocess.PIPE)
    aeads: set[str] = set()
    if bed.mode.kind == "tcpcryptd":
        time.sleep(min(1.0, seconds / 3))
        aeads = {_normal_aead(s["aead"]) for s in encrypted_sessions(bed, IPERF_PORT)}
    try:
        out, _ = sender.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired as exc:
        sender.kill()
        diagnostics.stop()
        raise BedError(f"iperf3 did not finish within {seconds + 60:.0f}s") from exc
    figures = diagnostics.stop()
    cpu_s = bed.daemon_cpu_seconds() - cpu_before if cpu_before is not None else None
    server.wait(timeout=30)
    try:
        report = json.loads(out)
    except json.JSONDecodeError as exc:
        raise BedError(f"iperf3 printed no JSON (exit {sender.returncode})") from exc
    if "error" in report:
        raise BedError(f"iperf3: {report['error']}")
    received = report["end"]["sum_received"]
    return IperfRun(received["bits_per_second"] / 1e6, int(received["bytes"]), cpu_s, aeads,
                   figures)


# ---------------------------------------------------------------------------------------------
# File transfer with nc, checked with sha256


@dataclass
class Transfer:
    size: int
    seconds: float
    intact: bool
    detail: str

    @property
    def mbps(self) -> float:
        return self.size * 8 / self.seconds / 1e6


def nc_transfer(bed: BenchBed, source: Path, timeout: float) -> Transfer:
    """``nc -N`` in A sends ``source`` to ``nc -l`` in B; time until the listener saw EOF."""
    received = bed.workdir / f"received-{time.monotonic_ns()}.bin"
    with open(received, "wb") as sink:
        listener = bed.b.popen(["nc", "-4", "-l", str(NC_PORT)], stdout=sink)
    wait_listening(bed.b, NC_PORT)
    size = source.stat().st_size
    started = time.monotonic()
    with open(source, "rb") as stdin:
        sender = bed.a.popen(["nc", "-N", bed.server_address, str(NC_PORT)], stdin=stdin)
    try:
        listener.wait(timeout=timeout)
        seconds = time.monotonic() - started
        sender.wait(timeout=30)
    except subprocess.TimeoutExpired:
        for proc in (sender, listener):
            proc.kill()
            proc.wait(timeout=10)
        got = received.stat().st_size
        received.unlink()
        return Transfer(size, timeout, False, f"timed out after {timeout:.0f}s with {got} of "
                                              f"{size} bytes received")
    sent_sha, received_sha = sha256_file(source), sha256_file(received)
    got = received.stat().st_size
    received.unlink()
    if sent_sha != received_sha:
        return Transfer(size, seconds, False, f"sha256 mismatch: sent {sent_sha[:16]}, "
                                              f"received {received_sha[:16]} ({got} bytes)")
    return Transfer(size, seconds, True, "")


# ---------------------------------------------------------------------------------------------
# Connection setup rate and latency


def _conntool(ns: Namespace, *args: str, **kwargs) -> subprocess.Popen:
    return ns.popen([sys.executable, "-m", "bench.conntool", *args], cwd=str(REPO_ROOT),
                    **kwargs)


def _start_server(bed: BenchBed, port: int, hold: bool, label: str = "B",
                  echo: bool = False) -> subprocess.Popen:
    server = _conntool(bed.bed.ns(label), "serve", "--port", str(port),
                       *(["--hold"] if hold else []), *(["--echo"] if echo else []),
                       stdout=subprocess.PIPE)
    if not read_line(server, 15.0).startswith("serve: ready"):
        raise BedError("bench.conntool serve did not start")
    return server


@dataclass
class ConnectionRun:
    connections: int
    failures: int
    seconds: float
    latencies_ms: list[float]

    @property
    def per_s(self) -> float:
        return self.connections / self.seconds


def _conntool_result(client: subprocess.Popen, server: subprocess.Popen, what: str,
                     timeout: float) -> dict:
    """The JSON a bench.conntool ``what`` run printed; the server is stopped either way."""
    try:
        out, _ = client.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        client.kill()
        raise BedError(f"bench.conntool {what} did not finish") from exc
    finally:
        server.terminate()
        server.wait(timeout=10)
    try:
        return json.loads(out)
    except json.JSONDecodeError as exc:
        raise BedError(f"bench.conntool {what} printed no JSON (exit {client.returncode})"
                       ) from exc


def connection_rate(bed: BenchBed, count: int, seconds: float,
                    client: str = "A") -> ConnectionRun:
    """Sequential connect + 1-byte request/response + close from ``client`` to the other
    namespace (bench.conntool rr)."""
    server = _start_server(bed, RR_PORT, hold=False, label=_other(client))
    rr = _conntool(bed.bed.ns(client), "rr", "--host", bed.address(_other(client)), "--port",
                   str(RR_PORT), "--count", str(count), "--seconds", str(seconds),
                   stdout=subprocess.PIPE)
    result = _conntool_result(rr, server, "rr", seconds + 120)
    return ConnectionRun(result["connections"], result["failures"], result["seconds"],
                         result["latencies_ms"])


def exchange_rate(bed: BenchBed, seconds: float, connections: int = 4, size: int = 100
                  ) -> float:
    """Request/response round trips per second (bench.conntool exchange), A -> B; a wrong
    answer fails the run."""
    server = _start_server(bed, RR_PORT, hold=False, echo=True)
    client = _conntool(bed.a, "exchange", "--host", bed.server_address, "--port", str(RR_PORT),
                       "--connections", str(connections), "--size", str(size), "--seconds",
                       str(seconds), stdout=subprocess.PIPE)
    result = _conntool_result(client, server, "exchange", seconds + 60)
    if result["mismatches"]:
        raise BedError(f"{result['mismatches']} answers differed from their requests")
    return result["exchanges"] / result["seconds"]


# ---------------------------------------------------------------------------------------------
# Idle encrypted flows and daemon memory


@dataclass
class HoldCheckpoint:
    wanted: int
    held: int
    failed: int
    #: daemon label -> VmRSS in bytes once the flows were up
    rss: dict[str, int]


#: Seconds between a checkpoint and the RSS reading: the flows just opened become idle (the
#: engine frees an idle flow's cipher contexts after ``aead_idle_release``, and the daemon
#: then returns the freed heap, tcpcryptd/daemon/heap.py), plus 2 s.
IDLE_SETTLE = EngineConfig().aead_idle_release + 2.0


def idle_flows(bed: BenchBed, checkpoints: list[int], timeout: float,
               settle: float = IDLE_SETTLE) -> list[HoldCheckpoint]:
    """Hold idle connections A -> B and read both daemons' RSS at 0 and at each checkpoint.

    The 0 figure is taken after one warm-up connection, so code paths loaded on first use
    are not counted as per-flow memory.
    """
    connection_rate(bed, 1, 10.0)
    time.sleep(settle)
    results = [HoldCheckpoint(0, 0, 0, bed.daemon_rss())]
    server = _start_server(bed, HOLD_PORT, hold=True)
    client = _conntool(bed.a, "hold", "--host", bed.server_address, "--port", str(HOLD_PORT),
                       "--checkpoints", ",".join(map(str, checkpoints)), "--timeout",
                       str(timeout), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert client.stdin is not None
    try:
        for wanted in checkpoints:
            line = read_line(client, timeout + 30)
            found = re.match(r"held (\d+) failed (\d+)", line)
            if not found:
                raise BedError(f"bench.conntool hold: unexpected output {line!r}")
            time.sleep(settle)
            results.append(HoldCheckpoint(wanted, int(found.group(1)), int(found.group(2)),
                                          bed.daemon_rss()))
            client.stdin.write(b"\n")
            client.stdin.flush()
            if int(found.group(1)) < wanted:
                break
    finally:
        client.stdin.close()
        for proc in (client, server):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return results
