"""The daemon's nftables table: plain-connection offload, the encrypted-connection record, the guard.

The queue itself stays an iptables ``-j NFQUEUE`` target (:mod:`tcpcryptd.daemon.firewall`:
the nft ``queue`` statement needs a kernel built with NFT_QUEUE). Everything that decides,
per packet and without the daemon, which packets never need the queue and which must never
pass without it lives in one ``inet`` table, ``tcpcryptd``, with four base chains.

A connection is recorded as plain twice: in its connmark (``marks.plain``, per conntrack
entry, so a new connection on the same address/port pair starts unmarked) and by its 4-tuple
in ``@plain4``/``@plain6``. The set serves the one place that runs before conntrack, the
outbound offload; every other test reads the connmark, which costs no lookup. A connmark
never carries both ``marks.plain`` and ``marks.encrypted``. The chains test the cheapest
facts first, so a packet of an offloaded connection leaves each after one rule (the costs
measured on this design are in docs/daemon.md, "Firewall rules").

``out_offload`` (output, priority raw - 1: before the raw queue chain and conntrack)
    A packet that is not a pure SYN and whose 4-tuple is in the set gets ``marks.plain``.
    The local stack's first ACK on a tentative connection confirms it plain (below).
``in_offload`` (input, priority mangle - 1: after conntrack and the host's own NAT, before
the mangle queue chain)
    A packet, not a pure SYN, of a connection whose connmark says plain gets
    ``marks.plain``. A peer's SYN without an ENO option can only start
    a plain connection (RFC 8547 §4.6), so it gets ``marks.plain`` too (counted in the named
    counter ``plain_no_eno_syn``): such connections never reach the daemon at all, except
    those policy ``require`` may select (:func:`require_selectors`): the daemon must see
    their SYN to reset them. The peer's SYN-ACK without ENO makes a connection tentative
    (below), except where policy ``require`` may select it (the same selectors: the peer is
    the source, our port the destination).

The iptables jumps skip packets with ``marks.plain``: they never reach the queue.

``out_record`` (output, priority -190: after conntrack) and ``in_record`` (input, priority
-149: after the iptables mangle chain that queues)
    Run on every packet after the daemon's verdict (or the queue was bypassed):

    0. ``marks.plain`` on a packet of a connection already recorded plain: done (outbound,
       after refreshing the set element's timeout, unless the packet carries SYN).
    1. ``marks.encrypted`` on the packet (the daemon's verdict on every packet of a
       connection from the one that started its key exchange on, RFC 8547 §4.6, or any
       packet it injected) -> the connmark gets ``marks.encrypted`` and loses
       ``marks.plain`` (rewriting the same value on later packets changes nothing). Only
       the daemon can set it: no segment a blind attacker forges changes how a connection
       is classified.
    2. The guard: a packet of an encrypted connection that carries neither ``marks.seen``
       nor ``marks.injected`` did not go through the daemon (it is stopped, crashed, or the
       connection was encrypted by an earlier instance). Outbound it is rejected with a TCP
       reset, which ends the local socket at once (the reset's sequence number is the
       packet's own acknowledgment number, the socket's next expected byte); inbound it is
       dropped. Never plaintext. A packet conntrack does not track has no connmark to say
       encrypted (:func:`_untracked_guard`): a connection the host exempts with its own
       ``CT --notrack`` rule is recorded encrypted by its 4-tuple in ``@enc4``/``@enc6``
       (outbound packets carrying ``marks.encrypted`` add or refresh it, the local stack's
       SYN, SYN-ACK or RST deletes it) and its packets without ``marks.seen`` or
       ``marks.injected`` are dropped both ways (a peer's SYN excepted), so it stalls
       rather than leak when the daemon is gone, while untracked plain connections go on.
       Outbound INVALID packets (tracked, connmark unknown) are dropped unless they carry
       one of the daemon's marks (``marks.seen``, ``marks.injected``, ``marks.plain``) or
       belong to ``firewall.skip_ports``.
    3. ``marks.plain`` on the packet (the daemon decided the connection is plain, or an
       offload chain found it) and the connection not recorded as encrypted -> the
       connmark gets ``marks.plain`` and the 4-tuple is added to the set. An element made
       by a packet carrying SYN lives :data:`SYN_TIMEOUT` seconds, so a flood of spoofed
       SYNs cannot fill the set for long.
    4. A pure SYN the daemon took for itself (``marks.seen`` without ``marks.plain``) removes
       its 4-tuple from the set and ``marks.plain`` from its connmark: a new connection on
       the pair of an earlier plain one.

The peer's SYN-ACK without ENO (RFC 8547 §4.6: the connection is plain) must not make a
connection plain by itself: a blind attacker can forge one, and conntrack checks its
acknowledgment number only against a window of about 64 KB, while the local stack checks it
exactly (RFC 9293 §3.10.7.3: a SYN-ACK whose acknowledgment is not our ISN + 1 is answered
with a RST and otherwise ignored). So the kernel decides in two steps, the stack's own check
in between, and the daemon sees neither packet:

* ``in_offload``: a SYN-ACK without option 69 that conntrack takes as the reply of a
  connection this host opened (``ct state established``, ``ct direction reply``: a
  forged SYN-ACK on a connection a peer opened to us, whose stack would answer it with an
  ACK, never counts), on a connection whose connmark has none
  of ``marks.encrypted``, ``marks.plain``, ``marks.seen``, not on loopback or
  ``firewall.skip_ports``, puts its 4-tuple into ``@tentative4``/``@tentative6``
  (:data:`SYN_TIMEOUT`, ``firewall.offload_max`` elements: when full, the SYN-ACK is queued
  as before) and gets ``marks.plain | marks.tentative``. ``marks.plain`` makes the iptables
  jump skip it; ``in_record`` accepts any packet with ``marks.tentative`` before it could
  record anything, so the daemon's own plain verdicts (``marks.plain`` alone) and the
  kernel's tentative pass never mix.
* ``out_offload``: an outbound segment of a tentative 4-tuple with ACK and without SYN or
  RST (the third ACK, or the first data carrying it) is what the stack sends once it has
  accepted that SYN-ACK: the element leaves the set, the segment gets ``marks.plain |
  marks.tentative``. ``out_record`` counts the connection in the named counter
  ``plain_no_eno_syn_ack``, sends the segment's headers to each worker's nflog group
  (``log_groups``), so the daemon forgets its syn-sent flow (:mod:`tcpcryptd.daemon.nflog`),
  and records the connection plain as usual. The stack's RST answering a forged SYN-ACK
  confirms nothing.

The races, and what closes them:

* A forged SYN-ACK without ENO arrives while the real one, with ENO, waits in the queue: the
  connection is tentative, the stack answers the forgery with a RST. ``in_record`` runs for
  the real SYN-ACK after its verdict and before the stack takes it: any SYN-ACK the daemon
  gave a verdict (``marks.seen``: the verdict on our ENO SYN-ACK does not carry
  ``marks.encrypted``, which comes with the packet that starts the key exchange, RFC 8547
  §4.6; a SYN-ACK the engine leaves plain carries ``marks.plain`` without ``marks.seen``
  and is recorded plain anyway) removes the tuple from ``@tentativeN`` and puts
  ``marks.seen`` into the connmark, so the stack's ACK to it is queued and gets its ENO
  option from the daemon.
* A forged SYN-ACK arrives after the real one: the stack, past SYN-SENT, would answer it
  with a challenge ACK (RFC 5961 §4) that would confirm the connection; ``marks.seen`` in
  the connmark keeps such a SYN-ACK from making it tentative (it goes to the daemon).
* Both SYN-ACKs processed at once on two CPUs (the forgery's ``in_offload`` read the
  connmark before the real one's ``in_record`` wrote it, and added the tuple after the
  delete): the confirming segment then finds ``marks.seen`` in the connmark in
  ``out_record`` and is dropped before it is counted or logged (the stack sends it again,
  then it is queued).

Set elements are keyed ``local address . local port . remote address . remote port``. Those
of ``@plain4``/``@plain6`` time out after ``limits.idle_timeout`` without an outbound packet
(a connection that idles longer has its next outbound packet queued once, found unknown to
the engine and offloaded again; inbound packets do not need the set); those of
``@enc4``/``@enc6`` after as long as conntrack keeps an established connection
(``nf_conntrack_tcp_timeout_established``, 5 days by default). Every set holds at most
``firewall.offload_max`` elements; beyond, new plain connections have their outbound
packets queued (correct, only slower), and new untracked encrypted ones are not recorded.

The table is installed and replaced in one ``nft -f`` transaction, which carries the
``@enc`` elements over. When the daemon stops, the table stays as long as conntrack holds a
connection recorded as encrypted (:func:`tcpcryptd.daemon.conntrack.encrypted_connections`)
or the ``@enc`` sets hold an element (:func:`encrypted_elements`), or when those sets
cannot be read: the guard must outlive the daemon. The next start replaces it, and
``tcpcryptd disable`` removes it once no such connection remains.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from typing import NamedTuple

from tcpcryptd.core.constants import ENO_KIND
from tcpcryptd.daemon.config import MarksConfig
from tcpcryptd.daemon.errors import FirewallError
from tcpcryptd.engine.policy import Mode, Rule

TABLE = "tcpcryptd"
COMMAND_TIMEOUT = 30.0
#: named counter of the peers' SYNs without ENO that the kernel left plain by itself
COUNTER_NO_ENO_SYN = "plain_no_eno_syn"
#: lifetime of a set element made by a SYN (conntrack's SYN-RECV timeout): spoofed SYNs
#: cannot hold the set for long; the connection's later packets refresh it, and one that
#: idles past it is queued once and offloaded again for ``limits.idle_timeout``
SYN_TIMEOUT = 60

#: named counter of the peers' SYN-ACKs without ENO that the kernel left plain by itself
#: (the stack's first ACK confirmed them)
COUNTER_NO_ENO_SYN_ACK = "plain_no_eno_syn_ack"
#: bytes of a confirmation's packet copied to the daemon's nflog group: the IP header and
#: the TCP ports (:mod:`tcpcryptd.daemon.nflog`)
LOG_SNAPLEN = 64
#: confirmations the kernel gathers before it sends them to the daemon in one batch (or
#: after the group's flush timeout, :data:`tcpcryptd.daemon.nflog.FLUSH_TIMEOUT`)
LOG_QUEUE_THRESHOLD = 16



class _Family(NamedTuple):
    """One IP version's sets and nft words."""

    plain: str          #: offloaded plain connections
    tentative: str      #: made tentatively plain by the peer's SYN-ACK without ENO
    enc: str            #: encrypted connections conntrack does not track
    addr_type: str
    ip: str             #: the address keyword
    nfproto: str


