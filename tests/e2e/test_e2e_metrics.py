"""``metrics.listen``: a running daemon's Prometheus endpoint after real connections.

Daemons in both namespaces, A's with metrics on its loopback, and one curl download. A
scrape (curl in A's namespace, as Prometheus would) shows it: flows, connections, sessions,
application bytes at least the payload, handshake and verdict histograms, queue drops.
"""

from __future__ import annotations

import pytest
from e2e_support import E2E
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

SIZE = 1_000_000
PORT = 9469


def _scrape(e2e: E2E) -> dict[tuple[str, tuple], float]:
    text = e2e.bed.a.run("curl", "--silent", "--show-error", "--max-time", "30",
                         f"http://127.0.0.1:{PORT}/metrics", timeout=60).stdout.decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.parametrize("workers", [1, 2])
def test_scrape_a_running_daemon(e2e: E2E, workers: int) -> None:
    """One worker serves everything; with several, the supervisor serves the merged status
    (the histograms and session counts, fed by a worker's own thread, stay empty)."""
    config = e2e.bed.workdir / "metrics.toml"
    config.write_text(f'[metrics]\nlisten = "127.0.0.1:{PORT}"\n[queue]\nworkers = {workers}\n')
    e2e.bed.daemon("A", ["--config", str(config)])
    e2e.bed.daemon("B")
    before = _scrape(e2e)
    assert before[("tcpcryptd_connections_total", (("reason", "all"), ("result", "encrypted")))] == 0
    capture = e2e.bed.capture("metrics")
    download = e2e.curl("A", "B", SIZE)
    capture.stop()
    assert download.intact, download.describe()
    e2e.assert_encrypted(capture.analyze(e2e.marker))
    got = _scrape(e2e)
    assert got[("tcpcryptd_connections_total", (("reason", "all"), ("result", "encrypted")))] == 1
    if workers == 1:
        assert got[("tcpcryptd_sessions_total", (("resumed", "false"),))] == 1
        assert got[("tcpcryptd_handshake_duration_seconds_count", ())] == 1
        assert 0 < got[("tcpcryptd_handshake_duration_seconds_sum", ())] < 75  # handshake_timeout
        assert got[("tcpcryptd_verdict_latency_seconds_count", ())] >= 10
    # the connection lingers after its close (60 s): its bytes are in the scrape
    assert got[("tcpcryptd_bytes_total", (("direction", "in"), ("layer", "plain")))] > SIZE
    assert got[("tcpcryptd_bytes_total", (("direction", "in"), ("layer", "wire")))] > SIZE
    assert got[("tcpcryptd_packets_total", (("direction", "out"),))] > 0
    assert sum(value for (name, _), value in got.items() if name == "tcpcryptd_flows") == 1
    assert got[("tcpcryptd_queue_dropped_total", (("cause", "queue_full"),))] >= 0
    assert got[("tcpcryptd_encryption_enabled", ())] == 1
    assert got[("tcpcryptd_counter_total", (("name", "encrypted"),))] == 1
