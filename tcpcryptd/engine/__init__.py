"""Layer 3: the transparent tcpcrypt flow engine, sans-IO (docs/ARCHITECTURE.md "Layer 3",
"Module map").

Where things are: ``engine.py`` (flow table, dispatch), ``handshake.py`` (SYN phase, ENO,
MSS clamp, fallback, Init1/Init2), ``outbound.py`` (local stack -> wire), ``inbound.py``
(wire -> local stack), ``delivery.py`` (plaintext to the local stack), ``timers.py``
(deadlines, retransmission of injected bytes, redelivery, AEAD release), ``closing.py``
(close, abort, tombstone, ended connections), ``context.py`` (what the modules get instead
of the engine), ``sendmap.py`` and ``reassembly.py`` (the two sequence spaces), ``flow.py``
(per-flow state), ``actions.py`` and ``events.py`` (what a call returns), ``config.py``.
"""

from tcpcryptd.engine.actions import Direction, Release, Result, Transmit, Verdict
from tcpcryptd.engine.config import EngineConfig
from tcpcryptd.engine.engine import Engine
from tcpcryptd.engine.flow import FlowStatus

__all__ = ["Direction", "Engine", "EngineConfig", "FlowStatus", "Release", "Result",
           "Transmit", "Verdict"]