_FAMILIES = (_Family("plain4", "tentative4", "enc4", "ipv4_addr", "ip", "ipv4"),
             _Family("plain6", "tentative6", "enc6", "ipv6_addr", "ip6", "ipv6"))
#: the encrypted connections conntrack does not track, per IP version
ENCRYPTED_SETS = tuple(family.enc for family in _FAMILIES)
#: a SYN-ACK: SYN and ACK, neither RST nor FIN
_SYN_ACK = "tcp flags & (syn | ack | rst | fin) == syn | ack"
#: how long conntrack keeps an established TCP connection by default
#: (``nf_conntrack_tcp_timeout_established``): the lifetime of an ``@enc`` element
ESTABLISHED_TIMEOUT = 432000
_ESTABLISHED_SYSCTL = "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established"
#: lifetime of an ``@enc`` element after the local stack's FIN (only data sent before it
#: may follow): longer than Linux retransmits before it gives up (``tcp_retries2`` = 15,
#: about 924 s)
CLOSING_TIMEOUT = 1800


@dataclass(frozen=True)
class OffloadSpec:
    """What the table depends on: the mark bits, the set bounds."""

    mark_injected: int
    mark_seen: int
    mark_encrypted: int
    mark_plain: int
    timeout: int            #: seconds without a packet before an offloaded connection is queued again
    max_elements: int       #: per set (IPv4, IPv6)
    #: peers' SYNs queued even without ENO (:func:`require_selectors`)
    queued_syns: tuple[str, ...] = ()
    #: ``firewall.skip_ports``: never queued, so never marked by the daemon (the untracked guard)
    skip_ports: tuple[int, ...] = ()
    #: ``marks.tentative``: a packet the kernel passed while its connection is tentatively plain
    mark_tentative: int = MarksConfig.tentative
    #: nflog groups told of each connection the kernel made plain on the peer's SYN-ACK
    #: (one per worker, :mod:`tcpcryptd.daemon.nflog`)
    log_groups: tuple[int, ...] = ()
    #: seconds an ``@enc`` element lives with no outbound packet (:func:`established_timeout`)
    encrypted_timeout: int = ESTABLISHED_TIMEOUT


