"""The ``tcpcryptd`` command through click's CliRunner, against a control socket served
from a thread by the real control handler (with a stand-in engine)."""

from __future__ import annotations

import json
import sys
import types

import pytest
from click.testing import CliRunner

from tcpcryptd import cli
from tcpcryptd.daemon.config import Config
from tcpcryptd.daemon import control
from tcpcryptd.daemon.control import ControlServer
from tcpcryptd.daemon.errors import DaemonTimeoutError
from tcpcryptd.daemon.firewall import Removal
from tcpcryptd.daemon.loop import Daemon, PacketPath
from tcpcryptd.daemon.nfqueue import Verdicts

from .fakes import ControlThread, FakeSender, ScriptedEngine, flow_status


@pytest.fixture
def no_default_config(monkeypatch, tmp_path):
    monkeypatch.setattr("tcpcryptd.daemon.config.DEFAULT_CONFIG_PATH", tmp_path / "none.toml")


@pytest.fixture
def running(tmp_path, no_default_config):
    """A control socket answered by a Daemon whose engine has one encrypted, one keying flow."""
    engine = ScriptedEngine([
        flow_status(),
        flow_status(local="10.0.0.1:40001", remote="10.0.0.3:80", session_id="", tep="",
                    aead="", state="keying")])
    daemon = Daemon(Config(), engine, PacketPath(engine, FakeSender(), Verdicts(2, 1, 8)), "nft")
    path = str(tmp_path / "c.sock")
    with ControlThread(ControlServer(path, daemon.handle)):
        yield path, engine


def invoke(*args):
    return CliRunner().invoke(cli.main, list(args))


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("run", "enable", "disable", "status", "session-id"):
        assert command in result.output


def test_status_text_and_json(running):
    path, _ = running
    text = invoke("status", "--control", path)
    assert text.exit_code == 0, text.output
    assert "encryption of new connections enabled" in text.output
    assert "23ababab...abab" in text.output and "ab" * 32 not in text.output   # compact
    machine = invoke("status", "--json", "--control", path)
    data = json.loads(machine.output)
    assert set(data) == {"daemon", "counters", "matched", "sessions"}
    assert data["sessions"][0]["session_id"] == "23" + "ab" * 32
    assert data["sessions"][1]["session_id"] == ""


def test_status_filters_run_in_the_daemon(running):
    path, engine = running
    keying = invoke("status", "--state", "keying", "--control", path)
    assert keying.exit_code == 0, keying.output
    assert "10.0.0.1:40001" in keying.output and "10.0.0.1:40000" not in keying.output
    both = invoke("status", "--state", "keying", "--state", "encrypted", "--json",
                  "--control", path)
    assert json.loads(both.output)["matched"] == 2
    by_peer = invoke("status", "--peer", "10.0.0.2:80", "--json", "--control", path)
    assert [row["remote"] for row in json.loads(by_peer.output)["sessions"]] == ["10.0.0.2:80"]
    none = invoke("status", "--peer", "10.9.9.9", "--control", path)
    assert none.exit_code == 0 and "no sessions" in none.output


def test_status_limit_says_what_was_left_out(running):
    path, _ = running
    result = invoke("status", "--limit", "1", "--control", path)
    assert result.exit_code == 0
    assert result.output.splitlines()[-1] == "1 of 2 matching sessions shown"
    assert "10.0.0.1:40001" not in result.output


def test_status_summary_is_one_line(running):
    path, engine = running
    engine.counters["daemon_offloaded"] = 4
    result = invoke("status", "--summary", "--control", path)
    assert result.exit_code == 0
    assert result.output == ("2 sessions (keying 1, encrypted 1); connections: encrypted 1, "
                             "plain 2, offloaded 4\n")
    machine = json.loads(invoke("status", "--summary", "--json", "--control", path).output)
    assert machine["summary"]["states"] == {"keying": 1, "encrypted": 1}
    assert "sessions" not in machine


@pytest.mark.parametrize("args, message", [
    (["--state", "established"], "'established' is not one of"),
    (["--peer", "example.org:80"], "is not ADDR, ADDR:PORT or [V6ADDR]:PORT"),
    (["--peer", "10.0.0.2:70000"], "is not in 1..65535"),
    (["--limit", "-1"], "-1 is not in the range x>=0"),
    (["--summary", "--limit", "3"], "--limit applies to session rows: not with --summary"),
])
def test_status_usage_errors(running, args, message):
    path, _ = running
    result = invoke("status", *args, "--control", path)
    assert result.exit_code == 2
    assert message in result.output


