"""The measurement plan: one fresh bed per mode, every figure into a :class:`Samples`.

A row that cannot be measured (daemon does not start, flows fall back to plain TCP, a tool
fails) gets no sample and a note saying why; the other rows still run. A tcpcryptd sample
counts only if the daemon's own status shows the flows encrypted with the wanted AEAD.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from bench.bed import (
    ONE_DAEMON,
    PASSTHROUGH,
    PLAIN,
    REPO_ROOT,
    SYN_PASSTHROUGH,
    BenchBed,
    Mode,
)
from bench.plan import Settings
from bench.report import (
    MAX_QUEUED_PER_CONNECTION,
    OFFLOAD_DIRECTIONS,
    ConnectionSamples,
    LossSamples,
    OffloadSamples,
    Samples,
    median,
)
from bench.workloads import (
    IPERF_PORT,
    ConnectionRun,
    connection_rate,
    exchange_rate,
    idle_flows,
    iperf3,
    nc_transfer,
)
from testbed import BedError, make_payload

#: Throughput row -> (mode, parallel flows).
THROUGHPUT_PLAN: dict[str, tuple[Mode, int]] = {
    "plain": (PLAIN, 1),
    "passthrough": (PASSTHROUGH, 1),
    "aes128gcm": (Mode("tcpcryptd", "X25519", "AES-128-GCM"), 1),
    "chacha20": (Mode("tcpcryptd", "X25519", "CHACHA20-POLY1305"), 1),
    "aes256gcm": (Mode("tcpcryptd", "X25519", "AES-256-GCM"), 1),
    "parallel4_aes128gcm": (Mode("tcpcryptd", "X25519", "AES-128-GCM"), 4),
    "aes128gcm_workers": (Mode("tcpcryptd", "X25519", "AES-128-GCM", workers=0), 1),
    "parallel4_aes128gcm_workers": (Mode("tcpcryptd", "X25519", "AES-128-GCM", workers=0), 4),
}
AES128 = THROUGHPUT_PLAN["aes128gcm"][0]
#: Connection rates: every tcpcryptd connection a fresh key exchange (resumption off), then
#: X25519 with resumption on, where every connection after the first resumes (RFC 8548 §3.5).
CONNECTION_PLAN: dict[str, Mode] = {
    "plain": PLAIN,
    "passthrough": PASSTHROUGH,
    "x25519": Mode("tcpcryptd", "X25519", "AES-128-GCM", resumption=False),
    "p256": Mode("tcpcryptd", "P-256", "AES-128-GCM", resumption=False),
    "x25519_resumed": Mode("tcpcryptd", "X25519", "AES-128-GCM", resumption=True),
}
#: Request/response row -> mode.
EXCHANGE_PLAN: dict[str, Mode] = {
    "plain": PLAIN,
    "passthrough": PASSTHROUGH,
    "aes128gcm": AES128,
    "aes128gcm_workers": THROUGHPUT_PLAN["aes128gcm_workers"][0],
}
#: Offload direction -> the namespace that connects (and sends); the daemon runs in A.
OFFLOAD_CLIENTS = {"daemon_client": "A", "daemon_server": "B"}
assert set(OFFLOAD_CLIENTS) == set(OFFLOAD_DIRECTIONS)
#: Connections one iperf3 run opens: the control connection and one per parallel stream.
IPERF_CONNECTIONS = 2
#: Failures a run may meet before its figure is discarded.
BENCH_ERRORS = (BedError, OSError, subprocess.SubprocessError, ValueError, KeyError)


class Progress:
    """``[ 3/23  0:42] what is running`` lines on stderr."""

    def __init__(self, total: int, stream=sys.stderr) -> None:
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self.stream = stream

    def step(self, what: str) -> None:
        self.done += 1
        elapsed = int(time.monotonic() - self.started)
        print(f"[{self.done:2d}/{self.total}  {elapsed // 60}:{elapsed % 60:02d}] {what}",
              file=self.stream, flush=True)


def _encrypted_count(bed: BenchBed) -> tuple[int, int, int]:
    """(encrypted, plain + fallback, resumed) flows counted so far by A's daemon."""
    counters = bed.status("A").get("counters", {})
    return (int(counters.get("encrypted", 0)),
            int(counters.get("plain", 0)) + int(counters.get("fallback", 0)),
            int(counters.get("resumed", 0)))


