"""The daemon's nftables table: plain-connection offload, the encrypted-connection record, the guard.

The queue itself stays an iptables ``-j NFQUEUE`` target (:mod:`tcpcryptd.daemon.firewall`:
the nft ``queue`` statement needs a kernel built with NFT_QUEUE). Everything that decides,
per packet and without the daemon, which packets never need the queue and which must never
pass without it lives in one ``inet`` table, ``tcpcryptd``, with four base chains:

``out_offload`` (output, priority raw - 1) and ``in_offload`` (prerouting, priority raw - 1)
    A packet of a connection in ``@plain4``/``@plain6`` gets ``marks.plain``; the iptables
    queue rules, which run just after (raw/mangle), let such packets pass without queueing.
    Pure SYNs are never offloaded that way: a new connection on a reused address/port pair
    always reaches the daemon. But a peer's SYN to a local address without an ENO option
    can only start a plain connection (RFC 8547 §4.6), so ``in_offload`` marks it plain by
    itself (counted in the named counter ``plain_no_eno_syn``): such connections never
    reach the daemon at all, except those policy ``require`` may select
    (:func:`require_selectors`): the daemon must see their SYN to reset them.
``out_record`` (output, priority -190: after conntrack) and ``in_record`` (prerouting,
priority -149: after the iptables mangle chain that queues)
    Run on every packet after the daemon's verdict (or the queue was bypassed):

    1. ``marks.encrypted`` on the packet (the daemon's verdict on the packet that started a
       key exchange, RFC 8547 §4.6, or any packet it injected) -> the connection's connmark
       gets ``marks.encrypted``. Only the daemon can set it: no segment a blind attacker
       forges changes how a connection is classified.
    2. The guard: a packet of an encrypted connection that carries neither ``marks.seen``
       nor ``marks.injected`` did not go through the daemon (it is stopped, crashed, or the
       connection was encrypted by an earlier instance). Outbound it is rejected with a TCP
       reset, which ends the local socket at once (the reset's sequence number is the
       packet's own acknowledgment number, the socket's next expected byte); inbound it is
       dropped. Never plaintext.
    3. ``marks.plain`` on the packet (the daemon decided the connection is plain, or the
       offload chain found it) -> its 4-tuple is added to the set, or its timeout
       refreshed, unless the connection is recorded as encrypted. An element a SYN made
       lives :data:`SYN_TIMEOUT` seconds, so a flood of spoofed SYNs cannot fill the set
       for long.
    4. A pure SYN the daemon took for itself (``marks.seen`` without ``marks.plain``) removes
       its 4-tuple from the set: a new connection on the pair of an earlier plain one.

Set elements are keyed ``local address . local port . remote address . remote port``, time
out after ``limits.idle_timeout`` without a packet (each packet refreshes it; a connection
that idles longer is queued again on its next packet, found unknown to the engine and
offloaded again), and the sets hold at most ``firewall.offload_max`` elements each; beyond,
new plain connections stay queued (correct, only slower).

The table is installed and replaced in one ``nft -f`` transaction. When the daemon stops, the
table stays as long as conntrack holds a connection recorded as encrypted (the guard must
outlive the daemon, :func:`tcpcryptd.daemon.conntrack.encrypted_connections`); the next
start replaces it in one transaction, and ``tcpcryptd disable`` removes it once no such
connection remains.
"""

from __future__ import annotations

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


def _offload_chain(spec: OffloadSpec, name: str, hook: str, outbound: bool) -> list[str]:
    plain = f"meta mark set meta mark | {spec.mark_plain:#x}"
    rules = [f"chain {name} {{", f"type filter hook {hook} priority raw - 1; policy accept;"]
    if not outbound:
        # a peer's SYN without ENO can only make a plain connection (RFC 8547 §4.6): the
        # kernel decides it alone, so the connection never reaches the queue
        rules += ['iifname "lo" return']
        rules += [" ".join(filter(None, ("tcp flags & (syn | ack) == syn", selector, "return")))
                  for selector in spec.queued_syns]
        rules += [f"tcp flags & (syn | ack) == syn tcp option {ENO_KIND} missing fib daddr "
                  f'type local {plain} counter name "{COUNTER_NO_ENO_SYN}"']
    for set_name, _, ip, _ in _FAMILIES:
        rules.append(f"tcp flags & (syn | ack) != syn {_tuple(ip, outbound)} @{set_name} "
                     f"{plain}")
    return rules + ["}"]


def _record_chain(spec: OffloadSpec, name: str, hook: str, priority: int,
                  outbound: bool) -> list[str]:
    enc, plain = spec.mark_encrypted, spec.mark_plain
    verdicted = spec.mark_seen | spec.mark_injected
    loopback = "oifname" if outbound else "iifname"
    guard = "reject with tcp reset" if outbound else "drop"
    rules = [
        f"chain {name} {{", f"type filter hook {hook} priority {priority}; policy accept;",
        f'{loopback} "lo" return',
        "meta l4proto != tcp return",
        f"meta mark & {enc:#x} != 0 ct mark set ct mark | {enc:#x}",
        f"ct mark & {enc:#x} != 0 meta mark & {verdicted:#x} == 0 {guard}",
    ]
    syn, not_syn = "tcp flags & (syn | ack) == syn", "tcp flags & (syn | ack) != syn"
    offload = f"meta mark & {plain:#x} != 0 ct mark & {enc:#x} == 0"
    for set_name, _, ip, nfproto in _FAMILIES:
        key = _tuple(ip, outbound)
        family = f"meta nfproto {nfproto}"
        rules += [
            f"{not_syn} {offload} {family} update @{set_name} {{ {key} }}",
            f"{syn} {offload} {family} update @{set_name} {{ {key} timeout {SYN_TIMEOUT}s }}",
            f"{syn} meta mark & {spec.mark_seen | plain:#x} == {spec.mark_seen:#x} {family} "
            f"delete @{set_name} {{ {key} }}",
        ]
    return rules + ["}"]


def table_text(spec: OffloadSpec) -> str:
    """``nft -f`` input (re)creating the table in one transaction.

    An existing table is deleted in the same transaction (declaring it first makes the
    delete valid when there is none), so the guard never lapses while it is replaced: a
    restart keeps protecting the connections the old instance encrypted.
    """
    lines = [f"table inet {TABLE}", f"delete table inet {TABLE}", f"table inet {TABLE} {{",
             f"counter {COUNTER_NO_ENO_SYN} {{ }}"]
    for set_name, addr_type, _, _ in _FAMILIES:
        lines += [f"set {set_name} {{",
                  f"type {addr_type} . inet_service . {addr_type} . inet_service;",
                  f"flags dynamic, timeout; timeout {spec.timeout}s; size {spec.max_elements};",
                  "}"]
    lines += _offload_chain(spec, "out_offload", "output", True)
    lines += _offload_chain(spec, "in_offload", "prerouting", False)
    lines += _record_chain(spec, "out_record", "output", -190, True)
    lines += _record_chain(spec, "in_record", "prerouting", -149, False)
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
    """Create or atomically replace the table."""
    _nft(["-f", "-"], table_text(spec))


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
