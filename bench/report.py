"""The pure part of ``make bench``: statistics, ratios, target verdicts, latest.json, the table.

Nothing here touches the network or a clock: the runner (``bench/__main__.py``) collects raw
samples into a :class:`Samples`, and :func:`build_results` turns them into the documented
JSON object (``bench/results/latest.json``, schema in docs/benchmarks.md). A value that was
not measured is ``None`` and the reason is in ``notes``; no number here is ever invented.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bench.diagnostics import summarize

#: Throughput rows in table order: key in ``throughput_mbps`` -> label.
THROUGHPUT_ROWS: dict[str, str] = {
    "plain": "plain TCP",
    "passthrough": "NFQUEUE pass-through",
    "aes128gcm": "tcpcryptd AES-128-GCM",
    "chacha20": "tcpcryptd ChaCha20-Poly1305",
    "aes256gcm": "tcpcryptd AES-256-GCM",
    "parallel4_aes128gcm": "tcpcryptd AES-128-GCM, 4 flows",
    "aes128gcm_workers": "tcpcryptd AES-128-GCM, a worker per CPU",
    "parallel4_aes128gcm_workers": "tcpcryptd AES-128-GCM, a worker per CPU, 4 flows",
}
#: The tcpcryptd throughput rows (compared with pass-through and plain).
ENCRYPTED_ROWS = ("aes128gcm", "chacha20", "aes256gcm", "parallel4_aes128gcm",
                  "aes128gcm_workers", "parallel4_aes128gcm_workers")
#: Connection-rate modes: key -> label.
CONNECTION_ROWS: dict[str, str] = {
    "plain": "plain TCP",
    "passthrough": "NFQUEUE pass-through",
    "x25519": "tcpcryptd X25519",
    "p256": "tcpcryptd P-256",
    "x25519_resumed": "tcpcryptd X25519, resumed",
}

#: Request/response modes (bench.conntool exchange): key -> label.
EXCHANGE_ROWS: dict[str, str] = {
    "plain": "plain TCP",
    "passthrough": "NFQUEUE pass-through",
    "aes128gcm": "tcpcryptd AES-128-GCM",
    "aes128gcm_workers": "tcpcryptd AES-128-GCM, a worker per CPU",
}

#: Plain TCP with tcpcryptd in A only vs no daemon: who connects -> label. The client sends.
OFFLOAD_DIRECTIONS: dict[str, str] = {
    "daemon_client": "daemon host connects (A -> B)",
    "daemon_server": "daemon host accepts (B -> A)",
}
#: Packets of one plain connection the daemon host may queue: its SYN phase (SYN, SYN-ACK,
#: first ACK).
MAX_QUEUED_PER_CONNECTION = 3

#: The targets (reported, never asserted). Encrypted flows against the MTU-sized NFQUEUE
#: pass-through measured in the same run; the connection figures are sequential connect +
#: 1-byte request/response + close.
TARGET_AES_VS_PASSTHROUGH = 3.0
TARGET_PARALLEL_VS_PASSTHROUGH = 3.0
TARGET_LOSS_VS_PASSTHROUGH = 1.0
TARGET_LOSS_RATE = 0.01
#: half of the 59.5 CPU s/GB the daemons spent before the GSO-aware queue binding
TARGET_CPU_S_PER_GB = 29.75
TARGET_X25519_VS_PASSTHROUGH = 1.0
TARGET_ADDED_LATENCY_MS = 0.3
#: A resumed connection skips the key agreement and the Init messages (RFC 8548 §3.5)
TARGET_RESUMED_VS_FRESH = 2.0
TARGET_BYTES_PER_FLOW = 4096
TARGET_OFFLOAD_THROUGHPUT = 0.95
TARGET_OFFLOAD_CONNECTIONS = 0.8


def median(values: Sequence[float]) -> float | None:
    """Median of the samples (mean of the middle two for an even count); None when empty."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return None
    middle = n // 2
    return float(ordered[middle]) if n % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100): the smallest sample with at least q% of the
    samples at or below it. None when empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not in 0..100")
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None when either is unknown or the denominator is not > 0."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def difference(value: float | None, baseline: float | None) -> float | None:
    if value is None or baseline is None:
        return None
    return value - baseline


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class LossSamples:
    """Every transfer at one loss rate: mbps of intact transfers and the integrity of all."""

    loss: float
    passthrough_mbps: list[float] = field(default_factory=list)
    tcpcryptd_mbps: list[float] = field(default_factory=list)
    #: one entry per transfer made (either mode): True when both sha256 matched
    intact: list[bool] = field(default_factory=list)