def require_selectors(rules: tuple[Rule, ...], default: Mode) -> tuple[str, ...]:
    """nft matches of the peers' SYNs that policy ``require`` may select: one per
    ``require`` rule (its peer prefix, local port, remote port), or one matching every SYN
    when ``require`` is the default. A superset is harmless (a more specific rule that is
    not ``require`` only costs the queue that SYN; the engine decides by the exact policy).
    """
    if default is Mode.REQUIRE:
        return ("",)
    selectors = []
    for rule in rules:
        if rule.mode is not Mode.REQUIRE:
            continue
        parts = []
        if rule.peer is not None:
            parts.append(f"{'ip' if rule.peer.version == 4 else 'ip6'} saddr {rule.peer}")
        if rule.local_port is not None:
            parts.append(f"tcp dport {rule.local_port}")
        if rule.remote_port is not None:
            parts.append(f"tcp sport {rule.remote_port}")
        selectors.append(" ".join(parts))
    return tuple(selectors)


def _tuple(ip: str, outbound: bool) -> str:
    """The set key of a packet: local address . local port . remote address . remote port."""
    if outbound:
        return f"{ip} saddr . tcp sport . {ip} daddr . tcp dport"
    return f"{ip} daddr . tcp dport . {ip} saddr . tcp sport"


