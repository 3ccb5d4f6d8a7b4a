"""The engine's timers: one deadline per flow, and what happens when it passes.

Per flow (:func:`deadline`): the end of its handshake (``handshake_timeout``), of its idle
time (``idle_timeout``), of its linger and tombstone, and the three timers of an open flow:

* RTO of injected bytes (:func:`arm_injected`, :func:`on_peer_ack`,
  :func:`retransmit_injected`): bytes the local stack never sent -- Init1/Init2, the empty
  frame answering a rekey (RFC 8548 §3.8), the empty FINp frame of a bare FIN -- are the
  engine's to retransmit, with RFC 6298's timer (Karn's rule, exponential backoff, at most
  ``max_retransmits``, then abort);
* redelivery toward the local stack (``dl_deadline``, :func:`~tcpcryptd.engine.delivery.
  redeliver`);
* release of an idle flow's AEAD objects (:func:`release_aead`).

:class:`Deadlines` keeps them in one heap with lazy deletion: a flow's entry is live while
``flow.scheduled`` equals its time; stale entries are skipped and compacted away, so the heap
holds at most ~1.5 entries per flow (docs/ARCHITECTURE.md "Memory").  The SYN-phase records
(:class:`~tcpcryptd.engine.flow.HalfOpen`, :class:`~tcpcryptd.engine.flow.SynSent`) have
no heap entry: a record's only deadline is the end of its handshake, which never moves, so
they wait in creation order and leave with the record (most are forgotten or promoted
within a round trip; an entry of the heap would keep each dead one until a compaction).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator

from tcpcryptd.engine.actions import Result
from tcpcryptd.engine.closing import abort, bury
from tcpcryptd.engine.context import Context
from tcpcryptd.engine.delivery import redeliver
from tcpcryptd.engine.flow import HANDSHAKE_STATES, Flow, HalfOpen, State, SynRecord, SynSent
from tcpcryptd.packet.tcp import FlowKey


#: The SYN-phase record types (:attr:`Deadlines.records`)
_RECORDS = (HalfOpen, SynSent)


def deadline(ctx: Context, flow: Flow | HalfOpen | SynSent) -> float:
    """When the flow's earliest timer runs out."""
    cfg = ctx.config
    if flow.state is State.TOMBSTONE:
        end = flow.closed_at + cfg.linger + cfg.tombstone  # type: ignore[operator]
    elif flow.closed_at is not None:
        end = flow.closed_at + cfg.linger
    elif flow.state in HANDSHAKE_STATES or flow.state is State.KEYING:
        end = flow.created + cfg.handshake_timeout
    else:
        end = flow.last_activity + cfg.idle_timeout
    for when in (flow.rtx_deadline, flow.dl_deadline, flow.aead_idle_at):
        if when is not None and when < end:
            end = when
    return end


class Deadlines:
    """The heap of flow deadlines (time, tiebreak, flow) of one engine's flow table."""

    __slots__ = ("heap", "records", "_ctx", "_flows", "_tiebreak")

    def __init__(self, ctx: Context, flows: dict) -> None:
        self.heap: list[tuple[float, int, Flow]] = []
        #: the SYN-phase records by key, in the order they were scheduled (created): their
        #: deadlines' order while ``handshake_timeout`` stays
        self.records: dict[FlowKey, SynRecord] = {}
        self._ctx = ctx
        self._flows = flows
        self._tiebreak = itertools.count()

    def schedule(self, flow: Flow | HalfOpen | SynSent) -> None:
        """Push the flow's deadline if it is earlier than its live entry (or it has none); a
        record's, once, into :attr:`records`."""
        ctx = self._ctx
        cfg = ctx.config
        release = flow.aead_idle_at
        if (release is None and flow.session is not None and cfg.aead_idle_release > 0
                and flow.session.aead_built):
            # keys made or rebuilt since the last release: release them when the flow idles
            release = flow.aead_idle_at = ctx.now + cfg.aead_idle_release
        scheduled = flow.scheduled
        if scheduled is not None:
            # a deadline only moves earlier through these four; skip the rest on the hot path
            rtx, redeliver_at, closed = flow.rtx_deadline, flow.dl_deadline, flow.closed_at
            if ((rtx is None or rtx >= scheduled)
                    and (redeliver_at is None or redeliver_at >= scheduled)
                    and (closed is None or closed + cfg.linger >= scheduled)
                    and (release is None or release >= scheduled)):
                return
        when = deadline(ctx, flow)
        if scheduled is None or when < scheduled:
            flow.scheduled = when
            if type(flow) in _RECORDS:
                self.records[flow.key] = flow   # type: ignore[assignment]
                return
            heap = self.heap
            heapq.heappush(heap, (when, next(self._tiebreak), flow))
            if len(heap) > 3 * len(self._flows) // 2 + 256:
                self._compact()

    def _compact(self) -> None:
        """Drop the entries superseded by an earlier deadline (each ~120 B): every flow keeps
        one; at most 1.5 per flow, amortised O(1) per push."""
        flows = self._flows
        self.heap = [entry for entry in self.heap
                     if entry[2].scheduled == entry[0] and flows.get(entry[2].key) is entry[2]]
        heapq.heapify(self.heap)

    def drop(self, flow: Flow | HalfOpen | SynSent) -> None:
        """``flow`` left the table (forgotten, or a record promoted): a record's entry goes
        with it (a flow's heap entry is skipped when it comes up)."""
        if self.records.get(flow.key) is flow:
            del self.records[flow.key]

    def next(self) -> float | None:
        """The earliest live deadline, or None."""
        heap = self.heap
        first = None
        while heap:
            when, _, flow = heap[0]
            if flow.scheduled == when and self._flows.get(flow.key) is flow:
                first = when
                break
            heapq.heappop(heap)
        record = next(iter(self.records.values()), None)   # the earliest record's
        if record is not None and (first is None or record.scheduled < first):  # type: ignore[operator]
            first = record.scheduled
        return first

    def due(self, now: float) -> Iterator[Flow | HalfOpen | SynSent]:
        """Pop the flows whose live deadline is at or before ``now``, the heap's earliest
        first, then the records' (a flow scheduled again meanwhile for a time already due
        comes again; entries pushed after a compaction meanwhile wait for the next call)."""
        heap = self.heap
        while heap and heap[0][0] <= now:
            when, _, flow = heapq.heappop(heap)
            if flow.scheduled != when or self._flows.get(flow.key) is not flow:
                continue
            flow.scheduled = None
            yield flow
        records = self.records
        while records:
            key = next(iter(records))
            record = records[key]
            if record.scheduled > now:   # type: ignore[operator]
                break
            del records[key]
            record.scheduled = None
            yield record


