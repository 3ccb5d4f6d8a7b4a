"""What the engine's path modules may use of the engine (docs/ARCHITECTURE.md "Layer 3").

The inbound, outbound, handshake, delivery, timers and closing modules never import
:class:`~tcpcryptd.engine.engine.Engine`: they get a :class:`Context` (configuration,
counters, the time of the current call) and, for the SYN phase only, a :class:`FlowTable`
(the few flow-table operations a SYN or a fallback needs).  Everything else they touch is the
:class:`~tcpcryptd.engine.flow.Flow` in hand and the :class:`~tcpcryptd.engine.actions.Result`
being filled.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Protocol

from tcpcryptd.core.resumption import SessionCache
from tcpcryptd.engine.keypool import KeyPool

if TYPE_CHECKING:
    from tcpcryptd.core.negotiation import Fallback
    from tcpcryptd.engine.actions import Result
    from tcpcryptd.engine.config import EngineConfig
    from tcpcryptd.engine.flow import Flow, HalfOpen, SynSent
    from tcpcryptd.packet.tcp import TCPPacket


class Context:
    """Configuration, counters and clock shared by the engine and its path modules."""

    __slots__ = ("config", "counters", "keys", "now", "sessions")

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.counters: Counter[str] = Counter()
        #: the resumption cache (RFC 8548 §3.5), sized at start; ``None`` when resumption is
        #: off in the configuration the engine started with
        self.sessions: SessionCache | None = (
            SessionCache(config.resumption_cache_size, config.resumption_lifetime)
            if config.resumption_enabled else None)
        #: ephemeral key pairs made ahead of need (engine/keypool.py)
        self.keys = KeyPool()
        #: the ``now`` of the current (or latest) call into the engine
        self.now = 0.0

    def count(self, name: str) -> None:
        self.counters[name] += 1


class FlowTable(Protocol):
    """The flow-table operations of the SYN phase (implemented by the engine)."""

    def forget(self, flow: Flow | HalfOpen | SynSent, result: Result, *,
               restore: bool = True) -> None:
        """Drop ``flow`` from the table (its held packets dropped)."""

    def open_flow(self, pkt: TCPPacket, outbound: bool, now: float,
                  raw: bytes | None = None) -> Result:
        """A SYN on a 4-tuple that has no flow (any more): a new flow, or left plain."""

    def replace_inbound(self, flow: Flow | HalfOpen, pkt: TCPPacket, now: float,
                        result: Result) -> None:
        """A SYN with a new ISN on the 4-tuple of an ended or half-open flow."""

    def plain(self, reason: str, result: Result) -> Result:
        """Leave the connection plain, counted as ``plain_<reason>``."""

    def fall_back(self, flow: Flow | SynSent, fallback: Fallback, result: Result) -> None:
        """ENO failed (RFC 8547 §4.6): forget the flow, the connection goes on plain."""