class Runner:
    def __init__(self, settings: Settings, progress: Progress | None = None) -> None:
        self.settings = settings
        self.samples = Samples()
        #: per-daemon busy fraction (CPU seconds / wall seconds) of the current throughput row
        self._busy: list[float] = []
        self.progress = progress or Progress(self.step_count())

    def step_count(self) -> int:
        s = self.settings
        return (len(THROUGHPUT_PLAN) * s.repetitions + len(s.loss_sizes) * 2 * s.repetitions
                + len(CONNECTION_PLAN) + len(EXCHANGE_PLAN) * s.repetitions + 1 + 1
                + self.offload_step_count())

    def offload_step_count(self) -> int:
        return len(OFFLOAD_CLIENTS) * 2 * self.settings.repetitions

    def run(self) -> Samples:
        # the micro-benchmarks first, on a quiet machine: after the workloads the kernel is
        # still tearing down namespaces with thousands of connections (they measured ~60%
        # above a standalone run there)
        self.engine_costs()
        self.offload()
        self.throughput()
        self.loss()
        self.connections()
        self.exchanges()
        self.memory()
        return self.samples

    @contextmanager
    def _bed(self, what: str, mode: Mode, loss: float = 0.0) -> Iterator[BenchBed | None]:
        """A bed for ``mode``, or None (with a note) when it cannot be set up."""
        try:
            bed = BenchBed(mode, loss).__enter__()
        except BENCH_ERRORS as exc:
            self.samples.note(f"{what}: not measured, {mode.label} did not start: "
                              f"{_one_line(exc)}")
            yield None
            return
        try:
            yield bed
        finally:
            bed.close()

    def _guarded(self, what: str, measure: Callable[[], None]) -> None:
        try:
            measure()
        except BENCH_ERRORS as exc:
            self.samples.note(f"{what}: failed: {_one_line(exc)}")

    # ---- 0. plain TCP with the daemon on one end vs no daemon

    def offload(self) -> None:
        """Both beds up at once, runs alternating between them (ABBA), both directions; the
        connection rate also with only the SYN segments queued to a do-nothing consumer."""
        s = self.settings
        what = "plain TCP, daemon on one end"
        with self._bed(f"{what} (no-daemon bed)", PLAIN) as plain, \
                self._bed(f"{what} (daemon bed)", ONE_DAEMON) as daemon, \
                self._bed(f"{what} (SYN-only pass-through bed)", SYN_PASSTHROUGH) as syn:
            for key, client in OFFLOAD_CLIENTS.items():
                entry = self.samples.offload.setdefault(key, OffloadSamples())
                label = OFFLOAD_DIRECTIONS[key]
                for rep in range(s.repetitions):
                    self.progress.step(f"{what}, {label}: iperf3 {s.seconds:g} s, no daemon / "
                                       f"daemon on A, pair {rep + 1}/{s.repetitions}")
                    figures = self._offload_round(
                        rep, {"plain": plain, "daemon": daemon},
                        lambda bed: self._offload_iperf(bed, entry, client))
                    entry.throughput.append((figures["plain"], figures["daemon"]))
                for rep in range(s.repetitions):
                    self.progress.step(f"{what}, {label}: up to {s.connections} sequential "
                                       f"connections, no daemon / daemon on A / SYN-only "
                                       f"pass-through, round {rep + 1}/{s.repetitions}")
                    figures = self._offload_round(
                        rep, {"plain": plain, "daemon": daemon, "syn": syn},
                        lambda bed: self._offload_rate(bed, entry, client))
                    entry.connections.append((figures["plain"], figures["daemon"]))
                    if figures["syn"] is not None:
                        entry.connections_syn_passthrough.append(figures["syn"])

    def _offload_round(self, rep: int, beds: dict[str, BenchBed | None],
                       measure: Callable[[BenchBed], float]) -> dict[str, float | None]:
        """One figure per bed (None where it failed), in the order :func:`round_order`
        gives for ``rep``."""
        figures: dict[str, float | None] = dict.fromkeys(beds)
        for name in round_order(list(beds), rep):
            bed = beds[name]
            if bed is None:
                continue
            try:
                figures[name] = measure(bed)
            except BENCH_ERRORS as exc:
                self.samples.note(f"plain TCP, daemon on one end ({bed.mode.label}): a run "
                                  f"failed: {_one_line(exc)}")
        return figures

    def _offload_check(self, bed: BenchBed, entry: OffloadSamples, before: tuple[int, int],
                       queued_before: int, connections: int, what: str) -> bool:
        """After a run in the daemon bed: no connection encrypted, the queue use recorded."""
        queued = (bed.queued_packets("A") - queued_before) / max(connections, 1)
        entry.queued_per_connection.append(queued)
        if queued > MAX_QUEUED_PER_CONNECTION:
            self.samples.note(f"plain TCP, daemon on one end, {what}: A queued {queued:.1f} "
                              f"packets per connection (more than the SYN phase)")
        after = _encrypted_count(bed)
        if after[0] != before[0]:
            self.samples.note(f"plain TCP, daemon on one end, {what}: discarded: the daemon "
                              f"counted encrypted connections ({before[0]} -> {after[0]})")
            return False
        return True

    def _offload_iperf(self, bed: BenchBed, entry: OffloadSamples, client: str) -> float:
        if not bed.daemons:
            return iperf3(bed, self.settings.seconds, 1, client).mbps
        before, queued = _encrypted_count(bed), bed.queued_packets("A")
        run = iperf3(bed, self.settings.seconds, 1, client)
        if not self._offload_check(bed, entry, before, queued, IPERF_CONNECTIONS, "iperf3"):
            raise BedError("not plain")
        if run.daemon_cpu_s is not None:
            entry.daemon_cpu_pct.append(100.0 * run.daemon_cpu_s / self.settings.seconds)
        return run.mbps

    def _offload_rate(self, bed: BenchBed, entry: OffloadSamples, client: str) -> float:
        s = self.settings
        if not bed.daemons:
            run = connection_rate(bed, s.connections, s.connection_seconds, client)
            if bed.mode.kind == "syn_passthrough":
                entry.latencies_syn_passthrough.extend(run.latencies_ms)
            else:
                entry.latencies_no_daemon.extend(run.latencies_ms)
            return self._rate_of(run, bed.mode.label)
        before, queued = _encrypted_count(bed), bed.queued_packets("A")
        cpu = bed.daemon_cpu_seconds()
        run = connection_rate(bed, s.connections, s.connection_seconds, client)
        cpu = bed.daemon_cpu_seconds() - cpu
        attempts = run.connections + run.failures
        if not self._offload_check(bed, entry, before, queued, attempts, "connections"):
            raise BedError("not plain")
        entry.daemon_cpu_us_per_connection.append(cpu * 1e6 / max(attempts, 1))
        entry.latencies_daemon.extend(run.latencies_ms)
        return self._rate_of(run, "daemon on A")

    def _rate_of(self, run: ConnectionRun, label: str) -> float:
        if run.failures:
            self.samples.note(f"plain TCP, daemon on one end ({label}): {run.failures} "
                              f"connections failed ({run.connections} succeeded)")
        if run.connections == 0:
            raise BedError("no connection succeeded")
        return run.per_s

    # ---- 1. bulk throughput

    def throughput(self) -> None:
        s = self.settings
        for row, (mode, parallel) in THROUGHPUT_PLAN.items():
            what = f"throughput {row}"
            self._busy = []
            with self._bed(what, mode) as bed:
                for rep in range(s.repetitions):
                    self.progress.step(f"{what} (iperf3 -P {parallel}, {s.seconds:g} s), "
                                       f"run {rep + 1}/{s.repetitions}")
                    if bed is None:
                        continue
                    self._guarded(what, lambda: self._one_iperf(bed, row, mode, parallel))
                if bed is not None and mode.kind != "plain":
                    self._guarded(what, lambda: self._queue_drops(bed, what))
            if self._busy:
                self.samples.note(f"{what}: each daemon was busy {median(self._busy):.0%} of "
                                  f"the time on average (utime+stime / wall time); judge "
                                  f"CPU saturation from machine idle % and the NFQUEUE "
                                  f"backlog in the diagnostics, not from this figure")

    def _one_iperf(self, bed: BenchBed, row: str, mode: Mode, parallel: int) -> None:
        run = iperf3(bed, self.settings.seconds, parallel)
        if mode.kind == "tcpcryptd":
            wanted = re.sub(r"[^A-Z0-9]", "", mode.aead)
            if run.aeads != {wanted}:
                self.samples.note(f"throughput {row}: a run was discarded: the daemon showed "
                                  f"AEADs {sorted(run.aeads) or 'none'} on port {IPERF_PORT} "
                                  f"mid-run, not only {mode.aead} (fallback or no session)")
                return
            if run.daemon_cpu_s is not None:
                self._busy.append(run.daemon_cpu_s / len(bed.daemons) / self.settings.seconds)
                if row == "aes128gcm" and run.bytes > 0:
                    self.samples.cpu_s_per_gb.append(run.daemon_cpu_s / (run.bytes / 1e9))
        self.samples.throughput.setdefault(row, []).append(run.mbps)
        if run.diagnostics:
            self.samples.diagnostics.setdefault(row, []).append(run.diagnostics)

    def _queue_drops(self, bed: BenchBed, what: str) -> None:
        drops = bed.queue_drops()
        if any(drops.values()):
            self.samples.note(f"{what}: the NFQUEUE dropped packets (queue full): "
                              + ", ".join(f"{label} {n}" for label, n in drops.items()))

    # ---- 2. under loss

    def loss(self) -> None:
        s = self.settings
        for loss, size in s.loss_sizes.items():
            entry = LossSamples(loss)
            self.samples.loss.append(entry)
            for label, mode, mbps in (("passthrough", PASSTHROUGH, entry.passthrough_mbps),
                                      ("tcpcryptd", AES128, entry.tcpcryptd_mbps)):
                what = f"loss {loss:g} {label}"
                with self._bed(what, mode, loss) as bed:
                    for rep in range(s.repetitions):
                        self.progress.step(f"{what} ({size // 1_000_000} MB with nc, sha256), "
                                           f"run {rep + 1}/{s.repetitions}")
                        if bed is None:
                            continue
                        self._guarded(what, lambda: self._one_transfer(bed, what, size, entry,
                                                                       mbps))

    def _one_transfer(self, bed: BenchBed, what: str, size: int, entry: LossSamples,
                      mbps: list[float]) -> None:
        source = bed.workdir / f"payload-{size}.bin"
        if not source.exists():
            source.write_bytes(make_payload(size, f"BENCH-MARKER-{bed.bed.run_id}".encode()))
        before = _encrypted_count(bed) if bed.daemons else None
        transfer = nc_transfer(bed, source, self.settings.loss_timeout)
        entry.intact.append(transfer.intact)
        if not transfer.intact:
            self.samples.note(f"{what}: INTEGRITY/COMPLETION FAILURE: {transfer.detail}")
            return
        if before is not None:
            after = _encrypted_count(bed)
            if after[0] <= before[0] or after[1] > before[1]:
                self.samples.note(f"{what}: a transfer was discarded: it was not encrypted "
                                  f"(daemon counters encrypted/plain {before} -> {after})")
                return
        mbps.append(transfer.mbps)

    # ---- 3. connection setup

    def connections(self) -> None:
        s = self.settings
        for key, mode in CONNECTION_PLAN.items():
            what = f"connections {key}"
            self.progress.step(f"{what} (up to {s.connections} sequential, "
                               f"{s.connection_seconds:g} s)")
            with self._bed(what, mode) as bed:
                if bed is not None:
                    self._guarded(what, lambda: self._one_rate(bed, what, key))

    def _one_rate(self, bed: BenchBed, what: str, key: str) -> None:
        before = _encrypted_count(bed) if bed.daemons else None
        run = connection_rate(bed, self.settings.connections, self.settings.connection_seconds)
        if run.failures:
            self.samples.note(f"{what}: {run.failures} connections failed "
                              f"({run.connections} succeeded)")
        if run.connections == 0:
            raise BedError("no connection succeeded")
        if before is not None:
            after = _encrypted_count(bed)
            if after[0] - before[0] < run.connections or after[1] > before[1]:
                self.samples.note(f"{what}: discarded: not every connection was encrypted "
                                  f"(daemon counters encrypted/plain {before} -> {after}, "
                                  f"{run.connections} connections)")
                return
            # all resumed but the first (fresh) one, or none: what the row claims to measure
            want = run.connections - 1 if bed.mode.resumption else 0
            if after[2] - before[2] < want or (not bed.mode.resumption and after[2] > before[2]):
                self.samples.note(f"{what}: discarded: {after[2] - before[2]} of "
                                  f"{run.connections} connections resumed, expected {want}")
                return
        self.samples.connections[key] = ConnectionSamples(run.per_s, run.latencies_ms)

    # ---- request/response

    def exchanges(self) -> None:
        s = self.settings
        for key, mode in EXCHANGE_PLAN.items():
            what = f"request/response {key}"
            with self._bed(what, mode) as bed:
                for rep in range(s.repetitions):
                    self.progress.step(f"{what} (4 connections, {s.seconds:g} s), run "
                                       f"{rep + 1}/{s.repetitions}")
                    if bed is None:
                        continue
                    self._guarded(what, lambda: self.samples.exchanges.setdefault(
                        key, []).append(exchange_rate(bed, s.seconds)))

    # ---- 4. idle flows and memory

    def memory(self) -> None:
        s = self.settings
        what = "memory"
        self.progress.step(f"{what}: daemon RSS with 0, {', '.join(map(str, s.idle_checkpoints))} "
                           f"idle encrypted flows")
        with self._bed(what, AES128) as bed:
            if bed is not None:
                self._guarded(what, lambda: self._one_memory(bed))

    def _one_memory(self, bed: BenchBed) -> None:
        before = _encrypted_count(bed)
        checkpoints = idle_flows(bed, list(self.settings.idle_checkpoints),
                                 self.settings.idle_timeout)
        encrypted = _encrypted_count(bed)[0] - before[0]
        for point in checkpoints:
            if point.held < point.wanted:
                self.samples.note(f"memory: only {point.held} of {point.wanted} idle flows could "
                                  f"be opened ({point.failed} failed)")
            # The larger daemon of the two: the per-flow figure must hold for both ends.
            self.samples.rss_by_flows[point.held] = max(point.rss.values())
        held = max(p.held for p in checkpoints)
        if held < 10_000:
            self.samples.note(f"memory: rss_mb_10k is null: {held} idle flows were held "
                              f"(RSS {max(checkpoints[-1].rss.values()) / 2**20:.1f} MiB)")
        if encrypted < held:
            self.samples.rss_by_flows.clear()
            self.samples.note(f"memory: discarded: {held} flows held but the daemon counted "
                              f"only {encrypted} encrypted")

    # ---- per-operation costs (others' micro-benchmarks)

    def engine_costs(self) -> None:
        self.progress.step("per-operation costs (bench.packet_costs, bench.engine)")
        for module, args in MICRO_BENCHMARKS.items():
            if not (REPO_ROOT / (module.replace(".", "/") + ".py")).exists():
                continue
            try:
                done = subprocess.run([sys.executable, "-m", module, *args],
                                      capture_output=True, text=True, timeout=300,
                                      cwd=str(REPO_ROOT))
            except subprocess.SubprocessError as exc:
                self.samples.note(f"{module}: failed: {_one_line(exc)}")
                continue
            if done.returncode != 0:
                self.samples.note(f"{module}: exit {done.returncode}: "
                                  f"{_one_line(done.stderr.strip().splitlines()[-1:])}")
                continue
            short = module.split(".")[-1]
            self.samples.engine_us.update({f"{short}: {name}": value for name, value
                                           in parse_us_lines(done.stdout).items()})


