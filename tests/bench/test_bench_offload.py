"""Plain TCP with the daemon on one end vs no daemon: figures, ratios, targets, table, order.

Pure functions only: no network, no clock.
"""

from __future__ import annotations

import json

import pytest

from bench.bed import parse_queued
from bench.passthrough import syn_rules
from bench.report import (
    OFFLOAD_DIRECTIONS,
    OFFLOAD_REMEASURED,
    OffloadSamples,
    Samples,
    build_results,
    compute_ratios,
    format_table,
    merge_offload,
    target_verdicts,
)
from bench.runner import round_order
from testbed import BedError


def results_of(samples: Samples) -> dict:
    return build_results(samples, machine={"cpu": "test"}, date="2026-01-01 00:00 UTC")


def offload_samples() -> Samples:
    samples = Samples()
    samples.offload["daemon_client"] = OffloadSamples(
        throughput=[(10_000.0, 9_900.0), (12_000.0, 11_000.0), (9_000.0, None)],
        connections=[(5000.0, 2000.0), (6000.0, 2500.0), (None, 2400.0)],
        connections_syn_passthrough=[3000.0, 3200.0, 3100.0],
        latencies_no_daemon=[0.10, 0.08, 0.09],
        latencies_daemon=[0.25, 0.21, 0.23],
        latencies_syn_passthrough=[0.12, 0.13],
        queued_per_connection=[2.0, 2.0, 1.5],
        daemon_cpu_pct=[0.1, 0.0, 0.2],
        daemon_cpu_us_per_connection=[120.0, 100.0, 140.0])
    return samples


def test_offload_figures_and_ratios() -> None:
    results = results_of(offload_samples())
    entry = results["offload"]["daemon_client"]
    # medians of each side over every run that side measured
    assert entry["throughput_mbps"]["no_daemon"] == 10_000.0
    assert entry["throughput_mbps"]["daemon"] == pytest.approx(10_450.0)
    # the pair ratios only from pairs measured on both sides
    assert entry["throughput_mbps"]["pairs"] == 2
    assert entry["throughput_mbps"]["pair_ratio_range"] == [pytest.approx(0.917, abs=1e-3),
                                                            0.99]
    assert entry["throughput_mbps"]["pair_ratio_median"] == 0.953
    assert entry["connections_per_s"] == {"no_daemon": 5500.0, "daemon": 2400.0, "pairs": 2,
                                          "pair_ratio_median": 0.408,
                                          "pair_ratio_range": [0.4, 0.417]}
    assert entry["syn_passthrough_connections_per_s"] == 3100.0
    assert entry["added_latency_ms_median"] == pytest.approx(0.14)
    assert entry["syn_passthrough_added_latency_ms_median"] == pytest.approx(0.035)
    assert entry["queued_per_connection_max"] == 2.0
    assert entry["daemon_cpu_pct"] == 0.1
    assert entry["daemon_cpu_us_per_connection"] == 120.0
    ratios = results["ratios"]
    assert ratios["offload_daemon_client_throughput_vs_no_daemon"] == 0.953   # the pairs' median
    assert ratios["offload_daemon_client_connections_vs_no_daemon"] == 0.408   # the pairs' median
    assert ratios["offload_daemon_client_syn_passthrough_connections_vs_no_daemon"] == \
        pytest.approx(0.564, abs=1e-3)
    json.dumps(results)


def test_offload_targets_per_direction() -> None:
    results = results_of(offload_samples())
    offload = [t for t in results["targets"] if t["target"].startswith("plain TCP")]
    assert len(offload) == 2 * len(OFFLOAD_DIRECTIONS)
    by_name = {(t["target"].split(",")[0], "connects" in t["target"]): t for t in offload}
    assert by_name[("plain TCP throughput", True)]["verdict"] == "met"
    assert by_name[("plain TCP connections/s", True)]["verdict"] == "missed"
    assert "at most 2 packets queued per connection" in \
        by_name[("plain TCP connections/s", True)]["detail"]
    # the other direction was not measured: never a verdict from nothing
    assert by_name[("plain TCP throughput", False)]["verdict"] == "not measured"
    assert by_name[("plain TCP connections/s", False)]["verdict"] == "not measured"


@pytest.mark.parametrize("value, verdict", [(0.95, "met"), (0.949, "missed")])
def test_throughput_target_boundary(value: float, verdict: str) -> None:
    samples = Samples()
    samples.offload["daemon_server"] = OffloadSamples(throughput=[(1000.0, 1000.0 * value)])
    target = next(t for t in results_of(samples)["targets"]
                  if t["target"].startswith("plain TCP throughput") and "accepts" in t["target"])
    assert target["verdict"] == verdict