@dataclass
class ConnectionSamples:
    """One connection-rate run: rate and connect-to-first-byte latencies (ms)."""

    per_s: float
    latencies_ms: list[float]


#: (no daemon, daemon on A) of one interleaved pair of runs; None where a run failed.
Pair = tuple[float | None, float | None]


@dataclass
class OffloadSamples:
    """Plain TCP with tcpcryptd in A only vs no daemon at all, one direction.

    The runs alternate between the two beds (ABBA order), so each pair was measured at
    nearly the same time: the per-pair ratios show how much of a ratio is noise.
    """

    #: Mbit/s of each iperf3 pair
    throughput: list[Pair] = field(default_factory=list)
    #: connections/s of each connection-rate pair
    connections: list[Pair] = field(default_factory=list)
    #: connections/s with only the SYN segments queued to a do-nothing consumer (measured in
    #: the same rotation as the pairs): the floor of queueing the SYN phase at all
    connections_syn_passthrough: list[float] = field(default_factory=list)
    #: connect-to-first-byte latencies (ms) of all connection-rate runs, per mode
    latencies_no_daemon: list[float] = field(default_factory=list)
    latencies_daemon: list[float] = field(default_factory=list)
    latencies_syn_passthrough: list[float] = field(default_factory=list)
    #: packets A's NFQUEUE took per connection, one figure per daemon run (kernel count)
    queued_per_connection: list[float] = field(default_factory=list)
    #: A's daemon CPU % (utime+stime / wall) during each daemon iperf3 run
    daemon_cpu_pct: list[float] = field(default_factory=list)
    #: A's daemon CPU microseconds per connection, one per daemon connection-rate run
    daemon_cpu_us_per_connection: list[float] = field(default_factory=list)


@dataclass
class Samples:
    """Raw measurements of one bench run, filled in by the runner."""

    #: throughput row -> mbps of each repetition
    throughput: dict[str, list[float]] = field(default_factory=dict)
    loss: list[LossSamples] = field(default_factory=list)
    connections: dict[str, ConnectionSamples] = field(default_factory=dict)
    #: daemon RSS in bytes with N idle encrypted flows (N -> bytes), the larger of A and B
    rss_by_flows: dict[int, int] = field(default_factory=dict)
    #: CPU seconds of both daemons per GB, one per bulk transfer
    cpu_s_per_gb: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    engine_us: dict[str, float] = field(default_factory=dict)
    #: throughput row -> one :meth:`bench.diagnostics.RunDiagnostics.stop` dict per run
    diagnostics: dict[str, list[dict]] = field(default_factory=dict)
    #: :data:`OFFLOAD_DIRECTIONS` key -> plain TCP with the daemon on one end vs none
    offload: dict[str, OffloadSamples] = field(default_factory=dict)
    #: :data:`EXCHANGE_ROWS` key -> request/response round trips per second, per run
    exchanges: dict[str, list[float]] = field(default_factory=dict)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def _loss_entry(entry: LossSamples) -> dict[str, Any]:
    return {
        "loss": entry.loss,
        "passthrough_mbps": _rounded(median(entry.passthrough_mbps), 1),
        "tcpcryptd_mbps": _rounded(median(entry.tcpcryptd_mbps), 1),
        "intact": all(entry.intact) if entry.intact else None,
    }


def _connections(samples: Samples) -> dict[str, Any]:
    runs = samples.connections
    result: dict[str, Any] = {f"{key}_per_s": _rounded(runs[key].per_s, 1) if key in runs
                              else None for key in CONNECTION_ROWS}
    plain, x25519 = runs.get("plain"), runs.get("x25519")
    if plain is not None and x25519 is not None:
        result["added_latency_ms_median"] = _rounded(difference(
            median(x25519.latencies_ms), median(plain.latencies_ms)))
        result["added_latency_ms_p99"] = _rounded(difference(
            percentile(x25519.latencies_ms, 99), percentile(plain.latencies_ms, 99)))
    else:
        result["added_latency_ms_median"] = result["added_latency_ms_p99"] = None
    return result