def expire(ctx: Context, flow: Flow, now: float, result: Result) -> bool:
    """Run the flow's timers due at ``now``; True when the flow must leave the table."""
    cfg = ctx.config
    if flow.closed_at is not None:
        if now >= flow.closed_at + cfg.linger + cfg.tombstone:
            return True
        if now >= flow.closed_at + cfg.linger:
            bury(flow)
            return False
    elif flow.state in HANDSHAKE_STATES:
        if now >= flow.created + cfg.handshake_timeout:
            ctx.count("expired_handshake")
            return True
    elif flow.state is State.KEYING:
        if now >= flow.created + cfg.handshake_timeout:
            # encryption is on but no keys came: nothing may pass in plaintext, so abort
            abort(ctx, flow, "init-timeout", now, result)
            return False
    elif now >= flow.last_activity + cfg.idle_timeout:
        abort(ctx, flow, "idle", now, result)
        return False
    if flow.rtx_deadline is not None and now >= flow.rtx_deadline:
        retransmit_injected(ctx, flow, now, result)
    if flow.dl_deadline is not None and now >= flow.dl_deadline:
        redeliver(ctx, flow, now, result)
    if flow.aead_idle_at is not None and now >= flow.aead_idle_at:
        release_aead(ctx, flow, now)
    return False


def release_aead(ctx: Context, flow: Flow, now: float) -> None:
    """An idle flow keeps its raw traffic keys only (``EngineConfig.aead_idle_release``).

    The timer is armed when keys are made or rebuilt and not moved by each packet; when
    it fires for a flow that saw packets since, it is armed again from the last one.
    """
    session = flow.session
    due = flow.last_activity + ctx.config.aead_idle_release
    if session is None:
        flow.aead_idle_at = None
    elif now >= due:
        session.release_aead()
        ctx.count("aead_released")
        flow.aead_idle_at = None
    else:
        flow.aead_idle_at = due


def arm_injected(ctx: Context, flow: Flow, now: float) -> None:
    """Bytes the engine injected are in flight: start the RTO (RFC 6298 §5.1) and an RTT
    probe; the first RTO comes from the handshake's RTT sample, if there is one."""
    cfg = ctx.config
    if flow.srtt is None:
        if flow.syn_rtt is not None:
            flow.rtt_sample(flow.syn_rtt, cfg.min_rto, cfg.max_rto)
        else:
            flow.rto = cfg.initial_rto
    if flow.rtx_deadline is None:
        flow.rtx_deadline = now + flow.rto
    flow.rtt_probe = (flow.smap.wire_end, now)


def inject(ctx: Context, flow: Flow, wire: bytes, now: float, result: Result) -> None:
    """Send wire bytes the local stack never sent (Init2, an empty frame), with the
    engine's own retransmission."""
    record = flow.smap.append(0, wire, injected=True)
    result.transmit.extend(flow.wire_pieces(record.wire_start, wire))
    arm_injected(ctx, flow, now)


def on_peer_ack(ctx: Context, flow: Flow, now: float) -> None:
    """The peer's ACK advanced: RTT sample (Karn), timer of injected bytes (RFC 6298)."""
    probe = flow.rtt_probe
    if probe is not None and flow.smap.peer_wire_ack >= probe[0]:
        flow.rtt_sample(now - probe[1], ctx.config.min_rto, ctx.config.max_rto)
        flow.rtt_probe = None
    if flow.rtx_deadline is not None:
        if flow.smap.injected_pending:
            flow.rtx_deadline = now + flow.rto
        else:
            flow.rtx_deadline = None
            flow.rtx_count = 0


def retransmit_injected(ctx: Context, flow: Flow, now: float, result: Result) -> None:
    """RFC 6298 §5 for bytes the local stack never sent: resend, back off, give up."""
    smap = flow.smap
    records = smap.injected_unacked()
    if not records:
        flow.rtx_deadline = None
        return
    flow.rtx_count += 1
    if flow.rtx_count > ctx.config.max_retransmits:
        abort(ctx, flow, "retransmit-limit", now, result)
        return
    ctx.count("retransmits")
    for record in records:
        lo = max(record.wire_start, smap.peer_wire_ack)
        fin = smap.fin_wire is not None and record.wire_end == smap.fin_wire
        result.transmit.extend(flow.wire_pieces(lo, record.wire[lo - record.wire_start:],
                                                fin=fin))
    flow.rto = min(flow.rto * 2, ctx.config.max_rto)
    flow.rtx_deadline = now + flow.rto
    flow.rtt_probe = None
