"""The nftables table's text: where each test sits, and that plain and encrypted never mix."""

from __future__ import annotations

import re
import secrets
import subprocess
from pathlib import Path

import pytest

from tcpcryptd.daemon.config import parse_config
from tcpcryptd.daemon.nftables import OffloadSpec, table_text
from tcpcryptd.daemon.runner import rule_spec
from tcpcryptd.daemon.workers import worker_config

SPEC = OffloadSpec(mark_injected=0x4, mark_seen=0x2, mark_encrypted=0x1, mark_plain=0x8,
                   timeout=7200, max_elements=1024, mark_tentative=0x10, log_groups=(3, 4))
LINES = table_text(SPEC).splitlines()


def _chain(name: str) -> list[str]:
    start = LINES.index(f"chain {name} {{")
    return LINES[start + 1:LINES.index("}", start)]


def _set(name: str) -> list[str]:
    start = LINES.index(f"set {name} {{")
    return LINES[start + 1:LINES.index("}", start)]


def test_inbound_offload_runs_after_conntrack_and_reads_the_connmark_not_the_set():
    chain = _chain("in_offload")
    assert chain[0] == "type filter hook input priority mangle - 1; policy accept;"
    assert chain[1] == ("ct mark & 0x9 == 0x8 tcp flags & (syn | ack) != syn "
                        "meta mark set meta mark | 0x8 accept")
    assert not any("@plain" in rule for rule in chain)


def test_outbound_offload_runs_before_the_raw_queue_chain_and_reads_the_set():
    chain = _chain("out_offload")
    assert chain[0] == "type filter hook output priority raw - 1; policy accept;"
    plain = chain[1:3]      # first: a packet of a recorded plain connection leaves at once
    assert [rule.split(" tcp flags & (syn | ack) != syn ")[0] for rule in plain] == [
        "meta nfproto ipv4", "meta nfproto ipv6"]
    assert all(rule.endswith(" meta mark set meta mark | 0x8 accept") for rule in plain)
    assert [re.search(r"@plain\d", rule).group() for rule in plain] == ["@plain4", "@plain6"]


def test_a_recorded_plain_packet_leaves_each_record_chain_after_its_first_rule():
    outbound, inbound = _chain("out_record"), _chain("in_record")
    assert inbound[1] == "ct mark & 0x9 == 0x8 meta mark & 0x8 != 0 accept"
    for rule, family in zip(outbound[1:3], ("ipv4", "ipv6")):
        assert rule.startswith("ct mark & 0x9 == 0x8 meta mark & 0x8 != 0 tcp flags & syn == 0 "
                               f"meta nfproto {family} update @plain")
        assert rule.endswith(" accept")


def test_no_connmark_gets_plain_and_encrypted_together():
    for name in ("out_record", "in_record"):
        chain = _chain(name)
        sets_plain = [rule for rule in chain if "ct mark set ct mark | 0x8" in rule]
        assert len(sets_plain) == 4
        assert all("ct mark & 0x1 == 0" in rule for rule in sets_plain)
        # the daemon's encrypted verdict clears plain from the connmark
        assert "meta mark & 0x1 != 0 ct mark set ct mark & 0xfffffff7 | 0x1" in chain
        # the guard comes before any rule that records plain
        guard = next(i for i, rule in enumerate(chain) if rule.startswith("ct mark & 0x1 != 0 "))
        assert guard < chain.index(sets_plain[0])


def test_syn_made_elements_are_short_lived_and_a_daemon_syn_forgets_the_pair():
    for name in ("out_record", "in_record"):
        chain = _chain(name)
        assert sum("tcp flags & syn != 0" in rule and "timeout 60s" in rule
                   for rule in chain) == 2
        forgets = [rule for rule in chain if "delete @plain" in rule]
        assert len(forgets) == 2
        assert all("meta mark & 0xa == 0x2" in rule and "ct mark set ct mark & 0xfffffff7" in rule
                   for rule in forgets)