def _pair_stats(pairs: list[Pair], digits: int) -> dict[str, Any]:
    """Medians of each side, and the range of the ratios of the pairs measured on both."""
    no_daemon = [a for a, _ in pairs if a is not None]
    daemon = [b for _, b in pairs if b is not None]
    pair_ratios = [b / a for a, b in pairs if a is not None and b is not None and a > 0]
    return {"no_daemon": _rounded(median(no_daemon), digits),
            "daemon": _rounded(median(daemon), digits),
            "pairs": len(pair_ratios),
            "pair_ratio_median": _rounded(median(pair_ratios)),
            "pair_ratio_range": ([_rounded(min(pair_ratios)), _rounded(max(pair_ratios))]
                                 if pair_ratios else None)}


def _offload(samples: Samples) -> dict[str, Any]:
    """Per direction: both sides' medians, the daemon host's queue use and CPU."""
    result: dict[str, Any] = {}
    for key in OFFLOAD_DIRECTIONS:
        entry = samples.offload.get(key, OffloadSamples())
        queued = entry.queued_per_connection
        result[key] = {
            "throughput_mbps": _pair_stats(entry.throughput, 1),
            "connections_per_s": _pair_stats(entry.connections, 1),
            "syn_passthrough_connections_per_s": _rounded(
                median(entry.connections_syn_passthrough), 1),
            "added_latency_ms_median": _rounded(difference(median(entry.latencies_daemon),
                                                           median(entry.latencies_no_daemon))),
            "syn_passthrough_added_latency_ms_median": _rounded(difference(
                median(entry.latencies_syn_passthrough), median(entry.latencies_no_daemon))),
            "queued_per_connection_max": _rounded(max(queued), 2) if queued else None,
            "daemon_cpu_pct": _rounded(median(entry.daemon_cpu_pct), 1),
            "daemon_cpu_us_per_connection": _rounded(median(entry.daemon_cpu_us_per_connection),
                                                     0),
        }
    return result


#: The idle-flow count of ``memory.rss_mb_10k``.
IDLE_FLOWS_FULL = 10_000


def _memory(samples: Samples) -> dict[str, Any]:
    """bytes per flow = (RSS_N - RSS_0) / N for the largest N measured (10,000 in a full
    run); rss_mb_10k is the RSS (MiB) at 10,000 idle flows, None if not reached."""
    rss = samples.rss_by_flows
    measured = [n for n in rss if n > 0]
    bytes_per_flow = None
    if 0 in rss and measured:
        top = max(measured)
        bytes_per_flow = round((rss[top] - rss[0]) / top)
    rss_top = rss.get(IDLE_FLOWS_FULL)
    return {"bytes_per_flow": bytes_per_flow,
            "rss_mb_10k": _rounded(rss_top / 2**20, 1) if rss_top is not None else None}


def compute_ratios(results: dict[str, Any]) -> dict[str, float | None]:
    """tcpcryptd against the pass-through baseline and against plain TCP (same run)."""
    ratios: dict[str, float | None] = {}
    tput = results["throughput_mbps"]
    ratios["passthrough_vs_plain"] = ratio(tput["passthrough"], tput["plain"])
    for row in ENCRYPTED_ROWS:
        ratios[f"{row}_vs_passthrough"] = ratio(tput[row], tput["passthrough"])
        ratios[f"{row}_vs_plain"] = ratio(tput[row], tput["plain"])
    for entry in results["loss"]:
        ratios[f"loss_{entry['loss']:g}_vs_passthrough"] = ratio(entry["tcpcryptd_mbps"],
                                                                 entry["passthrough_mbps"])
    conn = results["connections"]
    for key in ("passthrough", "x25519", "p256", "x25519_resumed"):
        ratios[f"{key}_connections_vs_plain"] = ratio(conn[f"{key}_per_s"], conn["plain_per_s"])
    ratios["resumed_vs_fresh_connections"] = ratio(conn["x25519_resumed_per_s"],
                                                   conn["x25519_per_s"])
    for key in ("x25519", "p256", "x25519_resumed"):
        ratios[f"{key}_connections_vs_passthrough"] = ratio(conn[f"{key}_per_s"],
                                                            conn["passthrough_per_s"])
    exchanges = results.get("exchanges_per_s", {})
    for key in EXCHANGE_ROWS:
        if key != "plain":
            ratios[f"{key}_exchanges_vs_plain"] = ratio(exchanges.get(key),
                                                        exchanges.get("plain"))
    offload = results.get("offload", {})
    for key in OFFLOAD_DIRECTIONS:
        for metric, name in (("throughput_mbps", "throughput"),
                             ("connections_per_s", "connections")):
            figures = offload.get(key, {}).get(metric, {})
            # the median of the pairs' ratios: each pair is measured back to back, so a
            # drift of the machine's load between pairs cancels (the ratio of the two
            # sides' medians mixes pairs, and is only the fallback of older results)
            paired = figures.get("pair_ratio_median")
            ratios[f"offload_{key}_{name}_vs_no_daemon"] = (
                paired if paired is not None
                else ratio(figures.get("daemon"), figures.get("no_daemon")))
        ratios[f"offload_{key}_syn_passthrough_connections_vs_no_daemon"] = ratio(
            offload.get(key, {}).get("syn_passthrough_connections_per_s"),
            offload.get(key, {}).get("connections_per_s", {}).get("no_daemon"))
    return {key: _rounded(value) for key, value in ratios.items()}