def test_enable_disable_on_a_running_daemon(running):
    path, engine = running
    result = invoke("disable", "--control", path)
    assert result.exit_code == 0
    assert result.output == ("encryption of new connections disabled "
                             "(existing connections unchanged)\n")
    assert engine.config.enabled is False
    assert invoke("enable", "--control", path).exit_code == 0
    assert engine.config.enabled is True


def test_session_id_by_remote_and_by_local_port(running):
    path, _ = running
    result = invoke("session-id", "10.0.0.2:80", "--control", path)
    assert result.exit_code == 0 and result.output == "23" + "ab" * 32 + "\n"
    result = invoke("session-id", "--local-port", "40000", "--control", path)
    assert result.output == "23" + "ab" * 32 + "\n"


@pytest.mark.parametrize("args, code, message", [
    (["10.0.0.3:80"], 1, "has no tcpcrypt session"),
    (["10.0.0.7:80"], 1, "no such connection"),
    ([], 2, "give HOST:PORT"),
    (["10.0.0.2"], 2, "is not HOST:PORT"),
    (["10.0.0.2:99999"], 2, "is not HOST:PORT"),
])
def test_session_id_errors(running, args, code, message):
    path, _ = running
    result = invoke("session-id", *args, "--control", path)
    assert result.exit_code == code
    assert message in result.output
    assert "Traceback" not in result.output


def test_parse_hostport():
    assert cli.parse_hostport("[fd00::1]:443") == ("fd00::1", 443)
    assert cli.parse_hostport("example.org:80") == ("example.org", 80)


def test_commands_without_a_daemon_say_so(tmp_path, no_default_config):
    path = str(tmp_path / "absent.sock")
    for command in ("status", "enable"):
        result = invoke(command, "--control", path)
        assert result.exit_code == 1
        assert f"no tcpcryptd is running (no daemon on control socket {path})" in result.output


def test_disable_without_daemon_removes_leftover_rules(tmp_path, monkeypatch, no_default_config):
    calls = []
    fake_runner = types.ModuleType("tcpcryptd.daemon.runner")
    fake_runner.remove_leftover_rules = lambda config: calls.append(config) or Removal(
        queue=len(calls) == 1, table=len(calls) == 1, guarded=0)
    monkeypatch.setitem(sys.modules, "tcpcryptd.daemon.runner", fake_runner)
    path = str(tmp_path / "absent.sock")
    first = invoke("disable", "--control", path)
    assert first.exit_code == 0
    assert first.output == "no tcpcryptd is running: removed the firewall rules it left behind\n"
    second = invoke("disable", "--control", path)
    assert second.output == "no tcpcryptd is running: no firewall rules to remove\n"
    assert calls[0].control.socket == path


def test_disable_without_daemon_keeps_the_guard_of_encrypted_connections(
        tmp_path, monkeypatch, no_default_config):
    fake_runner = types.ModuleType("tcpcryptd.daemon.runner")
    fake_runner.remove_leftover_rules = lambda config: Removal(queue=True, table=False,
                                                               guarded=3)
    monkeypatch.setitem(sys.modules, "tcpcryptd.daemon.runner", fake_runner)
    result = invoke("disable", "--control", str(tmp_path / "absent.sock"))
    assert result.exit_code == 0
    assert result.output.startswith("no tcpcryptd is running: kept the guard table "
                                    "'inet tcpcryptd' for 3 connection(s)")


@pytest.mark.parametrize("removal, said", [
    (Removal(queue=True, table=False, guarded=0, untracked=2),
     "kept the guard table 'inet tcpcryptd' for 2 connection(s) still recorded as encrypted "
     "(0 in conntrack, 2 untracked)"),
    (Removal(queue=True, table=False, guarded=0, unreadable="nft list failed"),
     "kept the guard table 'inet tcpcryptd': cannot tell which connections it still guards "
     "(nft list failed)")])
def test_disable_without_daemon_keeps_the_guard_of_untracked_connections(
        tmp_path, monkeypatch, no_default_config, removal, said):
    fake_runner = types.ModuleType("tcpcryptd.daemon.runner")
    fake_runner.remove_leftover_rules = lambda config: removal
    monkeypatch.setitem(sys.modules, "tcpcryptd.daemon.runner", fake_runner)
    result = invoke("disable", "--control", str(tmp_path / "absent.sock"))
    assert result.exit_code == 0
    assert result.output.startswith(f"no tcpcryptd is running: {said}")


