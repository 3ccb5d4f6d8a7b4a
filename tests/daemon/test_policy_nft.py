"""Policy ``require`` in the nftables table: the peers' SYNs and SYN-ACKs it may select reach
the queue even without ENO (otherwise the kernel alone would leave them plain)."""

from __future__ import annotations

import ipaddress
import secrets
import subprocess

import pytest

from tcpcryptd.daemon.config import Config, parse_config
from tcpcryptd.daemon.nftables import OffloadSpec, require_selectors, table_text
from tcpcryptd.daemon.runner import rule_spec
from tcpcryptd.engine.policy import Mode, Rule

NET = ipaddress.ip_network
RULES = (Rule(Mode.REQUIRE, peer=NET("10.0.0.0/8"), local_port=22),
         Rule(Mode.SKIP, remote_port=443),
         Rule(Mode.REQUIRE, peer=NET("fd00::/16"), remote_port=5000),
         Rule(Mode.PREFER, peer=NET("192.0.2.0/24")))


def test_one_selector_per_require_rule():
    assert require_selectors(RULES, Mode.PREFER) == (
        "ip saddr 10.0.0.0/8 tcp dport 22", "ip6 saddr fd00::/16 tcp sport 5000")
    assert require_selectors(RULES[1:2], Mode.SKIP) == ()
    assert require_selectors(RULES, Mode.REQUIRE) == ("",)   # every SYN


def test_the_exceptions_come_before_the_no_eno_shortcut():
    spec = OffloadSpec(4, 2, 1, 8, 60, 128, require_selectors(RULES, Mode.PREFER))
    lines = table_text(spec).splitlines()
    chain = lines[lines.index("chain in_offload {"):]
    shortcut = next(i for i, line in enumerate(chain) if "option 69 missing" in line)
    assert chain[shortcut - 2:shortcut] == [
        "tcp flags & syn != 0 ip saddr 10.0.0.0/8 tcp dport 22 return",
        "tcp flags & syn != 0 ip6 saddr fd00::/16 tcp sport 5000 return"]
    every = table_text(OffloadSpec(4, 2, 1, 8, 60, 128, ("",))).splitlines()
    assert "tcp flags & syn != 0 return" in every
    assert not any(line.endswith(" return") and "syn" in line
                   for line in table_text(OffloadSpec(4, 2, 1, 8, 60, 128)).splitlines())


def test_the_daemon_builds_them_from_the_config():
    config = parse_config({"policy": {"rules": [{"mode": "require", "local_port": 22}]}})
    assert rule_spec(config).offload.queued_syns == ("tcp dport 22",)
    assert rule_spec(Config()).offload.queued_syns == ()


def test_nft_accepts_the_table(tmp_path):
    """``nft -c`` (check only) in a private namespace: the syntax is nft's, not a guess."""
    name = f"tcpcryptd-policy-{secrets.token_hex(3)}"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        pytest.skip("needs root and ip netns")
    try:
        text = table_text(OffloadSpec(4, 2, 1, 8, 60, 128,
                                      require_selectors(RULES, Mode.PREFER) + ("",)))
        done = subprocess.run(["ip", "netns", "exec", name, "nft", "-c", "-f", "-"], input=text,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