@dataclass(frozen=True)
class Target:
    name: str
    value: float | None
    verdict: str            # "met", "missed" or "not measured"
    detail: str


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "missed")


def _bound(name: str, value: float | None, bound: float, *, at_most: bool = False,
           unit: str = "x", missing: str = "not measured") -> Target:
    """A target that ``value`` meets when it is at least (or, ``at_most``, at most) ``bound``."""
    if value is None:
        return Target(name, None, _verdict(None), missing)
    ok = value <= bound if at_most else value >= bound
    return Target(name, value, _verdict(ok), f"{value}{unit}")


def target_verdicts(results: dict[str, Any]) -> list[Target]:
    """The targets, each met / missed / not measured (never asserted): the encrypted path
    (throughput, loss, CPU, connection setup, resumption, memory), then plain TCP with the
    daemon on one end (throughput and connections/s, each direction)."""
    ratios = results["ratios"]
    connections = results["connections"]
    targets = [
        _bound(f"AES-128-GCM single flow >= {TARGET_AES_VS_PASSTHROUGH:g}x pass-through",
               ratios.get("aes128gcm_vs_passthrough"), TARGET_AES_VS_PASSTHROUGH,
               missing="tcpcryptd or pass-through throughput missing"),
        _bound(f"4 AES-128-GCM flows >= {TARGET_PARALLEL_VS_PASSTHROUGH:g}x pass-through",
               ratios.get("parallel4_aes128gcm_vs_passthrough"),
               TARGET_PARALLEL_VS_PASSTHROUGH),
    ]

    at_target = [e for e in results["loss"] if math.isclose(e["loss"], TARGET_LOSS_RATE)]
    loss_ratio = ratios.get(f"loss_{TARGET_LOSS_RATE:g}_vs_passthrough")
    integrity = [e["intact"] for e in results["loss"] if e["intact"] is not None]
    if not at_target or loss_ratio is None:
        ok, detail = None, "no tcpcryptd/pass-through pair measured at 1% loss"
    else:
        ok = loss_ratio >= TARGET_LOSS_VS_PASSTHROUGH and all(integrity)
        detail = f"{loss_ratio}x, " + ("every transfer intact" if all(integrity)
                                        else "INTEGRITY FAILURE")
    if integrity and not all(integrity):
        ok = False
    targets.append(Target(
        f"1% loss >= {TARGET_LOSS_VS_PASSTHROUGH:g}x pass-through, every transfer intact",
        loss_ratio, _verdict(ok), detail))

    targets += [
        _bound(f"<= {TARGET_CPU_S_PER_GB} CPU s/GB (both daemons)",
               results.get("cpu_s_per_gb"), TARGET_CPU_S_PER_GB, at_most=True, unit=" s/GB"),
        _bound(f"X25519 connections/s >= {TARGET_X25519_VS_PASSTHROUGH:g}x pass-through",
               ratios.get("x25519_connections_vs_passthrough"), TARGET_X25519_VS_PASSTHROUGH,
               missing="connection rate missing"),
        _bound(f"added latency per connection <= {TARGET_ADDED_LATENCY_MS} ms (median)",
               connections.get("added_latency_ms_median"), TARGET_ADDED_LATENCY_MS,
               at_most=True, unit=" ms"),
        _bound(f"resumed connections/s >= {TARGET_RESUMED_VS_FRESH:g}x fresh (X25519)",
               ratios.get("resumed_vs_fresh_connections"), TARGET_RESUMED_VS_FRESH,
               missing="connection rate missing"),
        _bound(f"<= {TARGET_BYTES_PER_FLOW // 1024} KB daemon memory per idle encrypted flow",
               results["memory"]["bytes_per_flow"], TARGET_BYTES_PER_FLOW, at_most=True,
               unit=" B/flow", missing="memory not measured"),
    ]

    offload = results.get("offload", {})
    for key, label in OFFLOAD_DIRECTIONS.items():
        for name, what, floor in (("throughput", "throughput", TARGET_OFFLOAD_THROUGHPUT),
                                  ("connections", "connections/s", TARGET_OFFLOAD_CONNECTIONS)):
            target = _bound(f"plain TCP {what}, daemon on one end, {label}: >= {floor}x "
                            "no daemon", ratios.get(f"offload_{key}_{name}_vs_no_daemon"), floor)
            queued = offload.get(key, {}).get("queued_per_connection_max")
            if target.value is not None and queued is not None:
                target = replace(target, detail=f"{target.detail}, at most {queued:g} "
                                 "packets queued per connection")
            targets.append(target)
    return targets


