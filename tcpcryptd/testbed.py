"""Network-namespace test bed for end-to-end runs of tcpcryptd.

Shared by the end-to-end tests (tests/e2e), ``make demo`` (tcpcryptd.demo) and the benchmark.
Everything lives in namespaces this module creates with a random suffix; nothing touches the
root namespace's interfaces, routes or firewall, and :meth:`TestBed.close` removes it all
(processes first, then namespaces), also after a failure.

Topologies (addresses exist only inside the bed's namespaces)::

    router=True:   A eth0 --- ra R rb --- eth0 B     A: 10.201.1.1  fd00:201:1::1
                                                     R: 10.201.1.254 / 10.201.2.254 (forwards)
                                                     B: 10.201.2.1  fd00:201:2::1
    router=False:  A eth0 ------------- eth0 B       A: 10.201.0.1  fd00:201::1
                                                     B: 10.201.0.2  fd00:201::2

Conntrack is loaded and strict in every namespace (``nf_conntrack_tcp_be_liberal=0`` and a
``--ctstate INVALID`` rule: DROP at the endpoints, count-only in the router), so a sequence-space
mistake of the daemon shows up as a stall and a counter, not as silent acceptance.

The daemon is driven through its CLI exactly as a user would: ``tcpcryptd run --control PATH``
inside ``ip netns exec``, ``tcpcryptd status --json``, SIGTERM/SIGKILL, ``tcpcryptd disable``.
Captures are taken with tcpdump and read by :func:`analyze_pcap` (a small pcap reader on
``struct``: ENO option kind 69 in SYN/SYN-ACK, RFC 8547 §4.1, and plaintext-marker search).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tcpcryptd.packet import options as tcp_options
from tcpcryptd.packet.tcp import ACK, SYN, PacketError, TCPPacket

__all__ = [
    "BedError",
    "Capture",
    "CaptureReport",
    "Daemon",
    "Namespace",
    "TestBed",
    "analyze_pcap",
    "environment_problem",
    "make_payload",
    "sha256_file",
    "tcpcryptd_command",
]

#: iptables comments tagging the bed's own rules (so their counters can be read back).
INVALID_COMMENT = "tcpcryptd-testbed-invalid"
LOSS_COMMENT = "tcpcryptd-testbed-loss"
IMPAIR_COMMENT = "tcpcryptd-testbed-impair"
IMPAIR_QUEUE = 4242


class BedError(RuntimeError):
    """A test-bed step failed (command error, daemon did not come up, timeout)."""


def tcpcryptd_command() -> list[str]:
    """The installed ``tcpcryptd`` console script next to this interpreter (as a user runs it)."""
    script = Path(sys.executable).with_name("tcpcryptd")
    if script.exists():
        return [str(script)]
    found = shutil.which("tcpcryptd")
    if found:
        return [found]
    return [sys.executable, "-m", "tcpcryptd"]


def environment_problem() -> str | None:
    """Why end-to-end runs cannot work here (not root, no ``ip``/iptables/NFQUEUE), or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables, NFQUEUE)"
    for tool in ("ip", "iptables", "ip6tables", "tcpdump"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = f"tcbprobe{secrets.token_hex(3)}"
    try:
        subprocess.run(["ip", "netns", "add", probe], check=True, capture_output=True, timeout=10)
    except (subprocess.SubprocessError, OSError) as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        rule = subprocess.run(
            ["ip", "netns", "exec", probe, "iptables", "-t", "raw", "-A", "OUTPUT", "-p", "tcp",
             "-j", "NFQUEUE", "--queue-num", "1", "--queue-bypass"],
            capture_output=True, text=True, timeout=10)
        if rule.returncode != 0:
            return f"kernel/iptables lacks NFQUEUE: {rule.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


def make_payload(size: int, marker: bytes, seed: int = 0) -> bytes:
    """``size`` pseudo-random bytes with ``marker`` written every 4 KiB (plaintext canary).

    Random filler keeps frames incompressible and makes any marker hit in a capture meaningful.
    """
    rng = random.Random(seed)
    buf = bytearray(rng.randbytes(size))
    for pos in range(0, max(0, size - len(marker)), 4096):
        buf[pos:pos + len(marker)] = marker
    return bytes(buf)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Namespaces and processes


class Namespace:
    """One network namespace; runs commands in it and remembers the processes it started."""

    def __init__(self, name: str, label: str) -> None:
        self.name = name
        self.label = label
        self.processes: list[subprocess.Popen] = []

    def argv(self, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, *args: str, check: bool = True, timeout: float = 30.0,
            input: bytes | None = None) -> subprocess.CompletedProcess:
        """Run a command to completion inside the namespace (bytes output)."""
        try:
            done = subprocess.run(self.argv(args), capture_output=True, timeout=timeout,
                                  input=input)
        except subprocess.TimeoutExpired as exc:
            raise BedError(f"[{self.label}] timed out after {timeout}s: {' '.join(args)}") from exc
        if check and done.returncode != 0:
            raise BedError(f"[{self.label}] {' '.join(args)} -> exit {done.returncode}: "
                           f"{done.stderr.decode(errors='replace').strip()}")
        return done

    def popen(self, args: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start a background process in the namespace; :meth:`stop_all` ends it."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        proc = subprocess.Popen(self.argv(args), **kwargs)
        self.processes.append(proc)
        return proc

    def wait_listening(self, port: int, timeout: float = 15.0) -> None:
        """Wait until a TCP socket listens on ``port`` here (``ss -ltn``)."""
        deadline = time.monotonic() + timeout
        while not self.run("ss", "-H", "-ltn", f"sport = :{port}").stdout.strip():
            if time.monotonic() > deadline:
                raise BedError(f"[{self.label}] nothing listens on port {port}")
            time.sleep(0.05)

    def sysctl(self, key: str, value: str | int) -> None:
        self.run("sysctl", "-q", "-w", f"{key}={value}")

    def iptables(self, *args: str, v6: bool = False, check: bool = True) -> None:
        self.run("ip6tables" if v6 else "iptables", "-w", *args, check=check)

    def both_families(self, *args: str) -> None:
        """The same iptables rule for IPv4 and IPv6."""
        self.iptables(*args)
        self.iptables(*args, v6=True)

    def rule_packets(self, table: str, chain: str, comment: str) -> int:
        """Packets counted by the rules tagged ``comment`` in ``table``/``chain`` (v4 + v6)."""
        total = 0
        for tool in ("iptables", "ip6tables"):
            out = self.run(tool, "-w", "-t", table, "-L", chain, "-v", "-x", "-n").stdout.decode()
            for line in out.splitlines():
                if f"/* {comment} */" in line:
                    total += int(line.split()[0])
        return total

    def stop_all(self) -> None:
        """End every process started here: SIGTERM, then SIGKILL after a grace period."""
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 5
        for proc in self.processes:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        # Children that outlived their `ip netns exec` parent (nc, shells) are still ours:
        # they run inside this namespace, which only this bed created.
        pids = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True,
                              text=True, timeout=10).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.processes.clear()


# --------------------------------------------------------------------------------------------
# The daemon, driven through its CLI


class Daemon:
    """``tcpcryptd run`` in one namespace, with its own control socket and log file."""

    def __init__(self, ns: Namespace, workdir: Path, extra_args: Sequence[str] = (),
                 command: Sequence[str] | None = None, cwd: str | None = None) -> None:
        """``command`` replaces ``tcpcryptd`` as the program started with ``run`` (e.g. the
        daemon under a profiler); ``cwd`` is its working directory."""
        self.ns = ns
        self.command = list(command) if command is not None else tcpcryptd_command()
        self.cwd = cwd
        self.control = workdir / f"{ns.label}.sock"
        self.log_path = workdir / f"{ns.label}-daemon.log"
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self._log = None

    def cli(self, *args: str, check: bool = True,
            timeout: float = 15.0) -> subprocess.CompletedProcess:
        """Run ``tcpcryptd ARGS --control PATH`` in the namespace."""
        return self.ns.run(*tcpcryptd_command(), *args, "--control", str(self.control),
                           check=check, timeout=timeout)

    def start(self, timeout: float = 20.0) -> None:
        """Start the daemon and wait until ``tcpcryptd status`` answers."""
        self._log = open(self.log_path, "ab")
        self.proc = self.ns.popen([*self.command, "run", "--control", str(self.control),
                                   *self.extra_args], stdout=self._log, stderr=self._log,
                                  cwd=self.cwd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BedError(f"[{self.ns.label}] tcpcryptd run exited with "
                               f"{self.proc.returncode}:\n{self.log_tail()}")
            if self.cli("status", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise BedError(f"[{self.ns.label}] tcpcryptd status did not answer within {timeout}s:\n"
                       f"{self.log_tail()}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> dict:
        """``tcpcryptd status --json`` parsed (schema: docs/daemon.md)."""
        return json.loads(self.cli("status", "--json").stdout)

    def sessions(self) -> list[dict]:
        return list(self.status().get("sessions", []))

    def counters(self) -> dict[str, int]:
        return dict(self.status().get("counters", {}))

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            self.proc.kill()
            self.proc.wait()
            raise BedError(f"[{self.ns.label}] tcpcryptd ignored SIGTERM for {timeout}s") from exc
        finally:
            self._close_log()

    def kill(self) -> None:
        """SIGKILL, as a crash would: no cleanup by the daemon itself."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._close_log()

    def disable(self) -> subprocess.CompletedProcess:
        """``tcpcryptd disable``: with no daemon running this removes leftover rules."""
        return self.cli("disable")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no daemon log)"
        return "\n".join(text.splitlines()[-lines:])

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


# --------------------------------------------------------------------------------------------
# Captures


@dataclass
class CaptureReport:
    """What a capture shows about TCP-ENO and plaintext (RFC 8547 §4.1: ENO is option 69)."""

    packets: int = 0
    tcp_packets: int = 0
    syn: int = 0
    syn_with_eno: int = 0
    synack: int = 0
    synack_with_eno: int = 0
    payload_bytes: int = 0
    marker_hits: int = 0
    ports: set[int] = field(default_factory=set)
    #: Packets tcpdump reported as dropped by the kernel (then the capture is incomplete).
    kernel_drops: int = 0

    def summary(self) -> str:
        incomplete = f" (tcpdump lost {self.kernel_drops})" if self.kernel_drops else ""
        return (f"capture: {self.packets} packets{incomplete}, ENO in {self.syn_with_eno}/"
                f"{self.syn} SYN and {self.synack_with_eno}/{self.synack} SYN-ACK, marker found "
                f"{self.marker_hits} times")


_PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",
                b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}
_LINKTYPE_ETHERNET = 1
_LINKTYPE_LINUX_SLL = 113
_LINKTYPE_RAW = 101


def _iter_pcap(data: bytes) -> Iterator[tuple[int, memoryview]]:
    """(linktype, frame bytes) for every record of a classic pcap file."""
    if len(data) < 24 or data[:4] not in _PCAP_MAGICS:
        raise BedError("not a pcap file")
    endian = _PCAP_MAGICS[data[:4]]
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    view = memoryview(data)
    pos = 24
    while pos + 16 <= len(data):
        incl_len = struct.unpack_from(endian + "I", data, pos + 8)[0]
        yield linktype, view[pos + 16:pos + 16 + incl_len]
        pos += 16 + incl_len


def _ip_payload(linktype: int, frame: memoryview) -> tuple[int, memoryview] | None:
    """(IP version, IP packet) of a captured frame, or None for non-IP frames."""
    if linktype == _LINKTYPE_RAW:
        version = frame[0] >> 4 if len(frame) else 0
        return (version, frame) if version in (4, 6) else None
    if linktype == _LINKTYPE_ETHERNET:
        offset = 14
    elif linktype == _LINKTYPE_LINUX_SLL:
        offset = 16
    else:
        raise BedError(f"unsupported pcap link type {linktype}")
    if len(frame) < offset:
        return None
    ethertype = struct.unpack_from("!H", frame, offset - 2)[0]
    while ethertype == 0x8100 and len(frame) >= offset + 4:    # 802.1Q tags
        ethertype = struct.unpack_from("!H", frame, offset + 2)[0]
        offset += 4
    if ethertype == 0x0800:
        return 4, frame[offset:]
    if ethertype == 0x86DD:
        return 6, frame[offset:]
    return None


def pcap_segments(path: str | Path) -> Iterator[TCPPacket | None]:
    """Every record of a classic pcap file: its TCP segment parsed, None for anything else."""
    for linktype, frame in _iter_pcap(Path(path).read_bytes()):
        ip = _ip_payload(linktype, frame)
        segment = None
        if ip is not None:
            try:
                segment = TCPPacket.parse(bytes(ip[1]))
            except PacketError:
                pass
        yield segment


def _has_eno(segment: TCPPacket) -> bool:
    """True if the segment carries an ENO option (a malformed option list carries none)."""
    try:
        return bool(tcp_options.eno_options(segment.options))
    except PacketError:
        return False


def analyze_pcap(path: str | Path, marker: bytes, ports: Sequence[int] = ()) -> CaptureReport:
    """Count packets, ENO options on SYN/SYN-ACK and ``marker`` occurrences in TCP payloads.

    With ``ports``, only segments with one of those ports as source or destination count.
    """
    report = CaptureReport()
    wanted = set(ports)
    for segment in pcap_segments(path):
        report.packets += 1
        if segment is None:
            continue
        sport, dport = segment.sport, segment.dport
        if wanted and sport not in wanted and dport not in wanted:
            continue
        report.tcp_packets += 1
        report.ports.update((sport, dport))
        if segment.flags & SYN:
            has_eno = _has_eno(segment)
            if segment.flags & ACK:
                report.synack += 1
                report.synack_with_eno += has_eno
            else:
                report.syn += 1
                report.syn_with_eno += has_eno
        payload = bytes(segment.payload)
        report.payload_bytes += len(payload)
        if payload:
            report.marker_hits += payload.count(marker)
    return report


class Capture:
    """tcpdump of TCP on one interface of one namespace, written to a pcap file."""

    def __init__(self, ns: Namespace, iface: str, path: Path) -> None:
        self.ns = ns
        self.iface = iface
        self.path = path
        self.stderr_path = path.with_suffix(".tcpdump.txt")
        self.proc: subprocess.Popen | None = None
        self.kernel_drops = 0
        self._stderr = None

    def start(self, timeout: float = 15.0) -> Capture:
        self._stderr = open(self.stderr_path, "wb")
        self.proc = self.ns.popen(
            ["tcpdump", "-i", self.iface, "-s", "0", "-B", "32768", "-U", "-n", "-Z", "root",
             "-w", str(self.path), "tcp"], stderr=self._stderr)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b"listening on" in self.stderr_path.read_bytes():
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise BedError(f"tcpdump did not start: {self.stderr_path.read_text(errors='replace')}")

    def stop(self) -> int:
        """Stop tcpdump (SIGINT flushes the file); returns packets dropped by the kernel."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=15)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        found = re.search(rb"(\d+) packets? dropped by kernel", self.stderr_path.read_bytes())
        self.kernel_drops = int(found.group(1)) if found else 0
        return self.kernel_drops

    def analyze(self, marker: bytes, ports: Sequence[int] = ()) -> CaptureReport:
        report = analyze_pcap(self.path, marker, ports)
        report.kernel_drops = self.kernel_drops
        return report


# --------------------------------------------------------------------------------------------
# The bed


@dataclass(frozen=True)
class _Plan:
    """Addresses of the endpoints A and B in one topology."""

    a_v4: str
    b_v4: str
    a_v6: str
    b_v6: str


_ROUTED = _Plan("10.201.1.1", "10.201.2.1", "fd00:201:1::1", "fd00:201:2::1")
_DIRECT = _Plan("10.201.0.1", "10.201.0.2", "fd00:201::1", "fd00:201::2")


class TestBed:
    """Namespaces A and B (and router R), strict conntrack, daemons, captures, impairment.

    Use as a context manager; :meth:`close` is idempotent and runs on every exit path.
    """

    __test__ = False  # not a pytest class

    def __init__(self, router: bool = True, workdir: str | Path | None = None) -> None:
        self.router = router
        self.run_id = secrets.token_hex(3)
        self._own_workdir = workdir is None
        #: Keep the work directory (pcaps, daemon logs) after close, e.g. for a failed test.
        self.keep_workdir = bool(os.environ.get("TCPCRYPTD_BED_KEEP"))
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="tcpcryptd-bed-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.a = Namespace(f"tcb-{self.run_id}-a", "A")
        self.b = Namespace(f"tcb-{self.run_id}-b", "B")
        self.r = Namespace(f"tcb-{self.run_id}-r", "R") if router else None
        self.plan = _ROUTED if router else _DIRECT
        self.daemons: list[Daemon] = []
        self._created: list[Namespace] = []
        self._impair: subprocess.Popen | None = None

    # ---- life cycle

    def __enter__(self) -> TestBed:
        try:
            self.setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def namespaces(self) -> list[Namespace]:
        return [ns for ns in (self.a, self.r, self.b) if ns is not None]

    def setup(self) -> None:
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "add", ns.name], check=True, capture_output=True,
                           timeout=10)
            self._created.append(ns)
            # No duplicate address detection: a tentative link-local address delays neighbour
            # discovery by a second (a retransmitted first SYN).
            for scope in ("all", "default"):
                ns.sysctl(f"net.ipv6.conf.{scope}.accept_dad", 0)
            ns.run("ip", "link", "set", "lo", "up")
        if self.router:
            self._link(self.a, "eth0", self.r, "ra")
            self._link(self.b, "eth0", self.r, "rb")
            self._address(self.a, "eth0", "10.201.1.1/24", "fd00:201:1::1/64")
            self._address(self.r, "ra", "10.201.1.254/24", "fd00:201:1::fe/64")
            self._address(self.r, "rb", "10.201.2.254/24", "fd00:201:2::fe/64")
            self._address(self.b, "eth0", "10.201.2.1/24", "fd00:201:2::1/64")
            for ns, v4_gw, v6_gw in ((self.a, "10.201.1.254", "fd00:201:1::fe"),
                                     (self.b, "10.201.2.254", "fd00:201:2::fe")):
                ns.run("ip", "route", "add", "default", "via", v4_gw)
                ns.run("ip", "-6", "route", "add", "default", "via", v6_gw)
            self.r.sysctl("net.ipv4.ip_forward", 1)
            self.r.sysctl("net.ipv6.conf.all.forwarding", 1)
        else:
            self._link(self.a, "eth0", self.b, "eth0")
            self._address(self.a, "eth0", "10.201.0.1/24", "fd00:201::1/64")
            self._address(self.b, "eth0", "10.201.0.2/24", "fd00:201::2/64")
        self._strict_conntrack()

    def close(self) -> None:
        """Stop impairment, daemons and every process; delete the namespaces and temp files."""
        if self._impair is not None and self._impair.poll() is None:
            self._impair.terminate()
        for daemon in self.daemons:
            if daemon.running:
                try:
                    daemon.stop(timeout=10)
                except BedError:
                    pass
        for ns in self._created:
            ns.stop_all()
        for ns in reversed(self._created):
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, timeout=10)
        self._created.clear()
        self.daemons.clear()
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _link(self, left: Namespace, left_if: str, right: Namespace, right_if: str) -> None:
        # Created inside `left` with its peer moved straight into `right`: no interface ever
        # exists in the root namespace.
        left.run("ip", "link", "add", left_if, "type", "veth", "peer", "name", right_if,
                 "netns", right.name)
        left.run("ip", "link", "set", left_if, "up")
        right.run("ip", "link", "set", right_if, "up")

    @staticmethod
    def _address(ns: Namespace, iface: str, v4: str, v6: str) -> None:
        ns.run("ip", "addr", "add", v4, "dev", iface)
        ns.run("ip", "-6", "addr", "add", v6, "dev", iface, "nodad")

    def _strict_conntrack(self) -> None:
        """Load conntrack on purpose and make it strict (TESTBED.md: it is otherwise idle)."""
        for ns in self.namespaces:
            ns.sysctl("net.netfilter.nf_conntrack_tcp_be_liberal", 0)
            if ns is self.r:
                ns.both_families("-A", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID",
                                 "-m", "comment", "--comment", INVALID_COMMENT)
                continue
            for chain in ("INPUT", "OUTPUT"):
                ns.both_families("-A", chain, "-m", "conntrack", "--ctstate", "INVALID",
                                 "-m", "comment", "--comment", INVALID_COMMENT, "-j", "DROP")

    # ---- addressing

    def addr(self, label: str, family: int = 4) -> str:
        """Address of endpoint "A" or "B" for IP version 4 or 6."""
        return getattr(self.plan, f"{label.lower()}_v{family}")

    @staticmethod
    def url_host(address: str) -> str:
        return f"[{address}]" if ":" in address else address

    def ns(self, label: str) -> Namespace:
        return {"A": self.a, "B": self.b, "R": self.r}[label]

    def diagnostics(self) -> str:
        """Daemon status, socket states and conntrack verdicts: what to look at after a stall."""
        parts = [f"work directory: {self.workdir}", f"conntrack INVALID: {self.invalid_packets()}"]
        for daemon in self.daemons:
            parts.append(f"--- daemon {daemon.ns.label} ---")
            if daemon.running:
                status = daemon.cli("status", "--json", check=False)
                parts.append(status.stdout.decode(errors="replace").strip())
            parts.append(daemon.log_tail(20))
        for ns in (self.a, self.b):
            sockets = ns.run("ss", "-tino", check=False).stdout.decode(errors="replace")
            parts.append(f"--- sockets {ns.label} ---\n{sockets.strip()}")
        return "\n".join(parts)

    def invalid_packets(self) -> dict[str, int]:
        """Packets conntrack judged INVALID so far, per namespace (wire-view consistency)."""
        result = {}
        for ns in self.namespaces:
            chains = ("FORWARD",) if ns is self.r else ("INPUT", "OUTPUT")
            result[ns.label] = sum(ns.rule_packets("filter", chain, INVALID_COMMENT)
                                   for chain in chains)
        return result

    # ---- daemons and captures

    def daemon(self, label: str, extra_args: Sequence[str] = ()) -> Daemon:
        """Start ``tcpcryptd run`` in namespace A or B and wait until it answers."""
        daemon = Daemon(self.ns(label), self.workdir, extra_args)
        self.daemons.append(daemon)
        daemon.start()
        return daemon

    def capture(self, name: str, label: str | None = None) -> Capture:
        """Start tcpdump on the wire between A and B (router's B side, or A's eth0)."""
        if label is None:
            ns, iface = (self.r, "rb") if self.router else (self.a, "eth0")
        else:
            ns, iface = self.ns(label), "eth0"
        return Capture(ns, iface, self.workdir / f"{name}.pcap").start()

    # ---- impairment in the router namespace

    def forward_loss(self, probability: float) -> None:
        """Random loss of forwarded packets in R (no netem here: iptables statistic)."""
        if self.r is None:
            raise BedError("loss emulation needs the router namespace")
        self.r.both_families("-I", "FORWARD", "1", "-p", "tcp", "-m", "statistic", "--mode",
                             "random", "--probability", f"{probability:.4f}", "-m", "comment",
                             "--comment", LOSS_COMMENT, "-j", "DROP")

    def loss_drops(self) -> int:
        """Packets dropped so far by :meth:`forward_loss` (v4 + v6)."""
        return self.r.rule_packets("filter", "FORWARD", LOSS_COMMENT) if self.r else 0

    def start_impairment(self, *options: str) -> subprocess.Popen:
        """Run tools/netimpair.py in R on forwarded TCP (v4 and v6) with ``options``."""
        if self.r is None:
            raise BedError("impairment needs the router namespace")
        tool = Path(__file__).resolve().parent.parent / "tools" / "netimpair.py"
        log = open(self.workdir / "netimpair.log", "wb")
        self._impair = self.r.popen(
            [sys.executable, str(tool), "--queue", str(IMPAIR_QUEUE), *options],
            stdout=subprocess.PIPE, stderr=log)
        assert self._impair.stdout is not None
        line = self._impair.stdout.readline().decode()
        if not line.startswith("netimpair: ready"):
            raise BedError(f"netimpair did not start: {line!r} "
                           f"{(self.workdir / 'netimpair.log').read_text(errors='replace')}")
        self.r.both_families("-A", "FORWARD", "-p", "tcp", "-m", "comment", "--comment",
                             IMPAIR_COMMENT, "-j", "NFQUEUE", "--queue-num", str(IMPAIR_QUEUE))
        return self._impair

    def stop_impairment(self) -> dict[str, int]:
        """Stop netimpair (held packets are released first) and return its counters."""
        if self._impair is None:
            raise BedError("no impairment running")
        self.r.both_families("-D", "FORWARD", "-p", "tcp", "-m", "comment", "--comment",
                             IMPAIR_COMMENT, "-j", "NFQUEUE", "--queue-num", str(IMPAIR_QUEUE))
        self._impair.send_signal(signal.SIGTERM)
        out, _ = self._impair.communicate(timeout=15)
        self._impair = None
        for line in out.decode().splitlines():
            if line.startswith("netimpair: stats "):
                return json.loads(line.split(" ", 2)[2])
        raise BedError("netimpair printed no statistics")
