"""What the engine asks its caller to do (docs/ARCHITECTURE.md "Layer 3").

The engine is sans-IO: each call returns a :class:`Result` that says what to do with the
packet just handed in (accept, possibly rewritten; drop; hold for a deferred verdict), which
earlier held packets to release, which packets the engine made itself to send toward the
wire or the local stack, and what happened to connections (events, in order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from tcpcryptd.engine.events import Event


class Direction(IntEnum):
    """Which way a packet travels."""

    OUTBOUND = 0  #: local stack -> wire (raw OUTPUT hook)
    INBOUND = 1   #: wire -> local stack (mangle INPUT hook)


class Verdict(IntEnum):
    """The verdict for the packet just handed in."""

    ACCEPT = 0
    DROP = 1
    HOLD = 2  #: deferred: a later Result carries a Release for this packet id


@dataclass(slots=True)
class Release:
    """Verdict for an earlier HELD packet: accept (with ``data`` if rewritten) or drop."""

    packet_id: int
    data: bytes | None
    accept: bool


@dataclass(slots=True)
class Transmit:
    """A packet the engine made: OUTBOUND goes to the wire, INBOUND to the local stack."""

    data: bytes
    direction: Direction


@dataclass(slots=True)
class Result:
    """Everything one call to the engine asks the caller to do.

    ``plain`` is True when the packet belongs to a connection the engine leaves alone for good
    (no ENO, fallback, over the flow limit, or one it does not track): the daemon marks the
    packet so the firewall stops queueing the connection (docs/daemon.md, "Firewall").
    ``encrypted`` is True on every packet of a connection from the one with which it enters
    its key exchange (RFC 8547 §4.6: both hosts have sent and received an ENO ACK,
    encryption is mandatory from here) until the one after which it has closed (both FINs
    acknowledged, or a RST): the daemon marks them so the firewall records the connection
    as encrypted, in its connmark or, for a connection conntrack does not track, by its
    4-tuple (refreshed per packet).
    ``events`` are the :mod:`~tcpcryptd.engine.events` of this call (session established,
    fell back, aborted), for the key log, status and metrics.
    """

    verdict: Verdict | None
    data: bytes | None = None
    releases: list[Release] = field(default_factory=list)
    transmit: list[Transmit] = field(default_factory=list)
    plain: bool = False
    encrypted: bool = False
    events: list[Event] = field(default_factory=list)