def _offload_chain(spec: OffloadSpec, outbound: bool) -> list[str]:
    enc, plain = spec.mark_encrypted, spec.mark_plain
    mark_plain = f"meta mark set meta mark | {plain:#x}"
    if outbound:
        # before conntrack: only the set knows the connection
        rules = ["chain out_offload {", "type filter hook output priority raw - 1; policy accept;"]
        return rules + [f"meta nfproto {nfproto} tcp flags & (syn | ack) != syn "
                        f"{_tuple(ip, True)} @{set_name} {mark_plain} accept"
                        for set_name, _, _, _, ip, nfproto in _FAMILIES] + _confirm_rules(spec) + ["}"]
    rules = ["chain in_offload {", "type filter hook input priority mangle - 1; policy accept;",
             # after conntrack: the connmark alone answers, no set lookup
             f"ct mark & {enc | plain:#x} == {plain:#x} tcp flags & (syn | ack) != syn "
             f"{mark_plain} accept",
             # a peer's SYN without ENO can only make a plain connection (RFC 8547 §4.6): the
             # kernel decides it alone, so the connection never reaches the queue
             'iifname "lo" return']
    # a SYN or SYN-ACK policy ``require`` may select goes to the daemon, which resets it
    rules += [" ".join(filter(None, ("tcp flags & syn != 0", selector, "return")))
              for selector in spec.queued_syns]
    rules += [f"tcp flags & (syn | ack) == syn tcp option {ENO_KIND} missing {mark_plain} "
              f'counter name "{COUNTER_NO_ENO_SYN}"']
    return rules + _tentative_rules(spec) + ["}"]


