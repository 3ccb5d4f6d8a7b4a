"""Session objects and the human-readable status table."""

from __future__ import annotations

import pytest

from tcpcryptd.daemon.status import (
    join_endpoint,
    matches,
    parse_peer,
    PEER_SUMMARY_ROWS,
    STATE_MEANINGS,
    STATES,
    compact_id,
    peers,
    render,
    render_summary,
    session_json,
    split_endpoint,
)

from .fakes import flow_status


def test_session_json_names_and_values():
    session = session_json(flow_status(aead="ChaCha20-Poly1305"))
    assert session == {
        "local": "10.0.0.1:40000", "remote": "10.0.0.2:80", "state": "encrypted", "role": "A",
        "tep": "X25519", "aead": "CHACHA20-POLY1305", "session_id": "23" + "ab" * 32,
        "bytes_out": 1000, "bytes_in": 200, "bytes_out_wire": 1106, "bytes_in_wire": 273,
        "packets_out": 5, "packets_in": 4, "age": 2.5, "abort_reason": "", "resumed": False,
        "generation_out": 0, "generation_in": 0,
    }


def test_a_resumed_session_says_so_in_json_and_table():
    resumed = flow_status(session_id="a3" + "ab" * 32, resumed=True)
    assert session_json(resumed)["resumed"] is True
    table = render({**STATUS, "sessions": [session_json(resumed), session_json(flow_status())]})
    assert table.count("encrypted+resumed") == 1


def test_unknown_tep_names_pass_through():
    assert session_json(flow_status(tep="0x7f"))["tep"] == "0x7f"


def test_endpoints_are_normalized():
    assert split_endpoint("[fd00:0201:0000:0000:0000:0000:0000:0001]:443") == ("fd00:201::1", 443)
    assert join_endpoint("fd00:201::1", 443) == "[fd00:201::1]:443"
    assert join_endpoint("10.1.2.3", 1) == "10.1.2.3:1"


def test_matches():
    session = session_json(flow_status())
    assert matches(session, "10.0.0.2", 80, None)
    assert matches(session, None, None, 40000)
    assert not matches(session, "10.0.0.2", 81, None)
    assert not matches(session, "not-an-ip", 80, None)
    assert not matches(session, "10.0.0.2", 80, 40001)


STATUS = {
    "daemon": {"pid": 42, "version": "0.1.0", "enabled": True, "queue": 0, "firewall": "nft",
               "uptime": 3725.0, "held_packets": 1},
    "counters": {"plain": 2, "encrypted": 1},
}


def test_render_table():
    text = render({**STATUS, "sessions": [
        session_json(flow_status()),
        session_json(flow_status(remote="10.0.0.9:22", state="keying", tep="", aead="",
                                 session_id="", age=75))]})
    lines = text.splitlines()
    assert lines[0] == ("tcpcryptd 0.1.0 (pid 42): encryption of new connections enabled; "
                        "queue 0, nft rules, up 1h02m, 1 held packets")
    assert lines[1] == "counters: encrypted=1, plain=2"
    assert lines[2].split() == ["LOCAL", "REMOTE", "STATE", "ROLE", "TEP", "AEAD", "SESSION",
                                "ID", "OUT", "B/PKT", "IN", "B/PKT", "AGE"]
    assert lines[3].split() == ["10.0.0.1:40000", "10.0.0.2:80", "encrypted", "A", "X25519",
                                "AES-128-GCM", "23ababab...abab", "1000B/5", "200B/4", "2s"]
    assert lines[4].split() == ["10.0.0.1:40000", "10.0.0.9:22", "keying", "A", "-", "-", "-",
                                "1000B/5", "200B/4", "1m15s"]
    # columns line up
    assert lines[3].index("10.0.0.2:80") == lines[2].index("REMOTE")


def test_render_without_sessions_and_human_sizes():
    text = render({**STATUS, "daemon": {**STATUS["daemon"], "enabled": False, "uptime": 5},
                   "sessions": []})
    assert "connections disabled" in text and text.endswith("no sessions\n")
    big = session_json(flow_status()) | {"bytes_out": 5 * 1024 * 1024, "bytes_in": 2048}
    row = render({**STATUS, "sessions": [big]}).splitlines()[-1]
    assert "5.0M/5" in row and "2.0K/4" in row