def judge(results: dict[str, Any]) -> None:
    """Set ``ratios`` and ``targets`` of ``results`` from its figures, in place: on a new
    run, a merged re-measurement and ``--render`` alike."""
    results["ratios"] = compute_ratios(results)
    results["targets"] = [{"target": t.name, "value": t.value, "verdict": t.verdict,
                           "detail": t.detail} for t in target_verdicts(results)]


def build_results(samples: Samples, *, machine: dict[str, Any], date: str,
                  settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The latest.json object: the task's schema plus ``ratios``, ``targets`` and ``notes``."""
    results: dict[str, Any] = {
        "machine": machine,
        "date": date,
        "throughput_mbps": {row: _rounded(median(samples.throughput.get(row, [])), 1)
                            for row in THROUGHPUT_ROWS},
        "loss": [_loss_entry(entry) for entry in samples.loss],
        "connections": _connections(samples),
        "memory": _memory(samples),
        "cpu_s_per_gb": _rounded(median(samples.cpu_s_per_gb), 2),
        "offload": _offload(samples),
        "exchanges_per_s": {key: _rounded(median(samples.exchanges.get(key, [])), 1)
                            for key in EXCHANGE_ROWS},
    }
    judge(results)
    if samples.engine_us:
        results["engine_us"] = dict(samples.engine_us)
    if samples.diagnostics:
        results["diagnostics"] = {row: summarize(runs)
                                  for row, runs in samples.diagnostics.items()}
    if settings is not None:
        results["settings"] = settings
    results["notes"] = list(samples.notes)
    return results


def merge_offload(results: dict[str, Any], samples: Samples, date: str) -> dict[str, Any]:
    """``results`` (an earlier latest.json) with its plain-TCP-with-one-daemon section
    replaced by a new measurement (``python -m bench --offload-only``): ratios and targets
    recomputed, the new run's notes added, and a note saying which figures are from when."""
    merged = dict(results)
    merged["offload"] = _offload(samples)
    judge(merged)
    notes = [note for note in results.get("notes", [])
             if not note.startswith(("plain TCP, daemon on one end", OFFLOAD_REMEASURED))]
    notes.append(f"{OFFLOAD_REMEASURED} {date} (python -m bench --offload-only); every other "
                 f"figure is from the run of {results.get('date', '?')}")
    merged["notes"] = notes + list(samples.notes)
    return merged


OFFLOAD_REMEASURED = "plain TCP with the daemon on one end vs no daemon: re-measured on"


# ---------------------------------------------------------------------------------------------
# The table (stdout and docs/benchmarks.md)


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}{unit}"


def _fmt_ratio(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.3f}x"