def _skipped_ports(spec: OffloadSpec) -> str:
    """The match excluding ``firewall.skip_ports`` (either end), with a trailing space."""
    if not spec.skip_ports:
        return ""
    ports = ", ".join(str(port) for port in spec.skip_ports)
    return f"tcp sport != {{ {ports} }} tcp dport != {{ {ports} }} "


def _tentative_rules(spec: OffloadSpec) -> list[str]:
    """``in_offload``: the peer's SYN-ACK without ENO makes its connection tentatively plain.

    Only a SYN-ACK conntrack has taken as the reply of a connection it tracks (``ct state
    established``: its acknowledgment lies in conntrack's window; ``ct direction reply``:
    a connection this host opened, never one a peer opened to it), on a connection neither
    recorded (plain, encrypted) nor one of whose SYN-ACKs the daemon has seen
    (``marks.seen`` in the connmark, see :func:`_tentative_record_rules`). Its 4-tuple goes
    into ``@tentativeN`` and it skips the queue with ``marks.plain | marks.tentative``:
    the iptables jump skips ``marks.plain``, ``in_record`` accepts ``marks.tentative``
    without recording anything. A full set leaves the SYN-ACK to the queue.
    """
    enc, plain, seen = spec.mark_encrypted, spec.mark_plain, spec.mark_seen
    mark = plain | spec.mark_tentative
    return [f"meta nfproto {nfproto} {_SYN_ACK} tcp option {ENO_KIND} missing "
            f"ct state established ct direction reply ct mark & {enc | plain | seen:#x} == 0 "
            f"{_skipped_ports(spec)}update @{set_name} {{ {_tuple(ip, False)} }} "
            f"meta mark set meta mark | {mark:#x} accept"
            for _, set_name, _, _, ip, nfproto in _FAMILIES]


def _confirm_rules(spec: OffloadSpec) -> list[str]:
    """``out_offload``: the local stack's first ACK-bearing segment on a tentative
    connection confirms it plain.

    The stack sends a segment with ACK and without SYN or RST only once it has accepted a
    SYN-ACK whose acknowledgment number is its ISN + 1 (RFC 9293 §3.10.7.3); it answers
    any other SYN-ACK with a RST, which does not match. The element leaves the set and the
    segment gets ``marks.plain | marks.tentative``: ``out_record`` counts it, tells the
    daemon and records the connection plain (:func:`_tentative_record_rules`).
    """
    mark = spec.mark_plain | spec.mark_tentative
    rules = []
    for _, set_name, _, _, ip, nfproto in _FAMILIES:
        key = _tuple(ip, True)
        rules.append(f"meta nfproto {nfproto} tcp flags & (syn | rst | ack) == ack "
                     f"{key} @{set_name} delete @{set_name} {{ {key} }} "
                     f"meta mark set meta mark | {mark:#x} accept")
    return rules


def _tentative_record_rules(spec: OffloadSpec, outbound: bool) -> list[str]:
    """The record chains' part in the tentative state.

    Inbound, a SYN-ACK the kernel passed tentatively is accepted unrecorded; a SYN-ACK the
    daemon gave a verdict (``marks.seen``) puts ``marks.seen`` into the connmark and
    cancels the tentative state: a forged SYN-ACK without ENO may have made the connection
    tentative while the real one, with ENO, waited in the queue, and the stack's ACK that
    answers the real one must reach the daemon (it adds the ENO option). The connmark bit
    keeps any later SYN-ACK from making the connection tentative again (after the real
    SYN-ACK the stack would answer it with a challenge ACK, RFC 5961 §4, which would
    confirm it).

    Outbound, a confirmation of a connection whose connmark has ``marks.seen`` is dropped
    (the stack sends it again, then queued): a forged SYN-ACK processed on another CPU
    between the real one's verdict and the record of it could otherwise confirm an ENO
    connection. Any other confirmation is counted in the named counter and its headers go
    to each nflog group (so the daemon forgets its syn-sent flow), then the record rules
    record the connection plain.
    """
    seen, tentative = spec.mark_seen, spec.mark_tentative
    if outbound:
        logs = "".join(f" log group {group} snaplen {LOG_SNAPLEN} "
                       f"queue-threshold {LOG_QUEUE_THRESHOLD}" for group in spec.log_groups)
        return [f"meta mark & {tentative:#x} != 0 ct mark & {seen:#x} != 0 drop",
                f'meta mark & {tentative:#x} != 0 counter name "{COUNTER_NO_ENO_SYN_ACK}"'
                f"{logs}"]
    return [f"meta mark & {tentative:#x} != 0 accept"] + [
        f"{_SYN_ACK} meta mark & {seen:#x} != 0 meta nfproto {nfproto} "
        f"ct mark set ct mark | {seen:#x} delete @{set_name} {{ {_tuple(ip, False)} }}"
        for _, set_name, _, _, ip, nfproto in _FAMILIES]


