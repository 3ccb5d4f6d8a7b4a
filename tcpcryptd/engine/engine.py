"""The flow engine: the flow table and the dispatch of packets and timers to the modules that
handle them (docs/ARCHITECTURE.md "Layer 3").

Sans-IO: driven only by ``handle_packet(packet_id, data, direction, now)`` and
``handle_timer(now)``; every call returns a :class:`~tcpcryptd.engine.actions.Result`.
Plain connections cost no state: only SYNs that may become ENO flows create a
:class:`~tcpcryptd.engine.flow.Flow`; every packet of any other connection is accepted as is,
with ``Result.plain`` set so the daemon may stop queueing that connection.

Where a packet goes: an encrypted flow's common segments to the fast paths
(:func:`~tcpcryptd.engine.outbound.fast_outbound`, :func:`~tcpcryptd.engine.inbound.
fast_inbound`); a SYN on an untracked 4-tuple to :meth:`Engine.open_flow`; a segment of a
flow in its SYN phase to :mod:`~tcpcryptd.engine.handshake`; one of an aborted or buried
flow to :mod:`~tcpcryptd.engine.closing`; every other to :mod:`~tcpcryptd.engine.outbound`
or :mod:`~tcpcryptd.engine.inbound`.  Those modules get a
:class:`~tcpcryptd.engine.context.Context` (config, counters, clock), never the engine; only
the SYN phase asks the engine (as a :class:`~tcpcryptd.engine.context.FlowTable`) to add,
replace or forget flows.

Limits (docs/ARCHITECTURE.md "Memory"): at most ``max_flows`` flows (a SYN beyond is left
plain and counted), of which at most ``max_half_open`` passive ones before the peer's third
segment (an ENO SYN beyond is left plain and counted: a SYN flood cannot fill the table nor
push out established flows), bounded held packets and buffered bytes per flow, a handshake
timeout, an idle timeout (an idle encrypted flow is aborted, RST both ways) and a
TIME-WAIT-like linger after both FINs or a RST, after which the flow is forgotten.  A SYN
flood costs no cryptography: keys are generated only when Init1/Init2 is needed (or ahead
of need, a few at most, in :meth:`Engine.prepare` while the daemon is idle), and a
passive flow is a compact :class:`~tcpcryptd.engine.flow.HalfOpen` record (~0.8 KB) until
the third segment promotes it to a :class:`~tcpcryptd.engine.flow.Flow`.  An outbound SYN
likewise makes a :class:`~tcpcryptd.engine.flow.SynSent` record, promoted only when the
SYN-ACK carries ENO: a peer without ENO costs no :class:`~tcpcryptd.engine.flow.Flow`.

Counters: ``encrypted``, ``plain`` and ``plain_<reason>`` (never tried), ``fallback`` and
``fallback_<reason>`` (RFC 8547 §4.6), ``aborts`` and ``aborts_<reason>``,
``drops_<reason>``, ``plain_half-open-limit`` (an ENO SYN beyond ``max_half_open``),
``retransmits``, ``ended_acks`` and ``ended_resets`` (answers to segments
of ended connections), ``ended_translated`` (the stack's segments on an ended connection sent
on in wire numbers), ``resets_accepted`` and ``challenge_acks`` (RFC 5961 §3.2),
``replaced_<state>`` (a flow replaced by a new SYN on its 4-tuple, RFC 9293 §3.10.7.4),
``key_pairs_ready`` (a key exchange that took a key pair made ahead by :meth:`Engine.prepare`).
Events (``Result.events``): :class:`~tcpcryptd.engine.events.SessionEstablished`,
:class:`~tcpcryptd.engine.events.FellBack`, :class:`~tcpcryptd.engine.events.Aborted`.
"""

from __future__ import annotations

from collections import Counter

from tcpcryptd.core.negotiation import Fallback
from tcpcryptd.engine.actions import Direction, Result, Verdict
from tcpcryptd.engine.closing import abort, drop_held, ended, fail, live_stale, route_stale
from tcpcryptd.engine.config import EngineConfig
from tcpcryptd.engine.context import Context
from tcpcryptd.engine.events import FellBack
from tcpcryptd.engine.flow import (
    HANDSHAKE_STATES,
    Flow,
    FlowStatus,
    HalfOpen,
    State,
    SynSent,
    flow_addresses,
    ip_end,
)
from tcpcryptd.engine.handshake import (
    half_open_segment,
    inbound_syn_phase,
    offer_declined,
    open_active,
    open_half_open,
    outbound_syn_phase,
    promote,
    promote_syn_sent,
    syn_refusal,
    syn_sent_segment,
)
from tcpcryptd.engine.inbound import fast_inbound, handle_inbound
from tcpcryptd.engine.outbound import fast_outbound, handle_outbound
from tcpcryptd.engine.timers import Deadlines, expire
from tcpcryptd.engine.policy import Mode, resets
from tcpcryptd.packet.tcp import (
    ACK,
    RST,
    SYN,
    TCP_HEADER as _TCP_FIXED,
    FlowKey,
    PacketError,
    TCPPacket,
    complete_checksum,
)