def format_table(results: dict[str, Any]) -> str:
    """Markdown tables of every result with its ratios, the targets and the notes."""
    ratios = results["ratios"]
    lines = ["| bulk throughput (1 iperf3 flow unless said) | Mbit/s | vs pass-through | "
             "vs plain |", "|---|---:|---:|---:|"]
    tput = results["throughput_mbps"]
    for row, label in THROUGHPUT_ROWS.items():
        vs_pt = ratios.get(f"{row}_vs_passthrough") if row in ENCRYPTED_ROWS else None
        vs_plain = (ratios.get(f"{row}_vs_plain") if row in ENCRYPTED_ROWS
                    else ratios.get("passthrough_vs_plain") if row == "passthrough" else None)
        lines.append(f"| {label} | {_fmt(tput[row])} | "
                     f"{_fmt_ratio(vs_pt) if row in ENCRYPTED_ROWS else ''} | "
                     f"{_fmt_ratio(vs_plain) if row != 'plain' else ''} |")
    lines += ["", "| loss (each direction) | pass-through Mbit/s | tcpcryptd Mbit/s | ratio | "
                  "sha256 intact |", "|---:|---:|---:|---:|---|"]
    for entry in results["loss"]:
        intact = {True: "yes", False: "**NO**", None: "n/a"}[entry["intact"]]
        loss_ratio = ratios.get(f"loss_{entry['loss']:g}_vs_passthrough")
        lines.append(f"| {entry['loss'] * 100:g}% | {_fmt(entry['passthrough_mbps'])} | "
                     f"{_fmt(entry['tcpcryptd_mbps'])} | {_fmt_ratio(loss_ratio)} | {intact} |")
    conn = results["connections"]
    lines += ["", "| connection setup (connect + 1-byte request/response + close) | per s | "
                  "vs plain |", "|---|---:|---:|"]
    for key, label in CONNECTION_ROWS.items():
        vs_plain = ratios.get(f"{key}_connections_vs_plain") if key != "plain" else None
        lines.append(f"| {label} | {_fmt(conn[f'{key}_per_s'])} | "
                     f"{_fmt_ratio(vs_plain) if key != 'plain' else ''} |")
    lines.append(f"| added connect-to-first-byte latency, X25519 vs plain | median "
                 f"{_fmt(conn['added_latency_ms_median'], ' ms', 2)}, p99 "
                 f"{_fmt(conn['added_latency_ms_p99'], ' ms', 2)} | |")
    if results.get("exchanges_per_s"):
        lines += ["", "| request/response (4 connections, 100-byte request and answer) | "
                      "per s | vs plain |", "|---|---:|---:|"]
        for key, label in EXCHANGE_ROWS.items():
            vs_plain = ratios.get(f"{key}_exchanges_vs_plain")
            lines.append(f"| {label} | {_fmt(results['exchanges_per_s'].get(key))} | "
                         f"{_fmt_ratio(vs_plain) if key != 'plain' else ''} |")
    if results.get("offload"):
        lines += ["", *format_offload(results["offload"], ratios)]
    memory = results["memory"]
    lines += ["", "| daemon cost | value |", "|---|---:|",
              f"| memory per idle encrypted flow | {_fmt(memory['bytes_per_flow'], ' B', 0)} |",
              f"| daemon RSS with 10,000 idle encrypted flows (larger of A, B) | "
              f"{_fmt(memory['rss_mb_10k'], ' MiB')} |",
              f"| CPU seconds per GB (both daemons, AES-128-GCM bulk) | "
              f"{_fmt(results['cpu_s_per_gb'], ' s', 2)} |"]
    if results.get("diagnostics"):
        lines += ["", *format_diagnostics(results["diagnostics"])]
    if results.get("engine_us"):
        lines += ["", "| per-operation cost (bench.packet_costs, bench.engine) | µs |",
                  "|---|---:|"]
        lines += [f"| {name} | {value:.2f} |" for name, value in results["engine_us"].items()]
    lines += ["", "| target | value | verdict |", "|---|---|---|"]
    for target in results["targets"]:
        verdict = target["verdict"].upper() if target["verdict"] == "missed" else target["verdict"]
        lines.append(f"| {target['target']} | {target['detail']} | {verdict} |")
    if results["notes"]:
        lines += ["", "Notes:"] + [f"- {note}" for note in results["notes"]]
    return "\n".join(lines) + "\n"