def _record_chain(spec: OffloadSpec, outbound: bool) -> list[str]:
    enc, plain, seen = spec.mark_encrypted, spec.mark_plain, spec.mark_seen
    verdicted = seen | spec.mark_injected
    if outbound:
        head = ["chain out_record {", "type filter hook output priority -190; policy accept;"]
        loopback, guard = 'oifname "lo" return', "reject with tcp reset"
    else:
        head = ["chain in_record {", "type filter hook input priority -149; policy accept;"]
        loopback, guard = 'iifname "lo" return', "drop"
    recorded = f"ct mark & {enc | plain:#x} == {plain:#x} meta mark & {plain:#x} != 0"
    if outbound:
        # an offloaded packet of a recorded plain connection: refresh its element (the
        # outbound offload's only source) and stop; a SYN-ACK goes on to the SYN lifetime
        fast = [f"{recorded} tcp flags & syn == 0 meta nfproto {nfproto} "
                f"update @{set_name} {{ {_tuple(ip, True)} }} accept"
                for set_name, _, _, _, ip, nfproto in _FAMILIES]
    else:
        fast = [f"{recorded} accept"]
    rules = head + fast + _tentative_record_rules(spec, outbound) + [
        loopback,
        "meta l4proto != tcp return",
        f"meta mark & {enc:#x} != 0 ct mark set ct mark & {~plain & 0xFFFFFFFF:#x} | {enc:#x}",
        f"ct mark & {enc:#x} != 0 meta mark & {verdicted:#x} == 0 {guard}",
    ]
    rules += _untracked_guard(spec, outbound)
    first = f"meta mark & {plain:#x} != 0 ct mark & {enc:#x} == 0"
    record = f"ct mark set ct mark | {plain:#x}"
    forget = f"ct mark set ct mark & {~plain & 0xFFFFFFFF:#x}"
    for set_name, _, _, _, ip, nfproto in _FAMILIES:
        key = _tuple(ip, outbound)
        family = f"meta nfproto {nfproto}"
        rules += [
            f"{first} {family} tcp flags & syn == 0 {record} update @{set_name} {{ {key} }}",
            f"{first} {family} tcp flags & syn != 0 {record} "
            f"update @{set_name} {{ {key} timeout {SYN_TIMEOUT}s }}",
            f"tcp flags & (syn | ack) == syn meta mark & {seen | plain:#x} == {seen:#x} "
            f"{family} {forget} delete @{set_name} {{ {key} }}",
        ]
    return rules + ["}"]


