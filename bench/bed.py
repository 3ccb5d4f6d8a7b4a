"""One benchmark bed: testbed's direct A <-> B veth pair plus one traffic mode.

A mode is plain TCP (no queue), the NFQUEUE pass-through (bench/passthrough.py in both
namespaces, the daemon's own rules), tcpcryptd (``tcpcryptd run`` in both namespaces, as
in the e2e tests, with a generated config file choosing the TEP and the AEAD) or tcpcryptd
in A only (``one_daemon``: B is a peer without the daemon, so every connection is plain).
Random loss is an ``iptables -t raw -A PREROUTING -i eth0 ... -m statistic -j DROP`` rule in
each namespace: ``raw PREROUTING`` runs before ``mangle INPUT`` where the daemon queues, so
a dropped packet never reaches the queue (loss on the wire, in both directions).

Additions to the test bed (kept here, not in testbed/): daemon process figures
from /proc (VmRSS, utime+stime) and :func:`profiled_daemon` (the daemon under cProfile).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tcpcryptd.daemon import control
from tcpcryptd.daemon.errors import ControlError
from testbed import BedError, Daemon, Namespace, TestBed

REPO_ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: Seconds to wait for a status answer (the CLI waits 10 s).
STATUS_TIMEOUT = 120.0


@dataclass(frozen=True)
class Mode:
    """What carries the traffic: ``kind`` is plain, passthrough (NetfilterQueue),
    passthrough_own / passthrough_gso (the daemon's binding without / with
    ``NFQA_CFG_F_GSO``), tcpcryptd (both ends), one_daemon (tcpcryptd in A only) or
    syn_passthrough (A queues only its SYN segments to a pass-through)."""

    kind: str
    tep: str = "X25519"
    aead: str = "AES-128-GCM"
    #: session resumption (RFC 8548 §3.5) in both daemons; None: the daemon's default (on)
    resumption: bool | None = None
    #: tcpcryptd's ``queue.workers`` (0: one per CPU)
    workers: int = 1

    @property
    def label(self) -> str:
        if self.kind == "one_daemon":
            return "tcpcryptd in A only"
        if self.kind == "syn_passthrough":
            return "SYN-only pass-through in A"
        if self.kind != "tcpcryptd":
            return self.kind
        resumed = {True: ", resumed", False: ", fresh", None: ""}[self.resumption]
        workers = "" if self.workers == 1 else (
            ", a worker per CPU" if self.workers == 0 else f", {self.workers} workers")
        return f"tcpcryptd {self.tep} {self.aead}{resumed}{workers}"


PLAIN = Mode("plain")
PASSTHROUGH = Mode("passthrough")
#: tcpcryptd (default TEP/AEAD) in A, nothing in B: plain TCP with the daemon on one end.
ONE_DAEMON = Mode("one_daemon")
#: A pass-through in A queueing only SYN segments (``bench.passthrough --syn-only``).
SYN_PASSTHROUGH = Mode("syn_passthrough")


def daemon_config(mode: Mode, control: Path) -> str:
    """The TOML given to both daemons: only the chosen TEP and AEAD are offered/accepted, so
    A's Init1 offer and B's preference can only agree on them (RFC 8548 §3.3); resumption on
    or off when the mode says."""
    resumption = ("" if mode.resumption is None
                  else f"[resumption]\nenabled = {str(mode.resumption).lower()}\n")
    return (f'[encryption]\nteps = ["{mode.tep}"]\naeads = ["{mode.aead}"]\n'
            f'[queue]\nworkers = {mode.workers}\n'
            f'[control]\nsocket = "{control}"\n[log]\nlevel = "warning"\n{resumption}')


def read_vmrss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (/proc/PID/status VmRSS, given in kB)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise BedError(f"no VmRSS for pid {pid}")


def read_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its live children (a supervisor's workers) in seconds
    (/proc/PID/stat fields 14 and 15)."""
    total = 0.0
    for one in (pid, *children(pid)):
        try:
            with open(f"/proc/{one}/stat", encoding="ascii") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:   # a child that just ended
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (/proc/PID/task/*/children)."""
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as listing:
                found += [int(word) for word in listing.read().split()]
        except FileNotFoundError:
            continue
    return found


def parse_queued(text: str) -> int:
    """``/proc/net/netfilter/nfnetlink_queue`` -> packets ever queued (sum of ``id_sequence``,
    field 8, over the queue lines)."""
    total = 0
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 8:
            raise BedError(f"nfnetlink_queue line too short: {line!r}")
        total += int(fields[7])
    return total


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """One line of a child's stdout pipe, or BedError after ``timeout`` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise BedError(f"no output from {proc.args} within {timeout}s")
    return proc.stdout.readline().decode(errors="replace")


def profiled_daemon(ns: Namespace, workdir: Path, extra_args: list[str],
                    profile_path: Path) -> Daemon:
    """``tcpcryptd run`` under cProfile with a CPU-time clock (``python -m bench.profiling``),
    so time spent waiting in select() does not count. The stats file is written when the
    daemon exits on SIGTERM."""
    return Daemon(ns, workdir, extra_args, cwd=str(REPO_ROOT),
                  command=[sys.executable, "-m", "bench.profiling", "--out", str(profile_path)])


class BenchBed:
    """A fresh direct bed with ``mode`` running on both ends and optional random loss.

    A context manager: everything (pass-through programs, daemons, namespaces) is torn down
    on exit, also after an exception or Ctrl-C.
    """

    def __init__(self, mode: Mode, loss: float = 0.0, profile_dir: Path | None = None) -> None:
        self.mode = mode
        self.loss = loss
        self.profile_dir = profile_dir
        self.bed = TestBed(router=False)
        self.daemons: dict[str, Daemon] = {}
        self._passthrough: list[subprocess.Popen] = []

    def __enter__(self) -> BenchBed:
        try:
            self.bed.setup()
            if self.mode.kind == "passthrough":
                for ns in (self.bed.a, self.bed.b):
                    self._start_passthrough(ns)
            elif self.mode.kind in ("passthrough_own", "passthrough_gso"):
                extra = ("--gso",) if self.mode.kind == "passthrough_gso" else ()
                for ns in (self.bed.a, self.bed.b):
                    self._start_passthrough(ns, "--binding", "own", *extra)
            elif self.mode.kind == "tcpcryptd":
                for label in ("A", "B"):
                    self.daemons[label] = self._start_daemon(label)
            elif self.mode.kind == "one_daemon":
                self.daemons["A"] = self._start_daemon("A")
            elif self.mode.kind == "syn_passthrough":
                self._start_passthrough(self.bed.a, "--syn-only")
            if self.loss > 0:
                self._add_loss(self.loss)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for proc in self._passthrough:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self._passthrough.clear()
        self.bed.close()

    # ---- set-up

    def _start_passthrough(self, ns: Namespace, *args: str) -> None:
        proc = ns.popen([sys.executable, "-m", "bench.passthrough", *args],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(REPO_ROOT))
        self._passthrough.append(proc)
        line = read_line(proc, 20.0)
        if not line.startswith("passthrough: ready"):
            err = proc.stderr.read().decode(errors="replace") if proc.poll() is not None else ""
            raise BedError(f"[{ns.label}] pass-through did not start: {line!r} {err}")

    def _start_daemon(self, label: str) -> Daemon:
        ns = self.bed.ns(label)
        control = self.bed.workdir / f"{label}.sock"
        config = self.bed.workdir / f"{label}.toml"
        config.write_text(daemon_config(self.mode, control))
        args = ["--config", str(config)]
        if self.profile_dir is None:
            return self.bed.daemon(label, args)
        daemon = profiled_daemon(ns, self.bed.workdir, args, self.profile_dir / f"{label}.prof")
        self.bed.daemons.append(daemon)
        daemon.start(timeout=30.0)
        return daemon

    def _add_loss(self, probability: float) -> None:
        for ns in (self.bed.a, self.bed.b):
            ns.iptables("-t", "raw", "-A", "PREROUTING", "-i", "eth0", "-p", "tcp", "-m",
                        "statistic", "--mode", "random", "--probability", f"{probability:.4f}",
                        "-j", "DROP")

    # ---- addressing and figures

    @property
    def a(self) -> Namespace:
        return self.bed.a

    @property
    def b(self) -> Namespace:
        return self.bed.b

    @property
    def server_address(self) -> str:
        """B's IPv4 address: every benchmark flow goes A -> B over IPv4."""
        return self.bed.addr("B", 4)

    def address(self, label: str) -> str:
        """The IPv4 address of namespace ``label`` (A or B)."""
        return self.bed.addr(label, 4)

    def queued_packets(self, label: str) -> int:
        """Packets the kernel has handed to NFQUEUE so far in namespace ``label``, every queue
        (the ``id_sequence`` column of /proc/net/netfilter/nfnetlink_queue: the id of the last
        packet queued; the kernel's own count, 0 while no queue is bound)."""
        text = self.bed.ns(label).run("cat", "/proc/net/netfilter/nfnetlink_queue").stdout
        return parse_queued(text.decode())

    @property
    def workdir(self) -> Path:
        return self.bed.workdir

    def daemon_pids(self) -> dict[str, int]:
        """PID of each running daemon (``ip netns exec`` execs, so it is the Python process)."""
        return {label: d.proc.pid for label, d in self.daemons.items()
                if d.proc is not None and d.running}

    def daemon_cpu_seconds(self) -> float:
        """utime+stime of both daemons together."""
        return sum(read_cpu_seconds(pid) for pid in self.daemon_pids().values())

    def daemon_rss(self) -> dict[str, int]:
        return {label: read_vmrss(pid) for label, pid in self.daemon_pids().items()}

    def queue_drops(self) -> dict[str, int]:
        """Packets each namespace's NFQUEUE dropped so far (queue full + failed to reach
        userspace: ``queue_dropped`` + ``user_dropped`` of /proc/net/netfilter/nfnetlink_queue)."""
        drops = {}
        for ns in (self.bed.a, self.bed.b):
            text = ns.run("cat", "/proc/net/netfilter/nfnetlink_queue").stdout.decode()
            drops[ns.label] = sum(int(fields[5]) + int(fields[6]) for fields in
                                  (line.split() for line in text.splitlines())
                                  if len(fields) >= 7)
        return drops

    def status(self, label: str, timeout: float = STATUS_TIMEOUT) -> dict:
        """The daemon's status answer, asked on its control socket directly (a path: reachable
        from any namespace) with a longer timeout than the CLI's: with 10,000 sessions the
        answer takes seconds."""
        try:
            answer = control.request(str(self.daemons[label].control), {"command": "status"},
                                     timeout=timeout)
        except ControlError as exc:
            raise BedError(f"[{label}] status: {exc}") from exc
        if not answer.get("ok"):
            raise BedError(f"[{label}] status refused: {answer.get('error')}")
        return answer

    def stop_daemons(self) -> None:
        for daemon in self.daemons.values():
            if daemon.running:
                daemon.stop(timeout=30)
