"""Helpers of the end-to-end tests: transfers with real programs and the checks they share.

Transfers use unmodified curl, python -m http.server, nc and iperf3; every transfer is checked
by sha256 at both ends, every encrypted flow on the wire (ENO option in SYN and SYN-ACK, the
plaintext marker nowhere in the capture).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from testbed import (
    BedError,
    CaptureReport,
    Daemon,
    Namespace,
    TestBed,
    make_payload,
    sha256_file,
)

MB = 1_000_000
#: The issue's size for the main curl / nc / iperf3 checks.
MAIN_SIZE = 50 * MB
#: Loss and impairment runs: smaller, so the whole e2e set stays within a few minutes.
IMPAIRED_SIZE = 8 * MB
#: Hang protection only; no test depends on how fast anything is.
TRANSFER_TIMEOUT = 120.0

HTTP_PORT = 8080
NC_PORT = 5001
IPERF_PORT = 5201


# --------------------------------------------------------------------------------------------
# Results


@dataclass
class Transfer:
    """Outcome of one application-level transfer."""

    exit_code: int
    sent_sha: str
    received_sha: str
    sent: Path
    received: Path
    seconds: float
    stderr: str = ""

    @property
    def intact(self) -> bool:
        return self.exit_code == 0 and self.sent_sha == self.received_sha

    @property
    def received_size(self) -> int:
        return self.received.stat().st_size if self.received.exists() else 0

    def received_is_prefix(self) -> bool:
        """True if every received byte is the sent byte at that position (no corruption)."""
        got = self.received.read_bytes() if self.received.exists() else b""
        return self.sent.read_bytes().startswith(got)

    def describe(self) -> str:
        return (f"exit={self.exit_code} sent={self.sent_sha[:16]} "
                f"received={self.received_sha[:16]} in {self.seconds:.1f}s {self.stderr.strip()}")


# --------------------------------------------------------------------------------------------
# The per-test helper


class E2E:
    """A test bed plus the transfers and checks the tests share."""

    def __init__(self, bed: TestBed) -> None:
        self.bed = bed
        self.marker = f"TCPCRYPTD-PLAINTEXT-MARKER-{bed.run_id}".encode()
        self._payloads: dict[int, Path] = {}
        self._servers: dict[tuple[str, int], subprocess.Popen] = {}

    # ---- data

    def payload(self, size: int) -> Path:
        """A file of ``size`` random bytes with the marker every 4 KiB (cached per size)."""
        if size not in self._payloads:
            path = self.bed.workdir / "www" / f"payload-{size}.bin"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(make_payload(size, self.marker, seed=size))
            self._payloads[size] = path
        return self._payloads[size]

    # ---- daemons

    def daemons(self, *labels: str) -> dict[str, Daemon]:
        return {label: self.bed.daemon(label) for label in labels}

    # ---- curl <-> python -m http.server

    def http_server(self, label: str) -> None:
        """``python -m http.server`` in namespace ``label``, serving the payload directory."""
        if (label, HTTP_PORT) in self._servers:
            return
        ns = self.bed.ns(label)
        www = self.bed.workdir / "www"
        www.mkdir(exist_ok=True)
        self._servers[(label, HTTP_PORT)] = ns.popen(
            [sys.executable, "-m", "http.server", "--bind", "::", "--directory", str(www),
             str(HTTP_PORT)])
        ns.wait_listening(HTTP_PORT)

    def curl(self, client: str, server: str, size: int, family: int = 4,
             timeout: float = TRANSFER_TIMEOUT, extra: tuple[str, ...] = (),
             via: tuple[str, int] | None = None) -> Transfer:
        """``curl`` in ``client`` fetches a payload from http.server in ``server``, at
        ``server``'s address or at ``via`` (address, port), e.g. a port forward to it."""
        source = self.payload(size)
        self.http_server(server)
        out = self.bed.workdir / f"curl-{client}-{time.monotonic_ns()}.bin"
        address, port = via or (self.bed.addr(server, family), HTTP_PORT)
        url = f"http://{self.bed.url_host(address)}:{port}/{source.name}"
        started = time.monotonic()
        done = self.bed.ns(client).run(
            "curl", "--silent", "--show-error", "--max-time", str(int(timeout)), "--output",
            str(out), *extra, url, check=False, timeout=timeout + 30)
        return Transfer(done.returncode, sha256_file(source), _sha_or_empty(out), source, out,
                        time.monotonic() - started, done.stderr.decode(errors="replace"))

    # ---- nc

    def nc_listen(self, label: str, out: Path, family: int = 4) -> subprocess.Popen:
        ns = self.bed.ns(label)
        sink = open(out, "wb")
        proc = ns.popen(["nc", f"-{family}", "-l", str(NC_PORT)], stdout=sink)
        sink.close()
        ns.wait_listening(NC_PORT)
        return proc

    def nc_send(self, client: str, server: str, size: int, family: int = 4,
                timeout: float = TRANSFER_TIMEOUT) -> Transfer:
        """``nc`` in ``client`` sends a payload to ``nc -l`` in ``server`` (upload)."""
        source = self.payload(size)
        out = self.bed.workdir / f"nc-{server}-{time.monotonic_ns()}.bin"
        listener = self.nc_listen(server, out, family)
        started = time.monotonic()
        with open(source, "rb") as stdin:
            done = subprocess.run(
                self.bed.ns(client).argv(["nc", "-N", self.bed.addr(server, family),
                                          str(NC_PORT)]),
                stdin=stdin, capture_output=True, timeout=timeout)
        try:
            listener.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise BedError("nc -l did not see the end of the stream") from exc
        return Transfer(done.returncode or listener.returncode, sha256_file(source),
                        _sha_or_empty(out), source, out, time.monotonic() - started,
                        done.stderr.decode(errors="replace"))

    def impaired_round_trip(self, capture_name: str, family: int,
                            impairment: tuple[str, ...] = ()) -> tuple[CaptureReport, dict]:
        """A curl download and an nc upload (A <-> B, ``IMPAIRED_SIZE`` each) through the
        router, optionally with ``tools/netimpair.py impairment`` running there; both must
        arrive intact. Returns the capture's report and netimpair's stats (empty without)."""
        capture = self.bed.capture(capture_name)
        if impairment:
            self.bed.start_impairment(*impairment)
        download = self.curl("A", "B", IMPAIRED_SIZE, family)
        upload = self.nc_send("A", "B", IMPAIRED_SIZE, family)
        stats = self.bed.stop_impairment() if impairment else {}
        capture.stop()
        assert download.intact, download.describe()
        assert upload.intact, upload.describe()
        return capture.analyze(self.marker), stats

    # ---- wire checks

    def assert_encrypted(self, report: CaptureReport, connections: int = 1) -> None:
        """ENO (kind 69) in every SYN and SYN-ACK, the marker nowhere (RFC 8547 §4.1)."""
        assert report.syn >= connections and report.synack >= connections, report.summary()
        assert report.syn_with_eno == report.syn, report.summary()
        assert report.synack_with_eno == report.synack, report.summary()
        assert report.marker_hits == 0, report.summary()
        if report.kernel_drops:
            warnings.warn(f"incomplete capture, the no-plaintext proof is partial: "
                          f"{report.summary()}", stacklevel=2)

    def assert_plaintext(self, report: CaptureReport) -> None:
        """A flow without ENO in the SYN-ACK: plain TCP, so the marker is visible (control)."""
        assert report.synack >= 1 and report.synack_with_eno == 0, report.summary()
        assert report.marker_hits > 0, report.summary()

    def assert_no_invalid(self) -> None:
        """Conntrack (strict) saw one consistent sequence space at both endpoints."""
        invalid = self.bed.invalid_packets()
        assert invalid["A"] == 0 and invalid["B"] == 0, f"conntrack INVALID packets: {invalid}"