def _untracked_guard(spec: OffloadSpec, outbound: bool) -> list[str]:
    """The guard for the packets whose connmark cannot be read.

    Conntrack does not track a connection the host exempts (its own ``CT --notrack`` rule),
    so the daemon's verdicts (``marks.encrypted`` on every packet of an encrypted connection)
    record it by its 4-tuple in ``@enc4``/``@enc6`` instead. Such a packet without
    ``marks.seen`` or ``marks.injected`` is dropped (both ways; not reset: conntrack would
    take the reset for a new connection's INVALID packet, which a host's INVALID rule
    discards) only when the set holds its 4-tuple, so an untracked plain connection goes on
    without the daemon. ``marks.plain`` does not let it pass: a restarted daemon takes a
    connection it does not know for plain. The local stack's SYN or SYN-ACK (a new
    connection on the 4-tuple) or RST (the socket is gone) deletes the element; its FIN
    only cuts its lifetime to :data:`CLOSING_TIMEOUT`, as the stack may still retransmit
    data sent before it (the daemon does not mark the packets of a closed connection, so
    nothing extends it again). Outbound INVALID packets belong to tracked connections whose
    connmark is unknown: they pass only with one of the daemon's marks or on a skip port.
    """
    enc, plain = spec.mark_encrypted, spec.mark_plain
    verdicted = spec.mark_seen | spec.mark_injected
    untracked = "ct state untracked"
    rules = []
    if outbound:
        rules.append(f"ct state invalid meta mark & {verdicted | plain:#x} == 0 "
                     f"{_skipped_ports(spec)}drop")
    for _, _, enc_set, _, ip, nfproto in _FAMILIES:
        key, family = _tuple(ip, outbound), f"meta nfproto {nfproto}"
        if outbound:
            rules += [f"{untracked} tcp flags & (syn | rst) != 0 {family} "
                      f"delete @{enc_set} {{ {key} }}",
                      f"{untracked} tcp flags & (syn | rst | fin) == 0 meta mark & {enc:#x} "
                      f"!= 0 {family} update @{enc_set} {{ {key} }}",
                      f"{untracked} tcp flags & (syn | rst | fin) == fin {family} "
                      f"{key} @{enc_set} update @{enc_set} {{ {key} timeout {CLOSING_TIMEOUT}s }}"]
            stopped = untracked
        else:   # the peer's SYN may open a new connection on the 4-tuple
            stopped = f"{untracked} tcp flags & (syn | ack) != syn"
        rules.append(f"{stopped} meta mark & {verdicted:#x} == 0 {family} {key} @{enc_set} drop")
    return rules


def _set(name: str, addr_type: str, timeout: int, size: int,
         elements: list[str] | None = None) -> list[str]:
    """A set of 4-tuples (local address . port . remote address . port) whose elements
    time out, with ``elements`` (``KEY expires Ns``) in it."""
    return [f"set {name} {{", f"type {addr_type} . inet_service . {addr_type} . inet_service;",
            f"flags dynamic, timeout; timeout {timeout}s; size {size};",
            *([f"elements = {{ {', '.join(elements)} }}"] if elements else []), "}"]


def table_text(spec: OffloadSpec,
               encrypted: dict[str, list[tuple[str, int]]] | None = None) -> str:
    """``nft -f`` input (re)creating the table in one transaction.

    An existing table is deleted in the same transaction (declaring it first makes the
    delete valid when there is none), so the guard never lapses while it is replaced: a
    restart keeps protecting the connections the old instance encrypted. ``encrypted``:
    the elements of the old table's ``@enc`` sets (:func:`encrypted_elements`), carried
    into the new one.
    """
    lines = [f"table inet {TABLE}", f"delete table inet {TABLE}", f"table inet {TABLE} {{",
             f"counter {COUNTER_NO_ENO_SYN} {{ }}", f"counter {COUNTER_NO_ENO_SYN_ACK} {{ }}"]
    size = spec.max_elements
    for family in _FAMILIES:
        lines += _set(family.plain, family.addr_type, spec.timeout, size)
        lines += _set(family.tentative, family.addr_type, SYN_TIMEOUT, size)
    for family in _FAMILIES:
        kept = [f"{key} expires {min(expires, spec.encrypted_timeout)}s"
                for key, expires in (encrypted or {}).get(family.enc, ())]
        lines += _set(family.enc, family.addr_type, spec.encrypted_timeout, size, kept)
    lines += _offload_chain(spec, outbound=True)
    lines += _offload_chain(spec, outbound=False)
    lines += _record_chain(spec, outbound=True)
    lines += _record_chain(spec, outbound=False)
    lines.append("}")
    return "\n".join(lines) + "\n"


