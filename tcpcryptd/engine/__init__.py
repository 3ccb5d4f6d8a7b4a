"""Layer 3: the transparent tcpcrypt flow engine, sans-IO (docs/ARCHITECTURE.md "Layer 3").

Where things are: ``engine.py`` (flow table, dispatch, limits, timers), ``handshake.py``
(ENO on SYN/SYN-ACK/ACK, MSS clamp, fallback, Init messages), ``outbound.py`` (local stack
-> wire), ``inbound.py`` (wire -> local stack), ``sendmap.py`` and ``reassembly.py`` (the two
sequence spaces), ``flow.py`` (per-flow state), ``actions.py`` (what a call returns),
``config.py``.
"""

from tcpcryptd.engine.actions import Direction, Release, Result, Transmit, Verdict
from tcpcryptd.engine.config import EngineConfig
from tcpcryptd.engine.engine import Engine
from tcpcryptd.engine.flow import FlowStatus

__all__ = ["Direction", "Engine", "EngineConfig", "FlowStatus", "Release", "Result",
           "Transmit", "Verdict"]
