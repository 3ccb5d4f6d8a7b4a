"""Workers: the spread rules' BPF programs, the queue rules per worker, the supervisor's
answers merged from its workers."""

from __future__ import annotations

import pytest

from tcpcryptd.daemon.config import Config, QueueConfig
from tcpcryptd.daemon.firewall import RuleSpec, chain_rules, spread_program
from tcpcryptd.daemon.nftables import OffloadSpec
from tcpcryptd.daemon.workers import worker_config

from .bpf_model import ipv4_tcp, ipv6_tcp, run

PAIRS = {4: ("10.7.0.1", "10.7.0.2", ipv4_tcp), 6: ("fd07::1", "fd07::2", ipv6_tcp)}


def bucket(family: int, packet: bytes, buckets: int) -> int:
    """The one worker whose program matches ``packet``."""
    hits = [k for k in range(buckets) if run(spread_program(family, k, buckets), packet)]
    assert len(hits) == 1, hits
    return hits[0]


@pytest.mark.parametrize("family", (4, 6))
@pytest.mark.parametrize("buckets", (2, 3, 4, 8))
def test_both_directions_reach_one_worker_and_ports_spread(family: int, buckets: int) -> None:
    client, server, make = PAIRS[family]
    seen = []
    for sport in range(40000, 40000 + 64 * buckets):
        out = bucket(family, make(client, server, sport, 443), buckets)
        back = bucket(family, make(server, client, 443, sport), buckets)
        assert out == back
        seen.append(out)
    # one pair of hosts: every worker gets connections, none more than twice its share
    counts = [seen.count(k) for k in range(buckets)]
    assert min(counts) > 0 and max(counts) < 2 * len(seen) / buckets, counts


def test_ipv4_options_move_the_ports() -> None:
    """The program finds the ports after an IPv4 header with options (IHL > 5)."""
    plain = ipv4_tcp("10.7.0.1", "10.7.0.2", 40001, 443)
    with_options = ipv4_tcp("10.7.0.2", "10.7.0.1", 443, 40001, ihl=7)
    assert bucket(4, plain, 4) == bucket(4, with_options, 4)


def _spec(workers: int) -> RuleSpec:
    return RuleSpec(5, OffloadSpec(0x8, 0x4, 0x1, 0x2, 60, 100), workers)


@pytest.mark.parametrize("family", (4, 6))
def test_one_queue_rule_per_worker_with_the_single_queues_bypass_rules(family: int) -> None:
    rules = chain_rules(_spec(3), family)
    out = [r for r in rules["raw"] if "NFQUEUE" in r]
    inbound = [r for r in rules["mangle"] if "NFQUEUE" in r]
    assert [r.split("--queue-num ")[1] for r in out] == ["5 --queue-bypass", "6 --queue-bypass",
                                                         "7 --queue-bypass"]
    assert [r.split("--queue-num ")[1] for r in inbound] == ["5", "6", "7", "5 --queue-bypass",
                                                             "6 --queue-bypass",
                                                             "7 --queue-bypass"]
    assert all("-m connmark" in r for r in inbound[:3])
    assert f'"{spread_program(family, 1, 3)}"' in out[1] and "-m bpf" not in out[2]
    assert chain_rules(_spec(1), family) == chain_rules(_spec(1), 4)   # one queue: as before


def test_worker_configuration() -> None:
    config = Config(queue=QueueConfig(number=10, workers=3))
    second = worker_config(config, 1, enabled=False)
    assert (second.queue.number, second.queue.workers) == (11, 1)
    assert second.control.socket == config.control.socket + ".w1"
    assert not second.encryption.enabled
    assert Config().queue.worker_count() >= 1
    assert config.queue.worker_count() == 3


@pytest.fixture
def supervisor(monkeypatch):
    from tcpcryptd.daemon import workers
    from tcpcryptd.daemon.firewall import Backend, Firewall

    monkeypatch.setattr(workers.nftables, "kernel_counters", lambda: {"plain": 1})
    sup = workers.Supervisor(Config(queue=QueueConfig(workers=2)), 2, Firewall(Backend("nft")))
    sent = []

    def answers(message):
        sent.append(message)
        return [dict(a) for a in sup.script]
    monkeypatch.setattr(sup, "_ask", answers)
    sup.sent = sent
    return sup


def _status(held, counters, sessions=(), summary=None):
    answer = {"ok": True, "daemon": {"held_packets": held}, "counters": counters}
    if summary is not None:
        answer["summary"] = summary
    else:
        answer.update(matched=len(sessions), sessions=list(sessions))
    return answer


def test_status_sums_counters_and_merges_rows(supervisor) -> None:
    supervisor.script = [_status(1, {"encrypted": 2}, [{"local": "a"}]),
                         _status(2, {"encrypted": 3, "plain": 4}, [{"local": "b"}, {"local": "c"}])]
    answer = supervisor.handle({"command": "status", "limit": 2})
    assert answer["counters"] == {"encrypted": 5, "plain": 5}
    assert answer["daemon"]["held_packets"] == 3 and len(answer["daemon"]["workers"]) == 2
    assert answer["matched"] == 3 and answer["sessions"] == [{"local": "a"}, {"local": "b"}]


def test_status_summary_adds_the_workers_summaries(supervisor) -> None:
    supervisor.script = [
        _status(0, {"encrypted": 1}, summary={"sessions": 1, "states": {"encrypted": 1}}),
        _status(0, {"encrypted": 2}, summary={"sessions": 3, "states": {"encrypted": 2,
                                                                         "closed": 1}})]
    summary = supervisor.handle({"command": "status", "summary": True})["summary"]
    assert summary["sessions"] == 4 and summary["states"]["encrypted"] == 3


def test_enable_disable_reach_every_worker_and_session_id_finds_the_one(supervisor) -> None:
    from tcpcryptd.daemon.errors import ControlError

    supervisor.script = [{"ok": True}, {"ok": True}]
    assert supervisor.handle({"command": "disable"}) == {"ok": True, "enabled": False}
    assert supervisor.sent[-1] == {"command": "disable"}
    supervisor.script = [{"ok": False, "error": "no such connection"},
                         {"ok": True, "session_id": "ab"}]
    assert supervisor.handle({"command": "session-id", "local_port": 80})["session_id"] == "ab"
    supervisor.script = [{"ok": False, "error": "no such connection"}] * 2
    with pytest.raises(ControlError, match="no such connection"):
        supervisor.handle({"command": "session-id", "local_port": 80})
    supervisor.script = [{"ok": True, "session_id": "ab"}, {"ok": True, "session_id": "cd"}]
    with pytest.raises(ControlError, match="2 encrypted connections match"):
        supervisor.handle({"command": "session-id", "local_port": 80})
