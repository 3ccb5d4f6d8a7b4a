"""Prometheus metrics (daemon/metrics.py) scraped over HTTP from a daemon's control socket
served by the real control handler (stand-in engine), and their pieces."""

from __future__ import annotations

import dataclasses
import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tcpcryptd.daemon.config import Config
from tcpcryptd.daemon.control import ControlServer
from tcpcryptd.daemon.errors import ConfigError
from tcpcryptd.daemon.loop import Daemon, PacketPath
from tcpcryptd.daemon.metrics import Metrics, Traffic, queue_drops
from tcpcryptd.daemon.nfqueue import Verdicts
from tcpcryptd.engine.events import Aborted, SessionEstablished

from .fakes import ControlThread, FakeSender, ScriptedEngine, flow_status


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _scrape(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics", timeout=10) as r:
        return _samples(r.read().decode())


@pytest.fixture
def served(tmp_path):
    engine = ScriptedEngine([
        flow_status(),
        flow_status(local="10.0.0.1:40001", remote="10.0.0.3:80", session_id="", tep="",
                    aead="", state="keying"),
        flow_status(local="10.0.0.1:40002", remote="10.0.0.3:80", state="tombstone")])
    engine.counters.update({"encrypted": 3, "plain": 5, "plain_no-eno": 4,
                            "plain_half-open-limit": 1, "fallback": 2,
                            "fallback_no-common-tep": 2, "aborts": 1, "aborts_shutdown": 1,
                            "retransmits": 7})
    path = PacketPath(engine, FakeSender(), Verdicts(2, 1, 8))
    path.counters["daemon_offloaded"] = 5
    daemon = Daemon(Config(), engine, path, "nft")
    control_path = str(tmp_path / "c.sock")
    metrics = Metrics(f"127.0.0.1:{_free_port()}", control_path, queue=3)
    with ControlThread(ControlServer(control_path, daemon.handle)):
        metrics.start()
        try:
            yield metrics, engine
        finally:
            metrics.stop()


def test_scrape_turns_status_into_metrics(served) -> None:
    metrics, engine = served
    metrics.record(SessionEstablished("a:1", "b:2", "A", 0x23, "AES-128-GCM", b"\x23" * 33,
                                      False, b"k" * 28, b"l" * 28), 0.004)
    metrics.record(Aborted("a:1", "b:2", "shutdown"))   # counted by the engine's counters
    metrics.timed(lambda packet: None)(object())
    got = _scrape(metrics)
    assert got[("tcpcryptd_flows", (("state", "encrypted"),))] == 1
    assert got[("tcpcryptd_flows", (("state", "keying"),))] == 1
    assert got[("tcpcryptd_flows", (("state", "tombstone"),))] == 1
    connections = "tcpcryptd_connections_total"
    assert got[(connections, (("reason", "all"), ("result", "encrypted")))] == 3
    assert got[(connections, (("reason", "all"), ("result", "plain")))] == 5
    assert got[(connections, (("reason", "no-eno"), ("result", "plain")))] == 4
    assert got[(connections, (("reason", "half-open-limit"), ("result", "plain")))] == 1
    assert got[(connections, (("reason", "no-common-tep"), ("result", "fallback")))] == 2
    assert got[("tcpcryptd_aborts_total", (("reason", "shutdown"),))] == 1
    assert got[("tcpcryptd_sessions_total", (("resumed", "false"),))] == 1
    assert got[("tcpcryptd_sessions_total", (("resumed", "true"),))] == 0
    # flow_status: 1000 out / 200 in plain, 1106 / 273 wire, 5 / 4 packets; three flows
    assert got[("tcpcryptd_bytes_total", (("direction", "out"), ("layer", "plain")))] == 3000
    assert got[("tcpcryptd_bytes_total", (("direction", "in"), ("layer", "wire")))] == 819
    assert got[("tcpcryptd_packets_total", (("direction", "in"),))] == 12
    assert got[("tcpcryptd_handshake_duration_seconds_count", ())] == 1
    assert got[("tcpcryptd_handshake_duration_seconds_bucket", (("le", "0.005"),))] == 1
    assert got[("tcpcryptd_handshake_duration_seconds_bucket", (("le", "0.0025"),))] == 0
    assert got[("tcpcryptd_verdict_latency_seconds_count", ())] == 1
    assert got[("tcpcryptd_queue_dropped_total", (("cause", "queue_full"),))] == 0
    assert got[("tcpcryptd_held_packets", ())] == 0
    assert got[("tcpcryptd_encryption_enabled", ())] == 1
    assert got[("tcpcryptd_counter_total", (("name", "retransmits"),))] == 7
    assert got[("tcpcryptd_counter_total", (("name", "daemon_offloaded"),))] == 5
    # the connections end: their bytes stay counted
    engine._flows = []
    got = _scrape(metrics)
    assert got[("tcpcryptd_bytes_total", (("direction", "out"), ("layer", "plain")))] == 3000
    assert ("tcpcryptd_flows", (("state", "encrypted"),)) not in got


def test_port_in_use_is_a_config_error(served) -> None:
    metrics, _ = served
    second = Metrics(f"127.0.0.1:{metrics.port}", "/nonexistent", queue=0)
    with pytest.raises(ConfigError, match=r"metrics.listen: cannot listen on 127.0.0.1:\d+"):
        second.start()


def test_no_daemon_answer_gives_only_the_histograms(tmp_path) -> None:
    metrics = Metrics(f"127.0.0.1:{_free_port()}", str(tmp_path / "absent.sock"), queue=0)
    metrics.start()
    try:
        got = _scrape(metrics)
    finally:
        metrics.stop()
    assert ("tcpcryptd_verdict_latency_seconds_count", ()) in got
    assert not any(name == "tcpcryptd_flows" for name, _ in got)


def test_traffic_is_monotonic_when_a_connection_is_replaced() -> None:
    traffic = Traffic()
    row = dataclasses.asdict(flow_status())
    session = {"local": row["local"], "remote": row["remote"], "bytes_out": 100, "bytes_in": 1,
               "bytes_out_wire": 120, "bytes_in_wire": 2, "packets_out": 3, "packets_in": 4}
    assert traffic.update([session]) == [100, 1, 120, 2, 3, 4]
    # a new connection on the same addresses starts from zero again
    assert traffic.update([{**session, "bytes_out": 10}]) == [110, 2, 240, 4, 6, 8]
    assert traffic.update([]) == [110, 2, 240, 4, 6, 8]


def test_queue_drops_from_proc(tmp_path) -> None:
    proc = tmp_path / "nfnetlink_queue"
    proc.write_text("    0  12345     0 2 65531     7     1      100  1\n"
                    "    3  12346     2 2 65531    11     4     5000  1\n")
    assert queue_drops(3, str(proc)) == (11, 4)
    assert queue_drops(0, str(proc)) == (7, 1)
    assert queue_drops(9, str(proc)) == (0, 0)
    assert queue_drops(0, str(tmp_path / "absent")) == (0, 0)