def test_outbound_invalid_packets_need_the_daemons_mark():
    """INVALID packets belong to tracked connections whose connmark cannot be read: outbound
    they pass only with the daemon's mark (seen, injected, plain); configured skip ports
    never get one and are exempt."""
    invalid = [rule for rule in _chain("out_record") if "invalid" in rule]
    assert invalid == ["ct state invalid meta mark & 0xe == 0 drop"]
    assert not [rule for rule in _chain("in_record") if "invalid" in rule]
    skipping = table_text(OffloadSpec(4, 2, 1, 8, 60, 128, skip_ports=(22, 443))).splitlines()
    assert ("ct state invalid meta mark & 0xe == 0 tcp sport != { 22, 443 } "
            "tcp dport != { 22, 443 } drop") in skipping


def test_the_encrypted_connections_conntrack_does_not_track_have_their_own_sets():
    assert _set("enc4") == ["type ipv4_addr . inet_service . ipv4_addr . inet_service;",
                            "flags dynamic, timeout; timeout 432000s; size 1024;"]
    assert _set("enc6")[0] == "type ipv6_addr . inet_service . ipv6_addr . inet_service;"
    spec = OffloadSpec(4, 2, 1, 8, 60, 128, encrypted_timeout=3600)
    assert "flags dynamic, timeout; timeout 3600s; size 128;" in table_text(spec).splitlines()


def test_untracked_packets_the_daemon_marked_encrypted_record_their_4_tuple():
    """Outbound, the daemon's encrypted mark on an untracked packet adds or refreshes its
    4-tuple; the local stack's SYN, SYN-ACK or RST removes it (new connection, socket gone);
    its FIN only shortens the element's life to 30 minutes (data sent before it may still
    be retransmitted), and only if it is there. Inbound packets change nothing."""
    chain = _chain("out_record")
    expected = []
    for family, ip, enc in (("ipv4", "ip", "@enc4"), ("ipv6", "ip6", "@enc6")):
        key = f"{ip} saddr . tcp sport . {ip} daddr . tcp dport"
        expected += [
            f"ct state untracked tcp flags & (syn | rst) != 0 meta nfproto {family} "
            f"delete {enc} {{ {key} }}",
            f"ct state untracked tcp flags & (syn | rst | fin) == 0 meta mark & 0x1 != 0 "
            f"meta nfproto {family} update {enc} {{ {key} }}",
            f"ct state untracked tcp flags & (syn | rst | fin) == fin meta nfproto {family} "
            f"{key} {enc} update {enc} {{ {key} timeout 1800s }}"]
    assert [rule for rule in chain if "@enc" in rule and "drop" not in rule] == expected
    assert not [rule for rule in _chain("in_record")
                if "@enc" in rule and ("update" in rule or "delete" in rule)]


def test_the_untracked_guard_stops_only_4_tuples_recorded_encrypted():
    """kill -9 with a connection conntrack does not track (a NOTRACK rule): its connmark
    cannot say encrypted, but its 4-tuple in @enc does. Without seen or injected (plain does
    not count: a restarted daemon takes an unknown connection for plain) its packets are
    dropped, but a peer's SYN; other untracked connections pass."""
    out_guard = [rule for rule in _chain("out_record")
                 if rule.startswith("ct state untracked meta mark")]
    assert out_guard == [
        "ct state untracked meta mark & 0x6 == 0 meta nfproto ipv4 "
        "ip saddr . tcp sport . ip daddr . tcp dport @enc4 drop",
        "ct state untracked meta mark & 0x6 == 0 meta nfproto ipv6 "
        "ip6 saddr . tcp sport . ip6 daddr . tcp dport @enc6 drop"]
    in_guard = [rule for rule in _chain("in_record") if "untracked" in rule]
    assert in_guard == [
        "ct state untracked tcp flags & (syn | ack) != syn meta mark & 0x6 == 0 "
        "meta nfproto ipv4 ip daddr . tcp dport . ip saddr . tcp sport @enc4 drop",
        "ct state untracked tcp flags & (syn | ack) != syn meta mark & 0x6 == 0 "
        "meta nfproto ipv6 ip6 daddr . tcp dport . ip6 saddr . tcp sport @enc6 drop"]
    # the stack's SYN/RST is forgotten before the guard (a new connection passes), the
    # daemon's verdict recorded before it; all after the tracked guard, before anything
    # records the packet as plain
    chain = _chain("out_record")
    tracked = next(i for i, rule in enumerate(chain) if rule.startswith("ct mark & 0x1 != 0 "))
    record = next(i for i, rule in enumerate(chain) if "ct mark set ct mark | 0x8" in rule)
    forget, update = (chain.index(next(rule for rule in chain if word in rule))
                      for word in ("delete @enc4", "update @enc4"))
    assert tracked < chain.index("ct state invalid meta mark & 0xe == 0 drop") < record
    assert tracked < forget < update < chain.index(out_guard[0]) < record
    chain = _chain("in_record")
    tracked = next(i for i, rule in enumerate(chain) if rule.startswith("ct mark & 0x1 != 0 "))
    record = next(i for i, rule in enumerate(chain) if "ct mark set ct mark | 0x8" in rule)
    assert tracked < chain.index(in_guard[0]) < chain.index(in_guard[1]) < record


