"""Firewall rule text: chains, skips, marks, idempotent install, complete removal.

The namespace tests at the end run the real iptables-restore (nft and legacy) and nft in a
private network namespace; they are skipped without root or ``ip netns``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import uuid

import pytest

from tcpcryptd.daemon import firewall
from tcpcryptd.daemon.errors import FirewallError
from tcpcryptd.daemon.firewall import (CHAIN_IN, CHAIN_OUT, Backend, RuleSpec, TableState,
                                       chain_rules, install_text, parse_save, remove_text)
from tcpcryptd.daemon.nftables import OffloadSpec

MARKS = OffloadSpec(mark_injected=0x4, mark_seen=0x2, mark_encrypted=0x1, mark_plain=0x8,
                    timeout=7200, max_elements=1024)
SPEC = RuleSpec(queue_num=5, offload=MARKS)


def test_outbound_chain_queues_with_bypass_and_skips_loopback_and_injected():
    raw = chain_rules(SPEC)["raw"]
    assert raw == [
        f"-A {CHAIN_OUT} -o lo -m mark --mark 0x4/0x4 -j CT --notrack",
        f"-A {CHAIN_OUT} -o lo -j RETURN",
        f"-A {CHAIN_OUT} -m mark --mark 0x4/0x4 -j RETURN",
        f"-A {CHAIN_OUT} -p tcp -j NFQUEUE --queue-num 5 --queue-bypass",
    ]


def test_inbound_chain_queues_encrypted_connections_without_bypass():
    assert chain_rules(SPEC)["mangle"] == [
        f"-A {CHAIN_IN} -i lo -j RETURN",
        f"-A {CHAIN_IN} -j CONNMARK --restore-mark --nfmask 0x1 --ctmask 0x1",
        f"-A {CHAIN_IN} -m connmark --mark 0x1/0x1 -j NFQUEUE --queue-num 5",
        f"-A {CHAIN_IN} -p tcp -j NFQUEUE --queue-num 5 --queue-bypass",
    ]


def test_no_iptables_rule_trusts_the_eno_option_of_a_segment():
    """Only the daemon records a connection as encrypted (a forged ``45 02`` cannot)."""
    rules = [rule for table in chain_rules(SPEC).values() for rule in table]
    assert not any("--tcp-option" in rule or "--or-mark" in rule for rule in rules)


def test_skip_ports_in_every_chain_in_chunks_of_fifteen():
    spec = RuleSpec(0, dataclasses.replace(MARKS, skip_ports=tuple(range(1000, 1020))))
    rules = chain_rules(spec)
    for chain in (CHAIN_OUT, CHAIN_IN):
        skips = [rule for table in rules.values() for rule in table
                 if rule.startswith(f"-A {chain} ") and "multiport" in rule]
        assert skips == [
            f"-A {chain} -p tcp -m multiport --ports "
            + ",".join(str(p) for p in range(1000, 1015)) + " -j RETURN",
            f"-A {chain} -p tcp -m multiport --ports 1015,1016,1017,1018,1019 -j RETURN",
        ]
    queue_at = rules["raw"].index(f"-A {CHAIN_OUT} -p tcp -j NFQUEUE --queue-num 0 --queue-bypass")
    assert all("multiport" not in rule for rule in rules["raw"][queue_at:])


OUT_JUMP = f"OUTPUT -p tcp -m mark ! --mark 0x8/0x8 -j {CHAIN_OUT}"
IN_JUMP = f"INPUT -p tcp -m mark ! --mark 0x8/0x8 -j {CHAIN_IN}"


def test_install_text_declares_chains_and_adds_missing_jumps_only():
    text = install_text(SPEC, {})
    lines = text.splitlines()
    assert lines[0] == "*raw" and lines.count("COMMIT") == 2
    assert f":{CHAIN_OUT} - [0:0]" in lines and f":{CHAIN_IN} - [0:0]" in lines
    # offloaded plain packets (marks.plain) never enter our chains
    assert "-I OUTPUT 1 " + OUT_JUMP.split(" ", 1)[1] in lines
    assert "-I INPUT 1 " + IN_JUMP.split(" ", 1)[1] in lines
    installed = {
        "raw": TableState(frozenset({CHAIN_OUT}), (OUT_JUMP,)),
        "mangle": TableState(frozenset({CHAIN_IN}), (IN_JUMP,)),
    }
    again = install_text(SPEC, installed)
    assert "-I " not in again and "-D " not in again
    assert [l for l in again.splitlines() if l.startswith("-A")] == \
        [l for l in lines if l.startswith("-A")]


def test_install_text_replaces_an_earlier_jump_and_drops_a_repeated_one():
    installed = {
        "raw": TableState(frozenset({CHAIN_OUT}), (f"OUTPUT -p tcp -j {CHAIN_OUT}",)),
        "mangle": TableState(frozenset({CHAIN_IN}), (IN_JUMP, IN_JUMP, f"OTHER -j {CHAIN_IN}")),
    }
    lines = install_text(SPEC, installed).splitlines()
    changes = [line for line in lines if line.startswith(("-I ", "-D "))]
    assert changes == ["-I OUTPUT 1 " + OUT_JUMP.split(" ", 1)[1],
                       f"-D OUTPUT -p tcp -j {CHAIN_OUT}", f"-D {IN_JUMP}", f"-D OTHER -j {CHAIN_IN}"]


def test_install_text_moves_the_inbound_jump_of_an_earlier_placement():
    """Up to 0.1 the inbound chain was jumped to from mangle PREROUTING: an upgrade leaves
    the INPUT jump only, or packets would be queued twice."""
    earlier = f"PREROUTING -p tcp -m mark ! --mark 0x8/0x8 -j {CHAIN_IN}"
    installed = {"raw": TableState(frozenset({CHAIN_OUT}), (OUT_JUMP,)),
                 "mangle": TableState(frozenset({CHAIN_IN}), (earlier,))}
    changes = [line for line in install_text(SPEC, installed).splitlines()
               if line.startswith(("-I ", "-D "))]
    assert changes == ["-I INPUT 1 " + IN_JUMP.split(" ", 1)[1], f"-D {earlier}"]


SAVED = """# Generated by iptables-nft-save v1.8.9 (nf_tables) on Mon Nov 23 09:00:00 2026
*mangle
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:TCPCRYPT_IN - [0:0]
:OTHER - [0:0]
-A PREROUTING -p tcp -j TCPCRYPT_IN
-A PREROUTING -p tcp -j TCPCRYPT_IN
-A PREROUTING -s 10.0.0.1/32 -j OTHER
-A TCPCRYPT_IN -i lo -j RETURN
-A OTHER -j TCPCRYPT_IN
COMMIT
"""


def test_parse_save_finds_our_chains_and_every_jump_from_builtin_chains():
    state = parse_save(SAVED)
    assert state.chains == {CHAIN_IN}
    assert state.jumps == (f"PREROUTING -p tcp -j {CHAIN_IN}", f"PREROUTING -p tcp -j {CHAIN_IN}",
                           f"OTHER -j {CHAIN_IN}")


def test_remove_text_deletes_each_jump_then_flushes_and_deletes_chains():
    text = remove_text({"mangle": parse_save(SAVED), "raw": parse_save("")})
    assert text == "\n".join([
        "*mangle",
        f"-D PREROUTING -p tcp -j {CHAIN_IN}",
        f"-D PREROUTING -p tcp -j {CHAIN_IN}",
        f"-D OTHER -j {CHAIN_IN}",
        f"-F {CHAIN_IN}",
        f"-X {CHAIN_IN}",
        "COMMIT",
    ]) + "\n"


def test_remove_text_is_none_when_nothing_is_installed():
    assert remove_text({"raw": parse_save(""), "mangle": parse_save(":OUTPUT ACCEPT [0:0]")}) is None


def test_backend_tool_names():
    assert Backend("nft").tool(4, "restore") == "iptables-nft-restore"
    assert Backend("legacy").tool(6, "save") == "ip6tables-legacy-save"
    assert Backend("nft").tool(6) == "ip6tables-nft"


def test_failing_tool_raises_firewall_error_with_its_message():
    with pytest.raises(FirewallError, match="not found"):
        firewall._run(["tcpcryptd-no-such-iptables"])
    with pytest.raises(FirewallError, match=r"exit 1\): oops"):
        firewall._run(["sh", "-c", "echo oops >&2; exit 1"])


def test_detect_backend_follows_iptables_version(monkeypatch):
    monkeypatch.setattr(firewall, "_run", lambda argv, stdin=None:
                        "iptables v1.8.9 (legacy)\n")
    monkeypatch.setattr(Backend, "available", lambda self: True)
    assert firewall.detect_backend("auto").name == "legacy"
    assert firewall.detect_backend("nft").name == "nft"
    monkeypatch.setattr(Backend, "available", lambda self: False)
    with pytest.raises(FirewallError, match="iptables-legacy-restore"):
        firewall.detect_backend("auto")


def _netns_available() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None and \
        subprocess.run(["ip", "netns", "list"], capture_output=True).returncode == 0


def _removal(monkeypatch, *, conntrack: int, elements) -> firewall.Removal:
    """Firewall.remove with the table present, ``conntrack`` entries recorded encrypted and
    ``elements`` in the @enc sets (an exception: the sets cannot be read)."""
    removed = []
    monkeypatch.setattr(firewall.Firewall, "remove_queue", lambda self: True)
    monkeypatch.setattr(firewall.nftables, "table_exists", lambda: True)
    monkeypatch.setattr(firewall.nftables, "remove_table", lambda: removed.append(1) or True)
    monkeypatch.setattr(firewall, "encrypted_connections", lambda mark, ipv6: conntrack)

    def read():
        if isinstance(elements, Exception):
            raise elements
        return elements
    monkeypatch.setattr(firewall.nftables, "encrypted_elements", read)
    removal = firewall.Firewall(Backend("nft")).remove(0x1)
    assert removal.table == bool(removed)
    return removal


def test_the_table_stays_while_its_sets_hold_an_untracked_encrypted_connection(monkeypatch):
    removal = _removal(monkeypatch, conntrack=0,
                       elements={"enc4": [("10.0.0.1 . 5001 . 10.0.0.2 . 40000", 90)],
                                 "enc6": [("fd00::1 . 22 . fd00::2 . 40000", 90)]})
    assert (removal.queue, removal.table, removal.kept) == (True, False, True)
    assert removal.describe().startswith(
        "kept the guard table 'inet tcpcryptd' for 2 connection(s) still recorded as "
        "encrypted (0 in conntrack, 2 untracked): ")
    both = _removal(monkeypatch, conntrack=3, elements={"enc4": [("x", 1)], "enc6": []})
    assert "for 4 connection(s) still recorded as encrypted (3 in conntrack, 1 untracked)" \
        in both.describe()


def test_the_table_stays_when_its_sets_cannot_be_read(monkeypatch):
    removal = _removal(monkeypatch, conntrack=0,
                       elements=FirewallError("nft list failed (exit 1): boom"))
    assert (removal.table, removal.kept, removal.guarded, removal.untracked) == (
        False, True, 0, 0)
    assert removal.describe() == (
        "kept the guard table 'inet tcpcryptd': cannot tell which connections it still "
        "guards (nft list failed (exit 1): boom); run `tcpcryptd disable` again, or "
        "`nft delete table inet tcpcryptd` to remove it regardless")


def test_the_table_goes_when_nothing_is_recorded_encrypted(monkeypatch):
    removal = _removal(monkeypatch, conntrack=0, elements={"enc4": [], "enc6": []})
    assert (removal.table, removal.kept, removal.describe()) == (
        True, False, "removed the firewall rules")


@pytest.fixture
def netns():
    if not _netns_available():
        pytest.skip("needs root and ip netns")
    name = f"tcd-fw-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _in_netns(name: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", name, *argv], check=True,
                          capture_output=True, text=True).stdout


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_install_twice_then_remove_leaves_nothing(netns, backend):
    if not Backend(backend).available():
        pytest.skip(f"iptables-{backend} not installed")
    code = (
        "from tcpcryptd.daemon.firewall import *\n"
        "from tcpcryptd.daemon.nftables import OffloadSpec\n"
        f"fw = Firewall(Backend({backend!r}))\n"
        "spec = RuleSpec(3, OffloadSpec(0x4000, 0x2000, 0x1000, 0x800, 60, 128, skip_ports=(22,)))\n"
        "fw.install(spec); fw.install(spec)\n"
        "print(sum(len(s.jumps) for f in fw.families for s in fw.state(f).values()))\n"
        "print(fw.installed(), fw.remove(0x1000).removed, fw.remove(0x1000).removed,"
        " fw.installed())\n"
    )
    before = {family: _in_netns(netns, Backend(backend).tool(family, "save")) for family in (4, 6)}
    out = _in_netns(netns, os.environ.get("PYTHON", __import__("sys").executable), "-c", code)
    assert out.split() == ["4", "True", "True", "False", "False"]
    for family in (4, 6):
        after = _in_netns(netns, Backend(backend).tool(family, "save"))
        assert "TCPCRYPT" not in after
        assert "TCPCRYPT" not in before[family]
    assert "tcpcryptd" not in _in_netns(netns, "nft", "list", "ruleset")


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_install_replaces_an_earlier_versions_jump(netns, backend):
    """A jump without the plain-mark test (an earlier version's, left by a crash) is
    replaced, not kept beside ours: a packet traverses our chain once."""
    if not Backend(backend).available():
        pytest.skip(f"iptables-{backend} not installed")
    tool = Backend(backend).tool(4)
    _in_netns(netns, tool, "-t", "raw", "-N", CHAIN_OUT)
    _in_netns(netns, tool, "-t", "raw", "-A", "OUTPUT", "-p", "tcp", "-j", CHAIN_OUT)
    code = (
        "from tcpcryptd.daemon.firewall import *\n"
        "from tcpcryptd.daemon.nftables import OffloadSpec\n"
        f"fw = Firewall(Backend({backend!r}), ipv6=False)\n"
        "fw.install(RuleSpec(3, OffloadSpec(0x4000, 0x2000, 0x1000, 0x800, 60, 128)))\n"
        "print(fw.state(4)['raw'].jumps)\n"
        "fw.remove(0x1000)\n"
    )
    out = _in_netns(netns, os.environ.get("PYTHON", __import__("sys").executable), "-c", code)
    assert out.strip() == f"('OUTPUT -p tcp -m mark ! --mark 0x800/0x800 -j {CHAIN_OUT}',)"


def test_the_guard_outlives_the_rules_while_an_encrypted_connection_exists(netns):
    """Stop/disable remove the queue chains but keep the nftables guard for as long as
    conntrack records a connection as encrypted; then a second removal takes it away."""
    _in_netns(netns, "ip", "link", "set", "lo", "up")
    code = (
        "import socket, subprocess, time\n"
        "from tcpcryptd.daemon.firewall import *\n"
        "from tcpcryptd.daemon.nftables import OffloadSpec\n"
        "fw = Firewall(detect_backend('auto'))\n"
        "fw.install(RuleSpec(3, OffloadSpec(0x4000, 0x2000, 0x1000, 0x800, 60, 128)))\n"
        # a conntrack entry carrying the encrypted connmark: a UDP 'connection' marked by a
        # rule of the test's own (the guard rules only look at TCP)
        "subprocess.run(['nft', 'add table ip t; add chain ip t o { type filter hook output "
        "priority 0; }; add rule ip t o udp dport 9 ct mark set 0x1000'], check=True)\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.sendto(b'x', ('127.0.0.1', 9))\n"
        "first = fw.remove(0x1000)\n"
        "print(first.queue, first.table, first.guarded, fw.installed())\n"
        "subprocess.run(['conntrack', '-D', '-p', 'udp'], capture_output=True)\n"
        "second = fw.remove(0x1000)\n"
        "print(second.queue, second.table, second.guarded, fw.installed())\n"
    )
    if shutil.which("conntrack") is None:
        pytest.skip("conntrack tool not installed")
    out = _in_netns(netns, os.environ.get("PYTHON", __import__("sys").executable), "-c", code)
    assert out.split() == ["True", "False", "1", "True", "False", "True", "0", "False"]


def test_the_encrypted_sets_keep_the_table_and_survive_its_replacement(netns):
    """An @enc element (what the daemon's verdicts record for a connection conntrack does
    not track) keeps the table on removal and is carried over when a restart replaces the
    table; once it is gone, the table goes."""
    code = (
        "import subprocess\n"
        "from tcpcryptd.daemon.firewall import *\n"
        "from tcpcryptd.daemon.nftables import OffloadSpec\n"
        "fw = Firewall(detect_backend('auto'))\n"
        "spec = RuleSpec(3, OffloadSpec(0x4000, 0x2000, 0x1000, 0x800, 60, 128))\n"
        "fw.install(spec)\n"
        "subprocess.run(['nft', 'add element inet tcpcryptd enc6 { fd00::1 . 5001 . fd00::2 "
        ". 40000 }'], check=True)\n"
        "first = fw.remove(0x1000)\n"
        "print(first.table, first.guarded, first.untracked, fw.installed())\n"
        "fw.install(spec)\n"
        "second = fw.remove(0x1000)\n"
        "print(second.table, second.untracked)\n"
        "subprocess.run(['nft', 'flush set inet tcpcryptd enc6'], check=True)\n"
        "third = fw.remove(0x1000)\n"
        "print(third.table, third.untracked, fw.installed())\n"
    )
    out = _in_netns(netns, os.environ.get("PYTHON", __import__("sys").executable), "-c", code)
    assert out.split() == ["False", "0", "1", "True", "False", "1", "True", "0", "False"]
