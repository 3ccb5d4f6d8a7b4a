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
``in_offload`` (input, priority mangle - 1: after conntrack and the host's own NAT, before
the mangle queue chain)
    A packet, not a pure SYN, of a connection whose connmark says plain gets
    ``marks.plain``. A peer's SYN without an ENO option can only start
    a plain connection (RFC 8547 §4.6), so it gets ``marks.plain`` too (counted in the named
    counter ``plain_no_eno_syn``): such connections never reach the daemon at all, except
    those policy ``require`` may select (:func:`require_selectors`): the daemon must see
    their SYN to reset them.

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

from tcpcryptd.core.constants import ENO_KIND
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

#: (set name, nft address type, address keyword, nfproto) per IP version.
_FAMILIES = (("plain4", "ipv4_addr", "ip", "ipv4"), ("plain6", "ipv6_addr", "ip6", "ipv6"))
#: the encrypted connections conntrack does not track, per IP version (as ``_FAMILIES``)
ENCRYPTED_SETS = ("enc4", "enc6")
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
                        for set_name, _, ip, nfproto in _FAMILIES] + ["}"]
    rules = ["chain in_offload {", "type filter hook input priority mangle - 1; policy accept;",
             # after conntrack: the connmark alone answers, no set lookup
             f"ct mark & {enc | plain:#x} == {plain:#x} tcp flags & (syn | ack) != syn "
             f"{mark_plain} accept",
             # a peer's SYN without ENO can only make a plain connection (RFC 8547 §4.6): the
             # kernel decides it alone, so the connection never reaches the queue
             'iifname "lo" return']
    rules += [" ".join(filter(None, ("tcp flags & (syn | ack) == syn", selector, "return")))
              for selector in spec.queued_syns]
    rules += [f"tcp flags & (syn | ack) == syn tcp option {ENO_KIND} missing {mark_plain} "
              f'counter name "{COUNTER_NO_ENO_SYN}"']
    return rules + ["}"]


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
                for set_name, _, ip, nfproto in _FAMILIES]
    else:
        fast = [f"{recorded} accept"]
    rules = head + fast + [
        loopback,
        "meta l4proto != tcp return",
        f"meta mark & {enc:#x} != 0 ct mark set ct mark & {~plain & 0xFFFFFFFF:#x} | {enc:#x}",
        f"ct mark & {enc:#x} != 0 meta mark & {verdicted:#x} == 0 {guard}",
    ]
    rules += _untracked_guard(spec, outbound)
    first = f"meta mark & {plain:#x} != 0 ct mark & {enc:#x} == 0"
    record = f"ct mark set ct mark | {plain:#x}"
    forget = f"ct mark set ct mark & {~plain & 0xFFFFFFFF:#x}"
    for set_name, _, ip, nfproto in _FAMILIES:
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
        skipped = ""
        if spec.skip_ports:
            ports = ", ".join(str(port) for port in spec.skip_ports)
            skipped = f"tcp sport != {{ {ports} }} tcp dport != {{ {ports} }} "
        rules.append(f"ct state invalid meta mark & {verdicted | plain:#x} == 0 {skipped}drop")
    for enc_set, (_, _, ip, nfproto) in zip(ENCRYPTED_SETS, _FAMILIES):
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
             f"counter {COUNTER_NO_ENO_SYN} {{ }}"]
    for set_name, addr_type, _, _ in _FAMILIES:
        lines += [f"set {set_name} {{",
                  f"type {addr_type} . inet_service . {addr_type} . inet_service;",
                  f"flags dynamic, timeout; timeout {spec.timeout}s; size {spec.max_elements};",
                  "}"]
    for set_name, (_, addr_type, _, _) in zip(ENCRYPTED_SETS, _FAMILIES):
        kept = [f"{key} expires {min(expires, spec.encrypted_timeout)}s"
                for key, expires in (encrypted or {}).get(set_name, ())]
        lines += [f"set {set_name} {{",
                  f"type {addr_type} . inet_service . {addr_type} . inet_service;",
                  f"flags dynamic, timeout; timeout {spec.encrypted_timeout}s; "
                  f"size {spec.max_elements};",
                  *([f"elements = {{ {', '.join(kept)} }}"] if kept else []),
                  "}"]
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
    without ENO (``plain_no-eno-syn``, also in ``plain``). Empty when it cannot be read."""
    try:
        done = _nft(["-j", "list", "counter", "inet", TABLE, COUNTER_NO_ENO_SYN])
        packets = next(item["counter"]["packets"] for item in json.loads(done.stdout)["nftables"]
                       if "counter" in item)
    except (FirewallError, ValueError, KeyError, TypeError, StopIteration):
        return {}
    return {"plain": packets, "plain_no-eno-syn": packets} if packets else {}
