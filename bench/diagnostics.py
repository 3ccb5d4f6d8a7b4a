"""What makes a "CPU-bound or not" conclusion checkable, recorded during each bulk run.

* machine idle % over the transfer (``/proc/stat`` first ``cpu`` line, idle + iowait ticks);
* each daemon's CPU % and run-queue wait % (``/proc/PID/schedstat`` fields 1 and 2, ns);
* the NFQUEUE backlog: mean ``queue_total`` (field 3 of
  ``/proc/net/netfilter/nfnetlink_queue``) over samples taken inside each namespace;
* the 1-minute load average (``/proc/loadavg``).

A low per-daemon busy % alone does not show spare CPU: on a shared 2-core machine other
processes may take the rest. Idle ≈ 0 or a standing NFQUEUE backlog does show saturation.
The parsers are pure functions of the file text (unit-tested); :class:`RunDiagnostics` reads
the files.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

#: Seconds between two NFQUEUE backlog samples.
BACKLOG_INTERVAL_S = 0.25


class DiagnosticsError(ValueError):
    """A /proc file did not have the expected form."""


def parse_proc_stat(text: str) -> tuple[int, int]:
    """``/proc/stat`` -> (idle ticks, total ticks) of the aggregate ``cpu`` line.
    Idle counts ``idle`` + ``iowait`` (fields 4 and 5); the total excludes guest time, which
    ``user``/``nice`` already contain (proc(5))."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            try:
                ticks = [int(value) for value in fields[1:9]]
            except ValueError as exc:
                raise DiagnosticsError(f"/proc/stat cpu line not numeric: {line!r}") from exc
            if len(ticks) < 5:
                raise DiagnosticsError(f"/proc/stat cpu line too short: {line!r}")
            return ticks[3] + ticks[4], sum(ticks)
    raise DiagnosticsError("/proc/stat has no aggregate cpu line")


def idle_percent(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """Machine idle % between two :func:`parse_proc_stat` readings (None if no tick passed)."""
    total = after[1] - before[1]
    if total <= 0:
        return None
    return 100.0 * (after[0] - before[0]) / total


def parse_schedstat(text: str) -> tuple[int, int]:
    """``/proc/PID/schedstat`` -> (ns on the CPU, ns waiting on a run queue)."""
    fields = text.split()
    if len(fields) < 2:
        raise DiagnosticsError(f"schedstat too short: {text!r}")
    try:
        return int(fields[0]), int(fields[1])
    except ValueError as exc:
        raise DiagnosticsError(f"schedstat not numeric: {text!r}") from exc


def parse_queue_total(text: str) -> int:
    """``/proc/net/netfilter/nfnetlink_queue`` -> packets waiting in all queues together
    (sum of field 3, ``queue_total``, over the queue lines)."""
    total = 0
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 3:
            raise DiagnosticsError(f"nfnetlink_queue line too short: {line!r}")
        try:
            total += int(fields[2])
        except ValueError as exc:
            raise DiagnosticsError(f"nfnetlink_queue not numeric: {line!r}") from exc
    return total


def parse_loadavg(text: str) -> float:
    """``/proc/loadavg`` -> the 1-minute load average."""
    try:
        return float(text.split()[0])
    except (IndexError, ValueError) as exc:
        raise DiagnosticsError(f"loadavg not understood: {text!r}") from exc


def _read(path: str) -> str:
    with open(path, encoding="ascii") as handle:
        return handle.read()


@dataclass
class RunDiagnostics:
    """Diagnostics of one transfer: :meth:`start` before it, :meth:`stop` after it.

    ``daemon_pids`` maps a label (A, B) to a daemon PID; ``backlog_readers`` maps a label to a
    callable returning the text of that namespace's ``nfnetlink_queue`` file.
    """

    daemon_pids: Mapping[str, int]
    backlog_readers: Mapping[str, Callable[[], str]]
    _stat: tuple[int, int] = (0, 0)
    _sched: dict[str, tuple[int, int]] = field(default_factory=dict)
    _started: float = 0.0
    _backlog: dict[str, list[int]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._stat = parse_proc_stat(_read("/proc/stat"))
        self._sched = {label: parse_schedstat(_read(f"/proc/{pid}/schedstat"))
                       for label, pid in self.daemon_pids.items()}
        self._started = time.monotonic()
        self._backlog = {label: [] for label in self.backlog_readers}
        if self.backlog_readers:
            self._thread = threading.Thread(target=self._sample_backlog, daemon=True)
            self._thread.start()

    def _sample_backlog(self) -> None:
        while not self._stop.wait(BACKLOG_INTERVAL_S):
            for label, reader in self.backlog_readers.items():
                try:
                    self._backlog[label].append(parse_queue_total(reader()))
                except (OSError, DiagnosticsError):
                    continue

    def stop(self) -> dict[str, object]:
        """The figures of the run (JSON-ready)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        wall_ns = (time.monotonic() - self._started) * 1e9
        result: dict[str, object] = {
            "machine_idle_pct": _round(idle_percent(self._stat,
                                                    parse_proc_stat(_read("/proc/stat")))),
            "loadavg_1m": parse_loadavg(_read("/proc/loadavg")),
        }
        daemons = {}
        for label, pid in self.daemon_pids.items():
            run_ns, wait_ns = parse_schedstat(_read(f"/proc/{pid}/schedstat"))
            run0, wait0 = self._sched[label]
            daemons[label] = {"cpu_pct": _round(100.0 * (run_ns - run0) / wall_ns),
                              "runqueue_wait_pct": _round(100.0 * (wait_ns - wait0) / wall_ns)}
        result["daemons"] = daemons
        result["nfqueue_backlog_mean"] = {
            label: _round(sum(samples) / len(samples)) if samples else None
            for label, samples in self._backlog.items()}
        result["nfqueue_backlog_samples"] = {label: len(samples)
                                             for label, samples in self._backlog.items()}
        return result


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def summarize(runs: list[dict]) -> dict[str, object]:
    """Median of each figure over the repetitions of one throughput row."""
    def med(values: list[float | None]) -> float | None:
        present = [value for value in values if value is not None]
        return statistics.median(present) if present else None

    labels = sorted({label for run in runs for label in run.get("daemons", {})})
    queues = sorted({label for run in runs for label in run.get("nfqueue_backlog_mean", {})})
    return {
        "runs": len(runs),
        "machine_idle_pct": med([run["machine_idle_pct"] for run in runs]),
        "loadavg_1m": med([run["loadavg_1m"] for run in runs]),
        "daemons": {label: {key: med([run["daemons"][label][key] for run in runs
                                      if label in run.get("daemons", {})])
                            for key in ("cpu_pct", "runqueue_wait_pct")}
                    for label in labels},
        "nfqueue_backlog_mean": {label: med([run["nfqueue_backlog_mean"].get(label)
                                             for run in runs]) for label in queues},
    }