def test_offload_table_rows() -> None:
    table = format_table(results_of(offload_samples()))
    assert "| Mbit/s, daemon host connects (A -> B) | 10,000.0 | 10,450.0 | 0.95x | " \
           "0.92x - 0.99x (2 pairs) |" in table
    assert "| connections/s, daemon host accepts (B -> A) | n/a | n/a | n/a | n/a |" in table
    assert ("| connections/s with only SYN segments queued to a do-nothing consumer (vs no "
            "daemon) | 3,100.0 (0.56x) | n/a (n/a) |") in table


def test_results_without_offload_still_render() -> None:
    """A latest.json written before the offload measurement existed (--render)."""
    results = results_of(Samples())
    del results["offload"]
    results["ratios"] = {k: v for k, v in results["ratios"].items() if "offload" not in k}
    assert "plain TCP, tcpcryptd on one end" not in format_table(results)
    assert all(v is None for k, v in compute_ratios(results).items() if "offload" in k)
    assert all(t.verdict == "not measured" for t in target_verdicts(results)
               if t.name.startswith("plain TCP"))


def test_round_order_alternates() -> None:
    names = ["plain", "daemon", "syn"]
    assert round_order(names, 0) == names
    assert round_order(names, 1) == ["syn", "daemon", "plain"]
    assert round_order(names, 2) == names
    assert names == ["plain", "daemon", "syn"]


def test_parse_queued_sums_id_sequence() -> None:
    text = ("    0  12345     0 2 65531     0     0      517  1\n"
            "    1  12346     3 2 65531     0     0       10  1\n")
    assert parse_queued(text) == 527
    assert parse_queued("") == 0
    with pytest.raises(BedError):
        parse_queued("0 1 2\n")


def test_syn_only_rules_queue_syn_segments_where_the_daemon_does() -> None:
    rules = syn_rules(7)
    assert [rule[:3] for rule in rules] == [["-t", "raw", "OUTPUT"],
                                            ["-t", "mangle", "INPUT"]]
    for rule in rules:
        assert "--tcp-flags" in rule and rule[rule.index("--tcp-flags") + 1:][:2] == ["SYN",
                                                                                     "SYN"]
        assert "lo" in rule and "!" in rule
        assert rule[rule.index("-j"):] == ["-j", "NFQUEUE", "--queue-num", "7",
                                           "--queue-bypass"]


def test_merge_offload_replaces_only_that_section() -> None:
    """--offload-only: the new measurement replaces the section, its ratios and targets;
    every other figure stays, and a note says which figures are from when."""
    earlier = results_of(Samples())
    earlier["throughput_mbps"]["plain"] = 12_345.0
    earlier["notes"] = ["other work competed", "plain TCP, daemon on one end: 1-min load 6.0"]
    merged = merge_offload(earlier, offload_samples(), "2026-01-02 00:00 UTC")
    assert merged["throughput_mbps"]["plain"] == 12_345.0
    assert merged["offload"]["daemon_client"]["connections_per_s"]["daemon"] == 2400.0
    assert merged["ratios"]["offload_daemon_client_throughput_vs_no_daemon"] == 0.953
    targets = {t["target"]: t["verdict"] for t in merged["targets"]}
    assert sum(v == "met" for k, v in targets.items() if k.startswith("plain TCP")) == 1
    assert merged["notes"][0] == "other work competed"
    assert not any(n.startswith("plain TCP, daemon on one end") for n in merged["notes"])
    assert merged["notes"][1].startswith(OFFLOAD_REMEASURED + " 2026-01-02 00:00 UTC")
    assert "2026-01-01 00:00 UTC" in merged["notes"][1]
    # a second re-measurement does not pile up notes
    again = merge_offload(merged, offload_samples(), "2026-01-03 00:00 UTC")
    assert [n for n in again["notes"] if n.startswith(OFFLOAD_REMEASURED)] == \
        [again["notes"][1]]
    assert earlier["offload"]["daemon_client"]["connections_per_s"]["daemon"] is None


def test_the_passthrough_queues_every_packet_the_kernel_would_offload():
    """The pass-through baseline adds no ENO option, so with the daemon's own rules the
    kernel would decide its connections plain by itself (a SYN or SYN-ACK without ENO) and
    queue nothing after them; its rules send every SYN and SYN-ACK to the queue instead."""
    from bench.passthrough import passthrough_spec
    from tcpcryptd.daemon.config import Config
    from tcpcryptd.daemon.nftables import table_text

    spec = passthrough_spec(Config(), 7)
    assert (spec.queue_num, spec.workers) == (7, 1)
    chain = table_text(spec.offload).split("chain in_offload {")[1].split("}")[0].splitlines()
    kernel_decides = [i for i, rule in enumerate(chain)
                      if "option 69 missing" in rule]
    assert kernel_decides, chain
    # a rule before them returns every SYN and SYN-ACK, so neither ever matches
    assert any(rule.strip() == "tcp flags & syn != 0 return" for rule in chain[:kernel_decides[0]])