class Engine:
    """The transparent tcpcrypt endpoint for every connection of the local stack."""

    def __init__(self, config: EngineConfig | None = None, *, fast_path: bool = True) -> None:
        self._ctx = Context(config or EngineConfig())
        #: take the fast paths for common segments (off: every packet is fully parsed; the
        #: tests compare both ways, which must give the same bytes)
        self.fast_path = fast_path
        self._flows: dict[tuple, Flow | HalfOpen | SynSent] = {}
        #: how many of them are :class:`HalfOpen` records (``max_half_open``)
        self._half_open = 0
        self._deadlines = Deadlines(self._ctx, self._flows)

    @property
    def config(self) -> EngineConfig:
        return self._ctx.config

    @config.setter
    def config(self, config: EngineConfig) -> None:
        """A new configuration (the daemon's ``enable``/``disable``): read at every new SYN,
        existing flows are unaffected."""
        self._ctx.config = config

    @property
    def counters(self) -> Counter[str]:
        return self._ctx.counters

    # -- public API -----------------------------------------------------------------------

    def handle_packet(self, packet_id: int, data: bytes, direction: Direction,
                      now: float, *, checksum_partial: bool = False) -> Result:
        """Decide what to do with one queued packet (and whatever else must happen now).

        ``checksum_partial``: the TCP checksum field holds only the pseudo-header sum (the
        sending stack left the checksum to the NIC, ``CHECKSUM_PARTIAL``). The engine
        completes it (:func:`~tcpcryptd.packet.tcp.complete_checksum`, RFC 9293 §3.1)
        before anything that edits the packet incrementally (RFC 1624) -- except for a
        segment with payload on a fast path, which leaves with a new payload and a full
        checksum, or not at all.
        """
        ctx = self._ctx
        ctx.now = now
        outbound = direction == Direction.OUTBOUND
        # the fast paths (outbound.fast_outbound, inbound.fast_inbound) for an encrypted
        # flow's common segments: IPv4 without options (not a fragment) or IPv6 without
        # extension headers, the flow found from the raw header without a full parse
        if self.fast_path and len(data) >= 40:
            version = data[0] >> 4
            if data[0] == 0x45 and data[9] == 6 and not (data[6] & 0x3F or data[7]):
                tcp_start, src, dst = 20, data[12:16], data[16:20]
            elif version == 6 and data[6] == 6 and len(data) >= 60:
                tcp_start, src, dst = 40, data[8:24], data[24:40]
            else:
                tcp_start = 0
            if tcp_start:
                fields = _TCP_FIXED.unpack_from(data, tcp_start)
                flow = self._flows.get((version, src, fields[0], dst, fields[1]) if outbound
                                       else (version, dst, fields[1], src, fields[0]))
                if flow is None:
                    if outbound and fields[4] & (SYN | ACK | RST) == SYN:
                        # a new connection's SYN leaves unchanged or rebuilt with a full
                        # checksum (open_flow): nothing to complete
                        checksum_partial = False
                elif flow.state is State.ENCRYPTED:
                    if checksum_partial and (ip_end(data, tcp_start)
                                             <= tcp_start + ((fields[4] >> 12) << 2)):
                        # no payload: the fast paths edit the header in place
                        data, checksum_partial = complete_checksum(data), False
                    fast = self._fast(flow, data, outbound, tcp_start, fields, now)
                    if fast is not None:
                        return fast
        if checksum_partial:
            data = complete_checksum(data)
        try:
            pkt = TCPPacket.parse(data)
        except PacketError:
            ctx.count("passed_unparsed")
            return Result(Verdict.ACCEPT)
        key = pkt.flow_key() if outbound else pkt.reverse_flow_key()
        flow = self._flows.get(key)
        if flow is None:
            if pkt.flags & (SYN | ACK | RST) == SYN:
                return self._required(pkt, outbound, self.open_flow(pkt, outbound, now, data))
            return self._required(pkt, outbound, Result(Verdict.ACCEPT, plain=True))
        result = Result(None)
        flow.last_activity = now
        target = flow
        try:
            if type(flow) is HalfOpen:
                if half_open_segment(ctx, self, flow, pkt, data, outbound, now, result):
                    target = None
                else:
                    flow = target = self._promote(flow)
            elif type(flow) is SynSent:
                if syn_sent_segment(ctx, self, flow, pkt, outbound, now, result):
                    target = None
                else:
                    flow = target = self._promote(flow)
            if target is not None:
                if flow.stale is not None:
                    target = route_stale(ctx, flow, pkt, outbound, now)
                if target.closed_at is not None and not pkt.flags & SYN:
                    if target.state is not State.CLOSED:
                        ended(ctx, target, pkt, outbound, result)
                    elif outbound:
                        # a closed flow lingers with its full state: translated as before
                        handle_outbound(ctx, target, pkt, packet_id, now, result)
                        if result.verdict is Verdict.ACCEPT:
                            ctx.count("ended_translated")
                    else:
                        handle_inbound(ctx, target, pkt, now, result)
                elif outbound:
                    if not outbound_syn_phase(ctx, self, target, pkt, now, result):
                        handle_outbound(ctx, target, pkt, packet_id, now, result)
                elif not inbound_syn_phase(ctx, self, target, pkt, now, result):
                    handle_inbound(ctx, target, pkt, now, result)
        except Exception as error:  # noqa: BLE001 -- a bug must not stop the daemon or leak
            if target is None or type(target) in (HalfOpen, SynSent):
                target = self._promote(flow)    # type: ignore[arg-type]
            fail(ctx, target, error, now, result)
        current = self._flows.get(key)
        if current is not None:
            # the flow, or the one that replaced it (a new SYN on the 4-tuple)
            if current.scheduled is None or current is not flow:
                current.scheduled = None
            self._deadlines.schedule(current)
            # every packet from the key exchange on, until the connection has closed
            result.encrypted = current is flow and flow.state in (State.KEYING, State.ENCRYPTED)
        elif result.verdict is Verdict.ACCEPT and flow.state in HANDSHAKE_STATES:
            result.plain = True
        if result.verdict is None:
            result.verdict = Verdict.DROP
        return self._required(pkt, outbound, result) if result.plain else result

    def _fast(self, flow: Flow, data: bytes, outbound: bool, tcp_start: int,
              fields: tuple[int, ...], now: float) -> Result | None:
        """Run a fast path; None when it declines (nothing changed: the full path runs)."""
        ctx = self._ctx
        try:
            result = (fast_outbound if outbound else fast_inbound)(ctx, flow, data, tcp_start,
                                                                   fields, now)
            if result is None:
                return None
        except Exception as error:  # noqa: BLE001 -- as in handle_packet
            result = Result(None)
            fail(ctx, flow, error, now, result)
        flow.last_activity = now
        if self._flows.get(flow.key) is flow:
            self._deadlines.schedule(flow)
        if result.verdict is None:
            result.verdict = Verdict.DROP
        result.encrypted = flow.state is State.ENCRYPTED    # unless this packet closed it
        return result

    def handle_timer(self, now: float) -> Result:
        """Run every timer due at ``now``: retransmissions, redelivery, expiry."""
        ctx = self._ctx
        ctx.now = now
        result = Result(None)
        deadlines = self._deadlines
        for flow in deadlines.due(now):
            try:
                if expire(ctx, flow, now, result):    # type: ignore[arg-type]
                    self.forget(flow, result)
            except Exception as error:  # noqa: BLE001 -- see handle_packet
                fail(ctx, flow, error, now, result)   # type: ignore[arg-type]
            if self._flows.get(flow.key) is flow:
                deadlines.schedule(flow)
        result.verdict = None
        return result

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must run next, or None."""
        return self._deadlines.next()

    def prepare(self, now: float) -> float | None:
        """Idle work: make at most one ephemeral key pair ahead of need for a TEP of the
        configuration that connections use, drop the pairs that waited too long
        (engine/keypool.py, RFC 8548 §8).  Returns when to call again (``now``: more pairs
        are wanted), None: not until a connection takes a pair.  Without these calls every
        key exchange makes its own pair."""
        cfg = self._ctx.config
        return self._ctx.keys.prepare(cfg.teps if cfg.enabled else (), cfg.random, now)

    def prepare_due(self) -> float | None:
        """When :meth:`prepare` has work next (what it last returned, or the time a key
        exchange took a pair since); None: not before one does."""
        return self._ctx.keys.due

    def flows(self, now: float | None = None) -> list[FlowStatus]:
        """Status of every tracked flow, for ``tcpcryptd status``.

        Ages are measured at ``now`` (the daemon passes its clock, so they keep growing
        while the engine is idle); without it, at the time of the last packet or timer.
        """
        at = self._ctx.now if now is None else now
        return [flow.status(at) for flow in self._flows.values()]

    def flow_status(self, key: FlowKey, now: float | None = None) -> FlowStatus | None:
        """Status of the flow ``key`` (version, local address, local port, remote address,
        remote port; addresses packed), None when the engine does not track it: one
        connection for the TCPINC API request, without building every flow's status."""
        flow = self._flows.get(key)
        return None if flow is None else flow.status(self._ctx.now if now is None else now)

    def shutdown(self, now: float) -> Result:
        """The daemon is stopping: abort every connection that has or is making a session.

        RST to the peer and to the local stack (RFC 793 ABORT), so both applications learn
        at once instead of stalling; counted as ``aborts_shutdown``. Whatever a local stack
        sends afterwards on such a connection is reset by the firewall's guard, never sent
        in plaintext.
        """
        ctx = self._ctx
        ctx.now = now
        result = Result(None)
        for flow in list(self._flows.values()):
            if flow.state in (State.KEYING, State.ENCRYPTED):
                abort(ctx, flow, "shutdown", now, result)   # type: ignore[arg-type]
        return result

    # -- the flow table (context.FlowTable, for the SYN phase) ----------------------------

    def forget(self, flow: Flow | HalfOpen | SynSent, result: Result, *,
               restore: bool = True) -> None:
        """Drop ``flow`` from the table, its held packets with it (dropped: never released
        unencrypted); an ended flow it stood in for comes back (unless ``restore`` is
        False: the flow is being replaced)."""
        drop_held(flow, result)
        if self._flows.get(flow.key) is flow:
            del self._flows[flow.key]
            self._deadlines.drop(flow)
            if type(flow) is HalfOpen:
                self._half_open -= 1
            if flow.stale is None:
                return
            stale = live_stale(self._ctx, flow, self._ctx.now) if restore else None
            flow.stale = None
            if stale is not None:
                self._flows[flow.key] = stale
                stale.scheduled = None
                self._deadlines.schedule(stale)

    def fall_back(self, flow: Flow | SynSent, fallback: Fallback, result: Result) -> None:
        """ENO failed (RFC 8547 §4.6): forget the flow, the connection goes on plain."""
        self._fell_back(flow.key, fallback, result)
        self.forget(flow, result)
        result.verdict, result.plain = Verdict.ACCEPT, True

    def _fell_back(self, key: tuple, fallback: Fallback, result: Result) -> None:
        ctx = self._ctx
        ctx.count("fallback")
        ctx.count(f"fallback_{fallback.reason}")
        local, remote = flow_addresses(key)   # type: ignore[arg-type]
        result.events.append(FellBack(local, remote, str(fallback.reason)))

    def peer_answered_plain(self, key: FlowKey, now: float) -> Result:
        """The kernel made the connection ``key`` plain without the queue: the peer's
        SYN-ACK carried no ENO option and the local stack acknowledged it, so it answered
        our SYN exactly (RFC 8547 §4.6; daemon/nftables.py, which also counts it). Its
        syn-sent flow is forgotten (a secret its SYN offered counts ``resume_declined``, as
        when the daemon sees such a SYN-ACK). A flow in any other state saw a SYN-ACK itself
        and decides alone: nothing happens (nor for an unknown ``key``)."""
        result = Result(None)
        flow = self._flows.get(key)
        if flow is not None and flow.state is State.SYN_SENT and flow.closed_at is None:
            self._ctx.now = now
            offer_declined(self._ctx, flow)
            self.forget(flow, result)
        return result

    def plain(self, reason: str, result: Result | None = None) -> Result:
        """Leave the connection plain, counted as ``plain_<reason>``: the packet passes."""
        self._ctx.count("plain")
        self._ctx.count(f"plain_{reason}")
        if result is None:
            return Result(Verdict.ACCEPT, plain=True)
        result.verdict, result.plain = Verdict.ACCEPT, True
        return result

    def _required(self, pkt: TCPPacket, outbound: bool, result: Result) -> Result:
        """Policy ``require`` (engine/policy.py): a connection left plain is never handed to
        the kernel as plain, and is reset both ways (its packet dropped) where
        :func:`~tcpcryptd.engine.policy.resets` says, counted as ``require_resets``."""
        if result.plain and self._ctx.config.policy.require and (
                self._ctx.config.policy.of_packet(pkt, outbound) is Mode.REQUIRE):
            result.plain = False
            transmit = resets(pkt, outbound)
            if transmit:
                self._ctx.count("require_resets")
                result.verdict, result.data = Verdict.DROP, None
                result.transmit.extend(transmit)
        return result

    def open_flow(self, pkt: TCPPacket, outbound: bool, now: float,
                  raw: bytes | None = None) -> Result:
        """A SYN on an untracked 4-tuple (``raw``: the packet as it arrived, else rebuilt)."""
        cfg = self._ctx.config
        if cfg.policy.of_packet(pkt, outbound) is Mode.SKIP:
            return self.plain("policy-skip")
        refusal = syn_refusal(cfg, pkt)
        if refusal is not None:
            return self.plain(refusal)
        if len(self._flows) >= cfg.max_flows:
            return self.plain("flow-limit")
        syn = pkt.to_bytes() if raw is None else bytes(raw)
        if outbound:
            flow = open_active(self._ctx, pkt, syn, now)
            if flow is None:
                return self.plain("option-space")
            # with a full checksum: the stack's SYN may hold only the pseudo-header sum
            # (handle_packet leaves it so)
            out = pkt.to_bytes()
        else:
            opened = open_half_open(self._ctx, pkt, syn, now)
            if isinstance(opened, Fallback):
                result = Result(Verdict.ACCEPT, plain=True)
                self._fell_back(pkt.reverse_flow_key(), opened, result)
                return result
            if self._half_open >= cfg.max_half_open:
                # the SYN goes on untouched (no ENO answer: the connection is plain TCP,
                # RFC 8547 §4.6), as beyond max_flows
                return self.plain("half-open-limit")
            self._half_open += 1
            flow = opened
            out = pkt.to_bytes_incremental()
        self._flows[flow.key] = flow
        self._deadlines.schedule(flow)
        return Result(Verdict.ACCEPT, out)

    def _promote(self, record: HalfOpen | SynSent) -> Flow:
        """The record's :class:`Flow` (:func:`~tcpcryptd.engine.handshake.promote`,
        :func:`~tcpcryptd.engine.handshake.promote_syn_sent`), in the record's place in the
        table if it has one there; the caller schedules it."""
        passive = type(record) is HalfOpen
        flow = promote(record) if passive else promote_syn_sent(record)  # type: ignore[arg-type]
        if self._flows.get(record.key) is record:
            self._flows[record.key] = flow
            self._deadlines.drop(record)
            if passive:
                self._half_open -= 1
                record.stale = None
            record.scheduled = None     # the flow gets its own entry
        return flow

    def replace_inbound(self, flow: Flow | HalfOpen, pkt: TCPPacket, now: float,
                        result: Result) -> None:
        """A SYN with a new ISN on a 4-tuple whose flow ended or is still a half-open one
        (4-tuple reuse, RFC 9293 §3.10.7.4).

        Whether the stack takes it is the stack's decision: one in TIME-WAIT takes a SYN
        with a higher ISN or newer timestamps (RFC 9293 §3.10.7.4, RFC 6191) and answers any
        other with an ACK of the old connection; a listener takes any.  So the new flow is
        made at once (its SYN must get the ENO answer) but the ended flow is kept as its
        ``stale`` until the stack answers the new SYN with a SYN-ACK: until then whatever
        the stack sends or gets on the 4-tuple (TIME-WAIT ACKs, the peer's RST answering
        them) belongs to the old connection and is translated through the ended flow.  A
        half-open flow (syn-received) is replaced outright, its own stale passed on.
        """
        stale = flow.stale if flow.closed_at is None else flow
        if flow.closed_at is None:
            self._ctx.count(f"replaced_{flow.state}")
        self.forget(flow, result, restore=False)
        new = self.open_flow(pkt, False, now)
        result.verdict, result.data, result.plain = new.verdict, new.data, new.plain
        result.events.extend(new.events)
        created = self._flows.get(flow.key)
        if created is not None:
            created.stale = stale
        elif stale is not None:
            # the new SYN stays plain: the ended flow stays until the stack's SYN-ACK shows
            # it took the SYN (then the flow goes, see closing.route_stale), for its
            # TIME-WAIT answers
            self._flows[flow.key] = stale
            stale.scheduled = None
            result.plain = False