def round_order(names: list[str], rep: int) -> list[str]:
    """The order of the beds in round ``rep``: as given, then reversed, and so on (ABBA), so a
    slow drift of the machine's load does not favour one side."""
    return list(names) if rep % 2 == 0 else list(reversed(names))


#: The micro-benchmarks (module -> arguments); bench.engine reports its best batch of 200
#: packets, from its default 20,000 (~1 s).
MICRO_BENCHMARKS = {"bench.packet_costs": ("--number", "2000"),
                    "bench.engine": ()}
_US_FIRST = re.compile(r"\s*([0-9.]+)\s*(?:us|µs)\s+(.+?)\s*$")
_US_AFTER = re.compile(r"\s*(.+?)\s+([0-9.]+)\s*(?:us|µs)/packet\b")


def parse_us_lines(text: str) -> dict[str, float]:
    """The micro-benchmarks' output lines -> {operation: microseconds}. Two forms:
    ``   1.23 us  what`` (bench.packet_costs) and ``what   1.23 us/packet ...``
    (bench.engine)."""
    found = {}
    for line in text.splitlines():
        first = _US_FIRST.match(line)
        if first:
            found[first.group(2)] = float(first.group(1))
            continue
        after = _US_AFTER.match(line)
        if after:
            found[after.group(1)] = float(after.group(2))
    return found


def _one_line(exc: object) -> str:
    text = str(exc).strip().replace("\n", " | ")
    return text[:400] + ("..." if len(text) > 400 else "")