def test_a_daemon_that_does_not_answer_is_not_called_absent(tmp_path, monkeypatch,
                                                            no_default_config):
    calls = []
    fake_runner = types.ModuleType("tcpcryptd.daemon.runner")
    fake_runner.remove_leftover_rules = lambda config: calls.append(config) or Removal(
        True, True, 0)
    monkeypatch.setitem(sys.modules, "tcpcryptd.daemon.runner", fake_runner)
    monkeypatch.setattr(control, "request", _busy)
    path = str(tmp_path / "busy.sock")
    for command in ("status", "disable"):
        result = invoke(command, "--control", path)
        assert result.exit_code == 1
        assert "is running but did not answer" in result.output
        assert "no tcpcryptd is running" not in result.output
    assert calls == []   # a busy daemon's firewall rules are left alone


def _busy(path, message, timeout=10.0):
    raise DaemonTimeoutError(f"tcpcryptd is running but did not answer on {path} within "
                             f"{timeout:g}s (busy?); try again")


def test_config_errors_are_one_line_naming_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[queue]\nnumber = -1\n")
    result = invoke("status", "--config", str(bad))
    assert result.exit_code == 1
    assert result.output == f"Error: {bad}: queue.number: must be in 0..65535, got -1\n"


def test_run_needs_capabilities(monkeypatch, no_default_config):
    monkeypatch.setattr(cli, "missing_capabilities", lambda: ["CAP_NET_ADMIN"])
    result = invoke("run", "--queue", "3")
    assert result.exit_code == 1
    assert "tcpcryptd run needs CAP_NET_ADMIN: run it as root" in result.output


def test_run_passes_overrides_to_the_daemon(monkeypatch, no_default_config):
    seen = []
    fake_runner = types.ModuleType("tcpcryptd.daemon.runner")
    fake_runner.run_daemon = seen.append
    monkeypatch.setitem(sys.modules, "tcpcryptd.daemon.runner", fake_runner)
    monkeypatch.setattr(cli, "missing_capabilities", lambda: [])
    result = invoke("run", "--queue", "3", "--control", "/tmp/x.sock", "--log-level", "debug")
    assert result.exit_code == 0, result.output
    assert seen[0].queue.number == 3
    assert seen[0].control.socket == "/tmp/x.sock"
    assert seen[0].log.level == "debug"


def test_run_reports_daemon_errors(monkeypatch, no_default_config):
    from tcpcryptd.daemon.errors import QueueError

    def fail(config):
        raise QueueError("cannot bind NFQUEUE 0: taken")

    fake_runner = types.ModuleType("tcpcryptd.daemon.runner")
    fake_runner.run_daemon = fail
    monkeypatch.setitem(sys.modules, "tcpcryptd.daemon.runner", fake_runner)
    monkeypatch.setattr(cli, "missing_capabilities", lambda: [])
    result = invoke("run")
    assert result.exit_code == 1 and "cannot bind NFQUEUE 0: taken" in result.output


def test_missing_capabilities_reads_proc(monkeypatch, tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t0000000000001000\n")  # bit 12 only
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(
        status if path == "/proc/self/status" else path, *a, **k))
    assert cli.missing_capabilities() == ["CAP_NET_RAW"]


def test_status_many_sessions_per_peer_unless_all(tmp_path, no_default_config):
    flows = [flow_status(local=f"10.0.0.1:{40000 + n}") for n in range(25)]
    engine = ScriptedEngine(flows)
    daemon = Daemon(Config(), engine, PacketPath(engine, FakeSender(), Verdicts(2, 1, 8)), "nft")
    path = str(tmp_path / "c.sock")
    with ControlThread(ControlServer(path, daemon.handle)):
        summary = invoke("status", "--control", path)
        full = invoke("status", "--control", path, "--all")
        limited = invoke("status", "--control", path, "--limit", "22")
    assert summary.exit_code == 0 and "PEER" in summary.output
    assert "25 sessions with 1 peer;" in summary.output and "SESSION ID" not in summary.output
    assert "SESSION ID" in full.output and full.output.count("10.0.0.2:80") == 25
    assert "SESSION ID" in limited.output and "22 of 25 matching sessions shown" in limited.output