def test_render_says_when_a_limit_left_rows_out():
    one = [session_json(flow_status())]
    assert render({**STATUS, "matched": 5, "sessions": one}).endswith(
        "\n1 of 5 matching sessions shown\n")
    assert "shown" not in render({**STATUS, "matched": 1, "sessions": one})
    assert render({**STATUS, "matched": 3, "sessions": []}).endswith(
        "no sessions\n0 of 3 matching sessions shown\n")


def test_render_summary():
    assert render_summary({"sessions": 0, "states": {},
                           "connections": {"encrypted": 0, "plain": 3, "offloaded": 0}}) == (
        "0 sessions; connections: encrypted 0, plain 3, offloaded 0")


@pytest.mark.parametrize("text, peer", [
    ("10.0.0.2", ("10.0.0.2", None)),
    ("10.0.0.2:80", ("10.0.0.2", 80)),
    ("fd00:0201::0002", ("fd00:201::2", None)),
    ("fd00::1:80", ("fd00::1:80", None)),          # a bare IPv6 address has no port
    ("[fd00::1]", ("fd00::1", None)),
    ("[fd00::1]:80", ("fd00::1", 80)),
])
def test_parse_peer(text, peer):
    assert parse_peer(text) == peer


@pytest.mark.parametrize("text", ["", ":80", "10.0.0.2:", "10.0.0.2:x", "10.0.0.256",
                                  "host:80", "[fd00::1]:0", "[fd00::1", "10.0.0.2:65536"])
def test_parse_peer_rejects(text):
    with pytest.raises(ValueError):
        parse_peer(text)


def test_compact_session_id():
    assert compact_id("23" + "0123456789abcdef" * 4) == "23012345...cdef"
    assert compact_id("") == ""


def _many(count: int) -> list[dict]:
    """``count`` sessions: most with 10.0.0.2 (one still keying), three with fd00::9."""
    rows = [session_json(flow_status(local=f"10.0.0.1:{40000 + n}", age=10.0 + n))
            for n in range(count - 4)]
    rows.append(session_json(flow_status(local="10.0.0.1:39999", state="keying",
                                         session_id="", tep="", aead="", age=0.5)))
    rows += [session_json(flow_status(local=f"[fd00::1]:{n}", remote="[fd00::9]:443",
                                      age=200.0 + n)) for n in range(1, 4)]
    return rows


def test_many_sessions_one_line_per_peer():
    rows = _many(PEER_SUMMARY_ROWS + 5)
    text = render({**STATUS, "sessions": rows})
    lines = text.splitlines()
    assert lines[2].split() == ["PEER", "CONNECTIONS", "ENCRYPTED", "OUT", "IN", "LATEST",
                                "HANDSHAKE"]
    # 10.0.0.2: the newest session with keys is 10 s old (the keying one has none)
    assert lines[3].split() == ["10.0.0.2", str(PEER_SUMMARY_ROWS + 2),
                                str(PEER_SUMMARY_ROWS + 1), "21.5K", "4.3K", "10s", "ago"]
    assert lines[4].split() == ["fd00::9", "3", "3", "2.9K", "600B", "3m21s", "ago"]
    assert lines[5] == (f"{PEER_SUMMARY_ROWS + 5} sessions with 2 peers; "
                        f"`tcpcryptd status --all` lists every session")
    assert "SESSION ID" in render({**STATUS, "sessions": rows}, full=True)
    assert "PEER" not in render({**STATUS, "sessions": rows[:PEER_SUMMARY_ROWS]})


def test_peer_without_any_handshake_comes_last():
    summary = peers([session_json(flow_status(remote="10.0.0.7:1", session_id="",
                                              state="syn-sent")),
                     session_json(flow_status(remote="10.0.0.8:1", age=99))])
    assert [(p["peer"], p["handshake"]) for p in summary] == [("10.0.0.8", 99),
                                                              ("10.0.0.7", None)]


def test_every_state_is_documented():
    assert tuple(STATE_MEANINGS) == STATES
    assert "tombstone" in STATES