def _sha_or_empty(path: Path) -> str:
    return sha256_file(path) if path.exists() else sha256_file("/dev/null")


def session_ids(daemon: Daemon, port: int) -> list[str]:
    """Session IDs (hex) of the daemon's sessions whose local or remote port is ``port``."""
    found = []
    for session in daemon.sessions():
        ports = {session_port(session["local"]), session_port(session["remote"])}
        if port in ports and session.get("session_id"):
            found.append(session["session_id"])
    return found


def session_port(endpoint: str | dict | list) -> int:
    """Port of an endpoint as status --json gives it ("addr:port", "[v6]:port" or object)."""
    if isinstance(endpoint, dict):
        return int(endpoint["port"])
    if isinstance(endpoint, list):
        return int(endpoint[1])
    return int(str(endpoint).rsplit(":", 1)[1])


def queued_packets(ns: Namespace) -> int:
    """Packets the kernel has handed to NFQUEUE so far in namespace ``ns``, every queue.

    The ``id_sequence`` column of ``/proc/net/netfilter/nfnetlink_queue``: the id of the
    last packet queued, one per packet (the kernel's own count, not the daemon's).
    """
    text = ns.run("cat", "/proc/net/netfilter/nfnetlink_queue").stdout.decode()
    return sum(int(line.split()[7]) for line in text.splitlines() if line.strip())


def counter(daemon: Daemon, *names: str) -> int:
    """Sum of the named status counters (missing names count 0)."""
    counters = daemon.counters()
    return sum(int(counters.get(name, 0)) for name in names)


def wait_for_size(path: Path, size: int, timeout: float = TRANSFER_TIMEOUT) -> None:
    """Wait until the file ``path`` holds at least ``size`` bytes (hang protection only)."""
    deadline = time.monotonic() + timeout
    while not path.exists() or path.stat().st_size < size:
        assert time.monotonic() < deadline, f"{path.name}: fewer than {size} bytes arrived"
        time.sleep(0.05)


def _write_all(pipe, data: bytes) -> None:
    """Feed ``data`` to a process's stdin until done or the process is gone."""
    try:
        for start in range(0, len(data), 65536):
            pipe.write(data[start:start + 65536])
        pipe.close()
    except (BrokenPipeError, ValueError, OSError):
        pass


def send_rest_and_stop(client: subprocess.Popen, listener: subprocess.Popen, rest: bytes) -> None:
    """After the daemon (or a worker) was killed mid-transfer: let the client's stack go on
    sending ``rest`` (and retransmitting) for a while with nobody to encrypt it, then stop
    both programs. The caller's capture and received file then show what leaked."""
    writer = threading.Thread(target=_write_all, args=(client.stdin, rest), daemon=True)
    writer.start()
    writer.join(timeout=5)
    time.sleep(2)                        # an observation window; no assertion depends on it
    client.kill()
    listener.kill()
    writer.join(timeout=10)