def _nft(args: list[str], stdin: str | None = None, *,
         check: bool = True) -> subprocess.CompletedProcess:
    """Run ``nft ARGS``; with ``check``, a failure is a FirewallError carrying nft's words."""
    if shutil.which("nft") is None:
        raise FirewallError("nft not found: install the nftables package")
    try:
        done = subprocess.run(["nft", *args], input=stdin, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise FirewallError(f"nft did not finish in {COMMAND_TIMEOUT:.0f}s") from exc
    if check and done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().replace("\n", "; ")
        raise FirewallError(f"nft {args[0]} failed (exit {done.returncode}): {detail}")
    return done


def table_exists() -> bool:
    return _nft(["list", "table", "inet", TABLE], check=False).returncode == 0


def install_table(spec: OffloadSpec) -> None:
    """Create or atomically replace the table, keeping what its ``@enc`` sets hold (a set
    an earlier version's table lacks holds nothing)."""
    encrypted: dict[str, list[tuple[str, int]]] = {}
    if table_exists():
        with contextlib.suppress(FirewallError):
            encrypted = encrypted_elements()
    _nft(["-f", "-"], table_text(spec, encrypted))


def encrypted_elements() -> dict[str, list[tuple[str, int]]]:
    """The elements of the ``@enc`` sets: set name -> (key as ``nft`` writes it, seconds
    it has left); raises FirewallError when a set cannot be read."""
    found: dict[str, list[tuple[str, int]]] = {}
    for set_name in ENCRYPTED_SETS:
        done = _nft(["-j", "list", "set", "inet", TABLE, set_name])
        try:
            items = json.loads(done.stdout)["nftables"]
            elements = next(item["set"] for item in items if "set" in item).get("elem", [])
            found[set_name] = [
                (" . ".join(str(part) for part in element["elem"]["val"]["concat"]),
                 max(1, int(element["elem"].get("expires", 1))))
                for element in elements]
        except (ValueError, KeyError, TypeError, StopIteration) as exc:
            raise FirewallError(f"cannot read set {set_name} of table inet {TABLE}: "
                                f"unexpected nft output ({exc!r})") from exc
    return found


def established_timeout() -> int:
    """This network namespace's ``nf_conntrack_tcp_timeout_established`` in seconds, or
    its default when it cannot be read (conntrack not loaded)."""
    try:
        with open(_ESTABLISHED_SYSCTL, encoding="ascii") as sysctl:
            return max(1, int(sysctl.read()))
    except (OSError, ValueError):
        return ESTABLISHED_TIMEOUT


def remove_table() -> bool:
    """Delete the table; True when it existed."""
    if not table_exists():
        return False
    _nft(["delete", "table", "inet", TABLE])
    return True


def kernel_counters() -> dict[str, int]:
    """What the table counted without the daemon, as status counters: the peers' SYNs
    without ENO (``plain_no-eno-syn``, also in ``plain``), and the connections the peer's
    SYN-ACK without ENO made plain (``offloaded_no-eno-syn-ack``, also in
    ``daemon_offloaded``, ``fallback`` and ``fallback_no-eno`` as if the daemon had seen that
    SYN-ACK; the engine only forgets their flows). Empty when they cannot be read."""
    try:
        done = _nft(["-j", "list", "counters", "table", "inet", TABLE])
        packets = {item["counter"]["name"]: item["counter"]["packets"]
                   for item in json.loads(done.stdout)["nftables"] if "counter" in item}
        syns, syn_acks = packets[COUNTER_NO_ENO_SYN], packets[COUNTER_NO_ENO_SYN_ACK]
    except (FirewallError, ValueError, KeyError, TypeError):
        return {}
    counters = {"plain": syns, "plain_no-eno-syn": syns, "fallback": syn_acks,
                "fallback_no-eno": syn_acks, "daemon_offloaded": syn_acks,
                "offloaded_no-eno-syn-ack": syn_acks}
    return {name: value for name, value in counters.items() if value}
