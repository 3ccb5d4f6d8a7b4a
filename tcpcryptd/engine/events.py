"""What happened to a connection, reported by the engine in ``Result.events``.

The engine stays sans-IO: it does not write key logs, metrics or logs itself. Each call
returns, next to the packet verdicts, the events of that call in order; the daemon hands
them to whoever wants them (the key log, status counters, metrics).

Addresses are text in the form ``tcpcryptd status`` prints (``10.0.0.1:80``,
``[fd00::1]:80``), as seen on the wire; ``local`` is this host's end.

Events carry key material (``SessionEstablished``, ``Rekeyed``): a consumer that is not the
documented key log must not store or print those fields.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SessionEstablished:
    """A tcpcrypt session exists (RFC 8548 §3.3 after Init1/Init2, or §3.5 when resumed).

    ``role`` is ``"A"`` when this host sends with ``k_ab``, ``"B"`` with ``k_ba`` (RFC 8548
    §3.3): its role in the connection (RFC 8547 §4.5), or on a resumed session its role in
    the original session, which the keys follow (§3.5); ``resumed``: no Init messages, the
    keys came from a cached secret (§3.5); ``tep`` the TEP
    identifier byte of the negotiated TEP (RFC 8548 §7); ``session_id`` the full session ID
    (§3.4); ``k_ab``/``k_ba`` the generation-0 traffic keys (§3.3), each K then NR (§4.2);
    ``handshake_seconds`` the engine time from the connection's first SYN to its keys (None
    when not known).
    """

    local: str
    remote: str
    role: str
    tep: int
    aead: str
    session_id: bytes
    resumed: bool
    k_ab: bytes
    k_ba: bytes
    handshake_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Rekeyed:
    """Traffic keys of a new generation came into use (RFC 8548 §3.8)."""

    local: str
    remote: str
    session_id: bytes
    generation: int
    k_ab: bytes
    k_ba: bytes


@dataclass(frozen=True, slots=True)
class FellBack:
    """The connection was left plain after ENO was tried (RFC 8547 §4.6); ``reason`` is the
    counter suffix (``fallback_<reason>``)."""

    local: str
    remote: str
    reason: str


@dataclass(frozen=True, slots=True)
class Aborted:
    """The engine aborted an ENO connection (RST both ways); ``reason`` as ``aborts_<reason>``."""

    local: str
    remote: str
    reason: str


Event = SessionEstablished | Rekeyed | FellBack | Aborted
