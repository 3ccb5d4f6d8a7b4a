"""The /proc parsers and the per-row summary of bench.diagnostics, and their place in the
results and the table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.diagnostics import (
    DiagnosticsError,
    idle_percent,
    parse_loadavg,
    parse_proc_stat,
    parse_queue_total,
    parse_schedstat,
    summarize,
)
from bench.report import Samples, build_results, format_table

PROC_STAT = """cpu  100 5 50 800 40 3 2 0 7 0
cpu0 50 2 25 400 20 1 1 0 3 0
cpu1 50 3 25 400 20 2 1 0 4 0
intr 12345 0 0
"""
NFQUEUE = """    0  12345    77 2 65531     0     0   1234  1
    1  12346     5 2 65531     0     0     99  1
"""


def test_proc_stat_idle_includes_iowait_and_total_excludes_guest() -> None:
    assert parse_proc_stat(PROC_STAT) == (840, 1000)


def test_idle_percent_over_an_interval() -> None:
    assert idle_percent((840, 1000), (870, 1200)) == pytest.approx(15.0)
    assert idle_percent((840, 1000), (840, 1000)) is None


@pytest.mark.parametrize("text", ["", "intr 1 2\n", "cpu  1 2 3\n", "cpu  a b c d e\n"])
def test_proc_stat_bad_input(text: str) -> None:
    with pytest.raises(DiagnosticsError):
        parse_proc_stat(text)


def test_schedstat_fields() -> None:
    assert parse_schedstat("123456789 2345 678\n") == (123456789, 2345)
    for bad in ("", "12", "x y z"):
        with pytest.raises(DiagnosticsError):
            parse_schedstat(bad)


def test_queue_total_sums_every_queue() -> None:
    assert parse_queue_total(NFQUEUE) == 82
    assert parse_queue_total("") == 0
    for bad in ("0 1\n", "0 1 many 2\n"):
        with pytest.raises(DiagnosticsError):
            parse_queue_total(bad)


@given(st.lists(st.integers(0, 10**6), max_size=8))
def test_queue_total_property(totals: list[int]) -> None:
    text = "".join(f"{n} 4242 {total} 2 65531 0 0 1 1\n" for n, total in enumerate(totals))
    assert parse_queue_total(text) == sum(totals)


def test_loadavg() -> None:
    assert parse_loadavg("2.51 1.20 0.90 3/345 6789\n") == pytest.approx(2.51)
    with pytest.raises(DiagnosticsError):
        parse_loadavg("")


def run(idle: float, cpu_a: float, backlog_a: float | None) -> dict:
    return {"machine_idle_pct": idle, "loadavg_1m": 2.0,
            "daemons": {"A": {"cpu_pct": cpu_a, "runqueue_wait_pct": 10.0},
                        "B": {"cpu_pct": 70.0, "runqueue_wait_pct": 12.0}},
            "nfqueue_backlog_mean": {"A": backlog_a, "B": 100.0},
            "nfqueue_backlog_samples": {"A": 20, "B": 20}}


def test_summarize_takes_medians_and_skips_missing_samples() -> None:
    summary = summarize([run(5.0, 80.0, 70.0), run(9.0, 84.0, None), run(7.0, 90.0, 90.0)])
    assert summary["runs"] == 3
    assert summary["machine_idle_pct"] == 7.0
    assert summary["daemons"]["A"] == {"cpu_pct": 84.0, "runqueue_wait_pct": 10.0}
    assert summary["nfqueue_backlog_mean"] == {"A": 80.0, "B": 100.0}


def test_diagnostics_reach_results_and_table() -> None:
    samples = Samples()
    samples.throughput = {"aes128gcm": [150.0]}
    samples.diagnostics = {"aes128gcm": [run(6.0, 81.0, 77.0)]}
    results = build_results(samples, machine={}, date="2026-11-23")
    assert results["diagnostics"]["aes128gcm"]["daemons"]["A"]["cpu_pct"] == 81.0
    table = format_table(results)
    assert "| 6% | 2.00 | 81% / 10% | 70% / 12% | 77 / 100 |" in table


def test_no_diagnostics_key_without_samples() -> None:
    assert "diagnostics" not in build_results(Samples(), machine={}, date="2026-11-23")


def test_run_diagnostics_reads_this_machine() -> None:
    import os
    import time

    from bench.diagnostics import BACKLOG_INTERVAL_S, RunDiagnostics

    diagnostics = RunDiagnostics({"A": os.getpid()}, {"A": lambda: NFQUEUE, "B": lambda: "x"})
    diagnostics.start()
    time.sleep(BACKLOG_INTERVAL_S * 2.5)
    figures = diagnostics.stop()
    assert figures["nfqueue_backlog_mean"] == {"A": 82.0, "B": None}
    assert figures["nfqueue_backlog_samples"]["A"] >= 1
    assert 0.0 <= figures["daemons"]["A"]["cpu_pct"] <= 100.0 * os.cpu_count() + 1
    assert figures["machine_idle_pct"] is None or 0.0 <= figures["machine_idle_pct"] <= 100.0


def test_py_spy_raw_samples_are_aggregated_by_the_function_on_top():
    from bench.sampling import own_time
    raw = ("<module> (tcpcryptd:6);run (tcpcryptd/daemon/loop.py:277);accept "
           "(tcpcryptd/daemon/nfqueue.py:83) 50\n"
           "<module> (tcpcryptd:6);run (tcpcryptd/daemon/loop.py:277);accept "
           "(tcpcryptd/daemon/nfqueue.py:82) 10\n"
           "<module> (tcpcryptd:6);fast_inbound (tcpcryptd/engine/inbound.py:401) 30\n"
           "idle 10\n\ngarbage line\n")
    total, top = own_time(raw, count=2)
    assert total == 100
    assert [(c.function, c.share) for c in top] == [("nfqueue.py:accept", 0.6),
                                                    ("inbound.py:fast_inbound", 0.3)]
