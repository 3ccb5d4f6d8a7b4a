"""The pure parts of the benchmark: statistics, ratios, target verdicts, the JSON schema."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.docs import BEGIN, END, replace_section
from bench.report import (
    ConnectionSamples,
    LossSamples,
    OffloadSamples,
    Samples,
    build_results,
    format_table,
    median,
    percentile,
    ratio,
)
from bench.runner import parse_us_lines

SCHEMA_KEYS = {"machine", "date", "throughput_mbps", "loss", "connections", "memory",
               "cpu_s_per_gb", "ratios", "targets", "notes"}
THROUGHPUT_KEYS = {"plain", "passthrough", "aes128gcm", "chacha20", "aes256gcm",
                   "parallel4_aes128gcm", "aes128gcm_workers", "parallel4_aes128gcm_workers"}
CONNECTION_KEYS = {"plain_per_s", "passthrough_per_s", "x25519_per_s", "p256_per_s",
                   "x25519_resumed_per_s", "added_latency_ms_median", "added_latency_ms_p99"}


def full_samples() -> Samples:
    samples = Samples()
    samples.throughput = {"plain": [9000, 9500, 8000], "passthrough": [400, 420, 380],
                          "aes128gcm": [1300, 1250, 1260], "chacha20": [1200],
                          "aes256gcm": [1230], "parallel4_aes128gcm": [1500]}
    samples.loss = [LossSamples(0.01, [100.0, 90.0, 110.0], [160.0, 155.0, 140.0],
                                [True] * 6)]
    samples.connections = {
        "plain": ConnectionSamples(3000.0, [0.2, 0.3, 0.25, 1.0]),
        "passthrough": ConnectionSamples(1200.0, [0.4]),
        "x25519": ConnectionSamples(1500.0, [0.45, 0.5, 0.4, 3.0]),
        "p256": ConnectionSamples(900.0, [3.0]),
        "x25519_resumed": ConnectionSamples(3300.0, [0.9]),
    }
    samples.rss_by_flows = {0: 30_000_000, 1000: 33_000_000, 10_000: 60_000_000}
    samples.cpu_s_per_gb = [10.0, 12.0, 11.0]
    samples.offload = {
        "daemon_client": OffloadSamples(throughput=[(10_000.0, 9_800.0)],
                                        connections=[(5000.0, 4500.0)],
                                        queued_per_connection=[2.0]),
        "daemon_server": OffloadSamples(throughput=[(10_000.0, 10_000.0)],
                                        connections=[(5000.0, 4000.0)],
                                        queued_per_connection=[1.0]),
    }
    return samples


def results_of(samples: Samples) -> dict:
    return build_results(samples, machine={"cpu": "test"}, date="2026-01-01 00:00 UTC")


def verdicts(results: dict) -> list[str]:
    return [target["verdict"] for target in results["targets"]]


def test_median_odd_even_empty() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert median([]) is None


def test_percentile_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([5.0], 99) == 5.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1.0], 101)


@given(st.lists(st.floats(-1e6, 1e6), min_size=1), st.floats(0, 100))
def test_percentile_is_a_sample_within_bounds(values: list[float], q: float) -> None:
    found = percentile(values, q)
    assert found in values
    assert min(values) <= median(values) <= max(values)


def test_ratio_unknown_or_zero_denominator() -> None:
    assert ratio(1.0, 4.0) == 0.25
    assert ratio(None, 4.0) is None
    assert ratio(1.0, None) is None
    assert ratio(1.0, 0.0) is None


def test_schema_and_values() -> None:
    results = results_of(full_samples())
    assert SCHEMA_KEYS <= set(results)
    assert set(results["throughput_mbps"]) == THROUGHPUT_KEYS
    assert set(results["connections"]) == CONNECTION_KEYS
    assert set(results["memory"]) == {"bytes_per_flow", "rss_mb_10k"}
    assert set(results["loss"][0]) == {"loss", "passthrough_mbps", "tcpcryptd_mbps", "intact"}
    assert results["throughput_mbps"]["plain"] == 9000
    assert results["throughput_mbps"]["aes128gcm"] == 1260
    assert results["loss"][0] == {"loss": 0.01, "passthrough_mbps": 100.0,
                                  "tcpcryptd_mbps": 155.0, "intact": True}
    assert results["memory"]["bytes_per_flow"] == 3000
    assert results["memory"]["rss_mb_10k"] == round(60_000_000 / 2**20, 1)
    assert results["cpu_s_per_gb"] == 11.0
    conn = results["connections"]
    assert conn["added_latency_ms_median"] == pytest.approx(0.475 - 0.275)
    assert conn["added_latency_ms_p99"] == pytest.approx(2.0)
    assert results["ratios"]["aes128gcm_vs_passthrough"] == pytest.approx(3.15)
    assert results["ratios"]["loss_0.01_vs_passthrough"] == pytest.approx(1.55)
    json.dumps(results)      # serializable as is


def test_all_targets_met() -> None:
    assert verdicts(results_of(full_samples())) == ["met"] * 12


def test_targets_missed() -> None:
    samples = full_samples()
    samples.throughput["aes128gcm"] = [100.0]
    samples.throughput["parallel4_aes128gcm"] = [1100.0]
    samples.cpu_s_per_gb = [29.8]
    samples.connections["x25519"] = ConnectionSamples(500.0, [5.0])
    samples.connections["x25519_resumed"] = ConnectionSamples(600.0, [4.0])
    samples.rss_by_flows = {0: 30_000_000, 10_000: 90_000_000}
    samples.loss[0].tcpcryptd_mbps = [10.0]
    samples.offload["daemon_client"].throughput = [(10_000.0, 9_000.0)]
    samples.offload["daemon_client"].connections = [(5000.0, 3000.0)]
    samples.offload["daemon_server"].throughput = [(10_000.0, 5_000.0)]
    samples.offload["daemon_server"].connections = [(5000.0, 1000.0)]
    assert verdicts(results_of(samples)) == ["missed"] * 12


def test_integrity_failure_is_reported_and_misses_the_target() -> None:
    samples = full_samples()
    samples.loss[0].intact[3] = False
    results = results_of(samples)
    assert results["loss"][0]["intact"] is False
    assert verdicts(results)[2] == "missed"
    assert "**NO**" in format_table(results)


def test_nothing_measured_is_null_never_invented() -> None:
    samples = Samples()
    samples.note("tcpcryptd did not start")
    results = results_of(samples)
    assert set(results["throughput_mbps"].values()) == {None}
    assert set(results["connections"].values()) == {None}
    assert results["memory"] == {"bytes_per_flow": None, "rss_mb_10k": None}
    assert results["cpu_s_per_gb"] is None
    assert set(results["ratios"].values()) == {None}
    assert verdicts(results) == ["not measured"] * 12
    assert results["notes"] == ["tcpcryptd did not start"]
    assert "n/a" in format_table(results)


def test_quick_run_has_no_10k_rss() -> None:
    samples = full_samples()
    samples.rss_by_flows = {0: 30_000_000, 1000: 32_000_000}
    memory = results_of(samples)["memory"]
    assert memory == {"bytes_per_flow": 2000, "rss_mb_10k": None}


def test_parse_micro_benchmark_lines() -> None:
    text = ("   0.41 us  parse (IPv4, 1448-byte payload)\n"
            "outbound              31.84 us/packet  (target <= 10 us: MISSED)\n"
            "some other line\n")
    assert parse_us_lines(text) == {"parse (IPv4, 1448-byte payload)": 0.41,
                                    "outbound": 31.84}


def test_doc_section_replaced_between_markers() -> None:
    text = f"# Title\n\nmethod\n\n{BEGIN}\nold table\n{END}\n\ntrailer\n"
    new = replace_section(text, f"{BEGIN}\nnew table\n{END}")
    assert "old table" not in new and "new table" in new
    assert new.startswith("# Title") and new.endswith("trailer\n")
    assert replace_section("# Title\n", f"{BEGIN}\nx\n{END}").endswith(f"{END}\n")


def test_top_costs_sorted_by_own_time() -> None:
    import cProfile
    import pstats

    from bench.profiling import top_costs

    def busy() -> int:
        return sum(i * i for i in range(20000))

    profiler = cProfile.Profile()
    profiler.runcall(busy)
    costs = top_costs(pstats.Stats(profiler), count=3)
    assert 1 <= len(costs) <= 3
    assert [c.tottime for c in costs] == sorted((c.tottime for c in costs), reverse=True)
    assert all(0 <= c.share <= 1 for c in costs)
