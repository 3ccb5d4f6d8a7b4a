"""Encryption policy per connection: ``skip``, ``prefer`` or ``require`` (sans-IO, pure).

Each connection gets one :class:`Mode`, from its 4-tuple alone:

``skip``
    Never try TCP-ENO: our SYN goes out without the ENO option and a peer's ENO SYN is
    passed on untouched, so the stack's SYN-ACK carries none (RFC 8547 §4.6: plain TCP).
``prefer`` (the default)
    Offer and accept ENO; when the peer does not take part, the connection stays plain TCP
    (RFC 8547 §4.6 fallback). What the daemon did before policies existed.
``require``
    Encrypted or nothing, the TCPINC API's "mandatory encryption" (TCP_ENO_TEP_MANDATORY):
    a connection the engine would leave plain (peer without ENO, fallback, flow limit,
    encryption disabled, ...) is reset both ways instead (:func:`resets`), counted as
    ``require_resets``, and never handed to the kernel as plain.

A :class:`Rule` selects connections by any of: the peer's address within a prefix
(``peer``), the local port, the remote port. A connection takes the mode of the most
specific rule that matches it, else the policy's default. Specificity: a rule naming more
ports wins (a port names a service, which is what rules are usually about); among rules
naming as many ports, the longer peer prefix wins (longest-prefix match, a rule without
``peer`` counting as shorter than any prefix); among equals, the rule listed first.
Rules are sorted once by specificity, so a lookup is the first match in a short list.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum

from tcpcryptd.engine.actions import Direction, Transmit
from tcpcryptd.packet.tcp import ACK, FIN, RST, SYN, TCPPacket, build

MASK32 = 0xFFFFFFFF


class Mode(StrEnum):
    SKIP = "skip"
    PREFER = "prefer"
    REQUIRE = "require"


@dataclass(frozen=True)
class Rule:
    """Connections to ``peer`` (a prefix) with ``local_port`` and ``remote_port``; each
    selector left None matches every connection."""

    mode: Mode
    peer: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    local_port: int | None = None
    remote_port: int | None = None

    def specificity(self) -> tuple[int, int]:
        """(ports named, prefix length or -1): larger is more specific."""
        ports = (self.local_port is not None) + (self.remote_port is not None)
        return ports, -1 if self.peer is None else self.peer.prefixlen


class Policy:
    """The rules and the default, ready for :meth:`mode` lookups."""

    __slots__ = ("rules", "default", "require", "_matchers")

    def __init__(self, rules: tuple[Rule, ...] = (), default: Mode = Mode.PREFER) -> None:
        self.default = Mode(default)
        #: most specific first (stable: equal ones keep their order)
        self.rules = tuple(sorted(rules, key=Rule.specificity, reverse=True))
        #: some connection may be ``require`` (the engine checks plain outcomes only then)
        self.require = self.default is Mode.REQUIRE or any(r.mode is Mode.REQUIRE for r in rules)
        self._matchers = tuple(
            (0 if r.peer is None else r.peer.version,
             0 if r.peer is None else int(r.peer.network_address),
             0 if r.peer is None else int(r.peer.netmask),
             r.local_port, r.remote_port, r.mode) for r in self.rules)

    def __repr__(self) -> str:
        return f"Policy({list(self.rules)!r}, default={self.default!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Policy) and self.rules == other.rules
                and self.default == other.default)

    def __hash__(self) -> int:
        return hash((self.rules, self.default))

    def mode(self, version: int, remote: bytes, local_port: int, remote_port: int) -> Mode:
        """The mode of a connection: IP ``version``, the peer's address (4 or 16 bytes)."""
        if not self._matchers:
            return self.default
        address = int.from_bytes(remote, "big")
        for rule_version, network, netmask, lport, rport, mode in self._matchers:
            if ((lport is None or lport == local_port)
                    and (rport is None or rport == remote_port)
                    and (not rule_version
                         or (rule_version == version and address & netmask == network))):
                return mode
        return self.default

    def of_packet(self, pkt: TCPPacket, outbound: bool) -> Mode:
        """The mode of the connection ``pkt`` belongs to (``outbound``: sent by us)."""
        if outbound:
            return self.mode(pkt.version, pkt.dst, pkt.sport, pkt.dport)
        return self.mode(pkt.version, pkt.src, pkt.dport, pkt.sport)


def resets(pkt: TCPPacket, outbound: bool) -> list[Transmit]:
    """RSTs ending the connection of ``pkt`` at both ends, as a TCP without the connection
    would answer (RFC 9293 §3.10.7.1); ``pkt`` itself is to be dropped.

    To its sender: ``<SEQ=SEG.ACK><CTL=RST>``, or without ACK ``<SEQ=0><ACK=SEG.SEQ+SEG.LEN>
    <CTL=RST,ACK>`` (a SYN-SENT stack takes the latter since it acknowledges its SYN). To its
    destination, from the sender, unless ``pkt`` is a SYN without ACK (the destination never
    heard of the connection): ``<SEQ=SEG.SEQ (+1 after a SYN)><ACK=SEG.ACK><CTL=RST,ACK>``,
    exactly the next sequence number the destination expects, so it is taken (RFC 5961 §3.2).

    Nothing answers a RST, nor a peer's SYN without ACK (``outbound`` False): that one
    goes on to the local stack, whose SYN-ACK is then reset both ways. A RST sent for a
    SYN that was dropped would belong to no connection the firewall knows (conntrack
    calls it INVALID, and a common rule drops such packets); after the SYN it does.
    """
    flags = pkt.flags
    if flags & RST or (not outbound and flags & (SYN | ACK) == SYN):
        return []
    back = Direction.INBOUND if outbound else Direction.OUTBOUND
    forth = Direction.OUTBOUND if outbound else Direction.INBOUND
    version, src, dst, sport, dport = pkt.version, pkt.src, pkt.dst, pkt.sport, pkt.dport
    if flags & ACK:
        to_sender = build(version, dst, src, dport, sport, pkt.ack, 0, RST, 0)
    else:
        length = len(pkt.payload) + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        to_sender = build(version, dst, src, dport, sport, 0, (pkt.seq + length) & MASK32,
                          RST | ACK, 0)
    out = [Transmit(to_sender, back)]
    if flags & ACK:
        seq = (pkt.seq + (1 if flags & SYN else 0)) & MASK32
        out.append(Transmit(build(version, src, dst, sport, dport, seq, pkt.ack, RST | ACK, 0),
                            forth))
    return out