def test_a_replaced_table_keeps_the_encrypted_4_tuples_with_their_lifetimes():
    """A restart replaces the table: the old @enc elements are carried into the new one (a
    lifetime longer than the new timeout is cut to it), else the new daemon would take
    those connections for plain."""
    text = table_text(SPEC, {"enc4": [("10.0.0.1 . 5001 . 10.0.0.2 . 40000", 99),
                                      ("10.0.0.1 . 5002 . 10.0.0.2 . 40001", 500000)],
                             "enc6": []})
    lines = text.splitlines()
    assert lines.index("elements = { 10.0.0.1 . 5001 . 10.0.0.2 . 40000 expires 99s, "
                       "10.0.0.1 . 5002 . 10.0.0.2 . 40001 expires 432000s }") == \
        lines.index("set enc4 {") + 3
    assert sum(line.startswith("elements") for line in lines) == 1
    assert not any(line.startswith("elements") for line in LINES)


# --------------------------------------------------------------------------------------------
# The peer's SYN-ACK without ENO: tentative until the local stack acknowledges it


def test_a_syn_ack_without_eno_only_makes_its_connection_tentative():
    chain = _chain("in_offload")
    tentative = [rule for rule in chain if "@tentative" in rule]
    assert tentative == [
        f"meta nfproto {nfproto} tcp flags & (syn | ack | rst | fin) == syn | ack "
        f"tcp option 69 missing ct state established ct direction reply ct mark & 0xb == 0 "
        f"update @tentative{v} {{ {ip} daddr . tcp dport . {ip} saddr . tcp sport }} "
        f"meta mark set meta mark | 0x18 accept"
        for nfproto, ip, v in (("ipv4", "ip", 4), ("ipv6", "ip6", 6))]
    # after loopback is excluded; nothing here records the connection plain
    assert chain.index('iifname "lo" return') < chain.index(tentative[0])
    assert not any("ct mark set" in rule for rule in chain)


def test_the_stacks_first_ack_confirms_a_tentative_connection_and_tells_each_worker():
    chain = _chain("out_offload")
    confirm = [rule for rule in chain if "@tentative" in rule]
    assert len(confirm) == 2 and chain.index(confirm[0]) > 2    # after the plain lookups
    for rule, (ip, v) in zip(confirm, (("ip", 4), ("ip6", 6))):
        key = f"{ip} saddr . tcp sport . {ip} daddr . tcp dport"
        # ACK without SYN or RST: not the stack's RST answering a SYN-ACK with a wrong ack
        assert rule == (f"meta nfproto ipv{v} tcp flags & (syn | rst | ack) == ack "
                        f"{key} @tentative{v} delete @tentative{v} {{ {key} }} "
                        "meta mark set meta mark | 0x18 accept")
    # counted and told after conntrack, past the drop of a confirmation racing the daemon
    outbound = _chain("out_record")
    assert outbound[3] == "meta mark & 0x10 != 0 ct mark & 0x2 != 0 drop"
    assert outbound[4].startswith('meta mark & 0x10 != 0 counter name "plain_no_eno_syn_ack" ')
    assert re.findall(r"log group (\d+) snaplen 64 queue-threshold \d+", outbound[4]) == [
        "3", "4"]
    assert outbound[5] == 'oifname "lo" return'
    assert "counter plain_no_eno_syn_ack { }" in LINES


