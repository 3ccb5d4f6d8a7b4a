"""Rekeying (RFC 8548 §3.8) and keep-alive (§3.9) of an encrypted flow.

A host has one local generation (the key set it encrypts with) and one remote generation
(the highest the peer used).  Here:

* **Initiating** (:func:`due`, :func:`initiate`): when the frames sealed under the current
  generation reach ``EngineConfig.rekey_bytes`` wire bytes, or ``rekey_interval`` seconds
  passed since the generation began, the next new data the stack sends starts generation
  j + 1: ``Session.initiate_rekey`` and the frame that carries the data has rekey = 1
  (``Session.seal``).  The limits count from the start of each generation, whichever host
  started it.  An idle flow is not woken up for it: its next frame carries the rekey.
* **Answering** (:func:`on_rekey_frame`): a verified rekey = 1 frame advances the remote
  generation; when it passes the local one the local one follows and, unless our FINp frame
  is out, an empty frame with rekey = 1 goes out at once (§3.8 "MUST immediately send"),
  with the engine's own retransmission (it is injected: the stack never sent it).
* **Retransmissions** never need a key: the send map replays the stored wire bytes of the
  first transmission, so frame data is always resent "encrypted with the same key as when it
  was first transmitted" (§3.8) and no frame ID is used twice under one key (§3.6).
* **Old generations** (§3.8 SHOULD delete): once the peer's frame of generation j is
  verified and our own first frame of j is sealed, generations below j are gone for good.
  Frames are opened strictly in stream order, so no frame of an older generation can still
  arrive (a retransmission of one is a duplicate of verified bytes, never opened again), and
  no frame of ours needs an older key (replay, above).
* **Events**: :class:`~tcpcryptd.engine.events.Rekeyed` for each new generation, the moment
  this host first uses it (initiated or followed), with both traffic keys: the key log
  writes one line per generation, so ``tcpcryptd decode`` follows a capture across rekeys.
* **Keep-alive** (§3.9, :func:`keepalive`): the local stack's TCP keep-alive probe of an
  encrypted connection (a segment at ``snd.una - 1``, no data or one byte, while nothing is
  in flight) would reach the peer unauthenticated; the engine drops it and instead initiates
  a rekey with an empty frame, which the peer must answer with a rekey = 1 frame (§3.8).
  That answer, verified, is what tells the stack the peer lives (the segment carrying it
  reaches the stack as an ACK, :func:`on_rekey_frame`); a peer that never answers makes the empty frame's
  retransmission give up (``max_retransmits``) and the connection is aborted.  At most one
  such empty-frame rekey is outstanding (§3.8 "MUST NOT initiate ... more than once while
  its record of the remote generation number is less than its own"): further probes while
  it waits are dropped, the outstanding frame's own retransmission probes for them.  Once
  either end's FINp frame is out no rekey can be answered (§3.7, §3.8): keep-alives then
  pass as plain TCP keep-alives.
"""

from __future__ import annotations

import math

from tcpcryptd.core.frame import Frame
from tcpcryptd.engine.actions import Result
from tcpcryptd.engine.context import Context
from tcpcryptd.engine.events import Rekeyed
from tcpcryptd.engine.flow import Flow
from tcpcryptd.engine.timers import inject

#: ``rekey_wire`` of a flow whose byte limit is off: never reached
NEVER_BYTES = 1 << 62


def begin_generation(ctx: Context, flow: Flow, now: float) -> None:
    """A generation starts for this host's sending (the session's first, or a new one):
    the byte and time limits of ``EngineConfig.rekey_bytes``/``rekey_interval`` count from
    here (0: that limit is off)."""
    cfg = ctx.config
    flow.rekey_wire = flow.smap.wire_end + cfg.rekey_bytes if cfg.rekey_bytes else NEVER_BYTES
    flow.rekey_time = now + cfg.rekey_interval if cfg.rekey_interval else math.inf


def due(flow: Flow, now: float) -> bool:
    """Whether the current generation reached a limit (checked before sealing new data;
    the fast outbound path makes the same test and leaves such a segment to the full one)."""
    return flow.smap.wire_end >= flow.rekey_wire or now >= flow.rekey_time


def _report(ctx: Context, flow: Flow, now: float, result: Result) -> None:
    """The local generation is new: event for the key log, limits counted afresh."""
    session = flow.session
    assert session is not None
    generation = session.local_generation
    local, remote = flow.addresses()
    k_ab, k_ba = session.traffic_keys(generation)
    result.events.append(Rekeyed(local, remote, session.session_id, generation, k_ab, k_ba))
    ctx.count("rekeys")
    begin_generation(ctx, flow, now)


def initiate(ctx: Context, flow: Flow, now: float, result: Result) -> None:
    """Start generation j + 1 (§3.8 "initiating rekeying"); the next frame sealed carries
    rekey = 1.  Nothing happens while an earlier increment is still unannounced."""
    session = flow.session
    assert session is not None
    if session.rekey_pending:
        return
    session.initiate_rekey()
    _report(ctx, flow, now, result)


def on_rekey_frame(ctx: Context, flow: Flow, frame: Frame, followed: bool, now: float,
                   result: Result) -> None:
    """A verified rekey = 1 frame (``followed``: it raised our local generation)."""
    session = flow.session
    assert session is not None
    if followed:
        _report(ctx, flow, now, result)
        if frame.needs_rekey_reply:
            # §3.8: an empty frame with rekey = 1 at once, with our own retransmission
            inject(ctx, flow, session.seal(flow.smap.wire_end, b""), now, result)
    elif (session.remote_generation == session.local_generation
          and flow.smap.local_acked == flow.smap.local_end):
        # the answer to our rekey while the stack has nothing in flight (its keep-alive
        # waits for it): the segment that carried it reaches the stack as an ACK
        flow.stack_seen_ack = None
    session.discard_generations_below(session.remote_generation)


def keepalive(ctx: Context, flow: Flow, now: float, result: Result) -> bool:
    """The stack's keep-alive probe (§3.9): probe with an empty rekey frame instead.

    False when the probe cannot be replaced: our FINp frame is out (no frame may follow it,
    §3.7), or the peer's is in (a host that sent its FIN does not answer a rekey, §3.8).
    The caller then passes the TCP keep-alive as it is (§3.9 allows TCP keep-alives where
    endpoint authentication is not needed).  True otherwise: the stack's segment is
    to be dropped (an empty-frame rekey already waits for its answer, or one went out now).
    """
    session = flow.session
    assert session is not None
    if session.fin_sent or flow.rx_finp:
        return False
    if session.rekey_pending or session.may_initiate_empty_rekey:
        initiate(ctx, flow, now, result)
        ctx.count("keepalive_rekeys")
        inject(ctx, flow, session.seal(flow.smap.wire_end, b""), now, result)
    else:
        ctx.count("keepalive_waiting")
    return True