def format_offload(offload: dict[str, Any], ratios: dict[str, Any]) -> list[str]:
    """Plain TCP with tcpcryptd in A only vs no daemon: both directions, both workloads, and
    what explains the connection rate (queue use, latency, the SYN-only floor)."""
    lines = ["| plain TCP, tcpcryptd on one end (A) vs no daemon | no daemon | daemon on A | "
             "ratio (median of the pairs) | pairs: lowest - highest |", "|---|---:|---:|---:|---:|"]
    for metric, name, unit in (("throughput_mbps", "throughput", "Mbit/s"),
                               ("connections_per_s", "connections", "connections/s")):
        for key, label in OFFLOAD_DIRECTIONS.items():
            figures = offload.get(key, {}).get(metric, {})
            spread = figures.get("pair_ratio_range")
            spread_text = (f"{_fmt_ratio(spread[0])} - {_fmt_ratio(spread[1])} "
                           f"({figures.get('pairs')} pairs)" if spread else "n/a")
            lines.append(f"| {unit}, {label} | {_fmt(figures.get('no_daemon'))} | "
                         f"{_fmt(figures.get('daemon'))} | "
                         f"{_fmt_ratio(ratios.get(f'offload_{key}_{name}_vs_no_daemon'))} | "
                         f"{spread_text} |")
    lines += ["", "| plain TCP, daemon on one end: where the connection rate goes | "
                  "daemon host connects (A -> B) | daemon host accepts (B -> A) |",
              "|---|---:|---:|"]
    rows = [
        ("packets queued per connection (A's kernel count, most of any run)",
         lambda entry, key: _fmt(entry.get("queued_per_connection_max"), "", 2)),
        ("added connect-to-first-byte latency, median",
         lambda entry, key: _fmt(entry.get("added_latency_ms_median"), " ms", 3)),
        ("daemon CPU per connection, median",
         lambda entry, key: _fmt(entry.get("daemon_cpu_us_per_connection"), " µs", 0)),
        ("connections/s with only SYN segments queued to a do-nothing consumer (vs no daemon)",
         lambda entry, key: (
             f"{_fmt(entry.get('syn_passthrough_connections_per_s'))} ("
             f"{_fmt_ratio(ratios.get(f'offload_{key}_syn_passthrough_connections_vs_no_daemon'))}"
             f")")),
        ("added latency with only SYN segments queued to a do-nothing consumer, median",
         lambda entry, key: _fmt(entry.get("syn_passthrough_added_latency_ms_median"), " ms", 3)),
        ("daemon CPU during iperf3, median",
         lambda entry, key: _fmt(entry.get("daemon_cpu_pct"), "%", 1)),
    ]
    for title, cell in rows:
        lines.append(f"| {title} | " + " | ".join(cell(offload.get(key, {}), key)
                                                  for key in OFFLOAD_DIRECTIONS) + " |")
    return lines


def format_diagnostics(diagnostics: dict[str, Any]) -> list[str]:
    """One row per bulk throughput row: is the machine / are the daemons out of CPU?"""
    lines = ["| bulk run diagnostics (median over runs) | machine idle | load 1 min | "
             "daemon A CPU / run-queue wait | daemon B CPU / run-queue wait | "
             "NFQUEUE backlog A / B (mean packets) |", "|---|---:|---:|---:|---:|---:|"]

    def daemon(row: dict[str, Any], label: str) -> str:
        figures = row["daemons"].get(label)
        if figures is None:
            return ""
        return (f"{_fmt(figures['cpu_pct'], '%', 0)} / "
                f"{_fmt(figures['runqueue_wait_pct'], '%', 0)}")

    for key, row in diagnostics.items():
        backlog = row["nfqueue_backlog_mean"]
        queues = " / ".join(_fmt(backlog.get(label), "", 0) for label in ("A", "B")
                            ) if backlog else ""
        lines.append(f"| {THROUGHPUT_ROWS.get(key, key)} | "
                     f"{_fmt(row['machine_idle_pct'], '%', 0)} | {_fmt(row['loadavg_1m'], '', 2)} | "
                     f"{daemon(row, 'A')} | {daemon(row, 'B')} | {queues} |")
    return lines