def test_tentative_sets_are_short_lived_and_bounded():
    for v in (4, 6):
        start = LINES.index(f"set tentative{v} {{")
        assert LINES[start + 2] == "flags dynamic, timeout; timeout 60s; size 1024;"


def test_a_tentative_packet_is_never_recorded_and_a_daemon_seen_syn_ack_cancels():
    inbound, outbound = _chain("in_record"), _chain("out_record")
    assert inbound[2] == "meta mark & 0x10 != 0 accept"     # right after the plain fast path
    first_record = next(i for i, rule in enumerate(inbound) if "ct mark set ct mark | 0x8" in rule)
    assert 2 < first_record
    cancels = [rule for rule in inbound if "delete @tentative" in rule]
    assert cancels == [
        f"tcp flags & (syn | ack | rst | fin) == syn | ack meta mark & 0x2 != 0 "
        f"meta nfproto ipv{v} ct mark set ct mark | 0x2 "
        f"delete @tentative{v} {{ {ip} daddr . tcp dport . {ip} saddr . tcp sport }}"
        for ip, v in (("ip", 4), ("ip6", 6))]
    # a confirmation racing the daemon's record of the real SYN-ACK never leaves
    assert outbound[3] == "meta mark & 0x10 != 0 ct mark & 0x2 != 0 drop"
    assert not any("0x10" in rule for rule in outbound[5:])     # then recorded as any plain


def test_skip_ports_never_become_tentative():
    lines = table_text(OffloadSpec(4, 2, 1, 8, 60, 128, skip_ports=(22,))).splitlines()
    assert all("tcp sport != { 22 } tcp dport != { 22 } update @tentative" in line
               for line in lines if "update @tentative" in line)


def test_each_worker_is_told_on_its_own_group():
    spec = rule_spec(parse_config({"queue": {"number": 20, "workers": 3},
                                   "marks": {"tentative": 0x100}})).offload
    assert (spec.log_groups, spec.mark_tentative) == ((8548, 8549, 8550), 0x100)
    spec = rule_spec(parse_config({"queue": {"workers": 2, "log_group": 7}})).offload
    assert spec.log_groups == (7, 8)


def test_a_worker_reads_its_own_queue_and_nflog_group():
    config = parse_config({"queue": {"number": 20, "workers": 3, "log_group": 100}})
    queue = worker_config(config, 2, True).queue
    assert (queue.number, queue.log_group, queue.workers) == (22, 102, 1)


def test_nft_accepts_the_tentative_rules():
    """``nft -c`` in a private namespace: the log statements, the set delete and the
    connmark bit are nft's syntax, not a guess."""
    name = f"tcpcryptd-tentative-{secrets.token_hex(3)}"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        pytest.skip("needs root and ip netns")
    try:
        text = table_text(OffloadSpec(4, 2, 1, 8, 60, 128, skip_ports=(22,), mark_tentative=16,
                                      log_groups=(0, 1)))
        done = subprocess.run(["ip", "netns", "exec", name, "nft", "-c", "-f", "-"], input=text,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_the_documented_listing_names_every_set_counter_and_chain():
    """docs/daemon.md, "Firewall rules": the table's listing names what the table holds."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "daemon.md").read_text()
    listing = docs[docs.index("table inet tcpcryptd\n"):]
    listing = listing[:listing.index("```")]
    names = {line.split()[1] for line in LINES
             if line.split()[:1] in (["set"], ["counter"], ["chain"])}
    assert names == {"plain4", "plain6", "tentative4", "tentative6", "enc4", "enc6",
                     "plain_no_eno_syn",
                     "plain_no_eno_syn_ack", "out_offload", "in_offload", "out_record",
                     "in_record"}
    assert all(re.search(rf"\b{name}\b", listing) for name in names), listing
