"""The flow engine: flow table, dispatch, limits, timers (docs/ARCHITECTURE.md "Layer 3").

Sans-IO: driven only by ``handle_packet(packet_id, data, direction, now)`` and
``handle_timer(now)``; every call returns a :class:`~tcpcryptd.engine.actions.Result`.
Plain connections cost no state: only SYNs that may become ENO flows create a
:class:`~tcpcryptd.engine.flow.Flow`; every packet of any other connection is accepted as is,
with ``Result.plain`` set so the daemon may stop queueing that connection.

Limits (DESIGN.md §6 invariant 6): at most ``max_flows`` flows (a SYN beyond is left plain
and counted), of which at most ``max_half_open`` passive ones before the peer's third segment
(an ENO SYN beyond is left plain and counted: a SYN flood cannot fill the table nor push out
established flows), bounded held packets and buffered bytes per flow, a handshake timeout, an idle
timeout (an idle encrypted flow is aborted, RST both ways) and a TIME-WAIT-like linger after
both FINs or a RST, after which the flow is forgotten.  A SYN flood costs no cryptography:
keys are generated only when Init1/Init2 is needed, and a passive flow is a compact
:class:`~tcpcryptd.engine.flow.HalfOpen` record (~0.8 KB) until the third segment promotes it
to a :class:`~tcpcryptd.engine.flow.Flow`.

Counters: ``encrypted``, ``plain`` and ``plain_<reason>`` (never tried), ``fallback`` and
``fallback_<reason>`` (RFC 8547 §4.6), ``aborts`` and ``aborts_<reason>``,
``drops_<reason>``, ``plain_half-open-limit`` (an ENO SYN beyond ``max_half_open``),
``retransmits``, ``ended_acks`` and ``ended_resets`` (answers to segments
of ended connections), ``ended_translated`` (the stack's segments on an ended connection sent
on in wire numbers), ``resets_accepted`` and ``challenge_acks`` (RFC 5961 §3.2),
``replaced_<state>`` (a flow replaced by a new SYN on its 4-tuple, RFC 9293 §3.10.7.4).
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter

from tcpcryptd.core.errors import (
    CipherMismatchError,
    FrameAuthError,
    FrameError,
    InitMessageError,
    KeyAgreementError,
    TcpcryptError,
)
from tcpcryptd.core.negotiation import Fallback
from tcpcryptd.engine.actions import Direction, Release, Result, Transmit, Verdict
from tcpcryptd.engine.config import EngineConfig
from tcpcryptd.engine.flow import MASK32, Flow, FlowAbort, FlowStatus, HalfOpen, State
from tcpcryptd.engine.handshake import (
    add_syn_option,
    clamp_mss,
    half_open_syn_ack,
    open_half_open,
    on_first_ack,
    on_local_syn_ack,
    on_syn_ack,
    open_active,
    promote,
    syn_refusal,
)
from tcpcryptd.engine.inbound import (
    RST_EXACT,
    deliver_pending,
    fast_inbound,
    handle_inbound,
    rst_position,
)
from tcpcryptd.engine.outbound import fast_outbound, handle_outbound, release_held
from tcpcryptd.engine.policy import Mode, resets
from tcpcryptd.engine.reassembly import Reassembly
from tcpcryptd.engine.sendmap import SendMap
from tcpcryptd.packet import options as tcp_options
from tcpcryptd.packet.tcp import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    TCP_HEADER as _TCP_FIXED,
    URG,
    FlowKey,
    PacketError,
    TCPPacket,
)

_HANDSHAKE_STATES = (State.SYN_SENT, State.SYN_RECEIVED, State.NEGOTIATED)


def _abort_reason(error: TcpcryptError) -> str:
    """Counter name of a core error (RFC 8548 §3.3, §3.6: each aborts)."""
    if isinstance(error, FrameAuthError):
        return "aead-failure"
    if isinstance(error, FrameError):
        return "bad-frame"
    if isinstance(error, CipherMismatchError):
        return "cipher-mismatch"
    if isinstance(error, InitMessageError):
        return "bad-init"
    if isinstance(error, KeyAgreementError):
        return "key-agreement"
    return "protocol-error"


class Engine:
    """The transparent tcpcrypt endpoint for every connection of the local stack."""

    def __init__(self, config: EngineConfig | None = None, *, fast_path: bool = True) -> None:
        self.config = config or EngineConfig()
        #: take the fast paths for common segments (off: every packet is fully parsed; the
        #: tests compare both ways, which must give the same bytes)
        self.fast_path = fast_path
        self._flows: dict[tuple, Flow | HalfOpen] = {}
        #: how many of them are :class:`HalfOpen` records (``max_half_open``)
        self._half_open = 0
        self._timers: list[tuple[float, int, Flow]] = []
        self._tiebreak = itertools.count()
        self.counters: Counter[str] = Counter()
        self._now = 0.0

    # -- public API -----------------------------------------------------------------------

    def handle_packet(self, packet_id: int, data: bytes, direction: Direction,
                      now: float) -> Result:
        """Decide what to do with one queued packet (and whatever else must happen now)."""
        self._now = now
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
                if flow is not None and flow.state is State.ENCRYPTED:
                    fast = self._fast(flow, data, outbound, tcp_start, fields, now)
                    if fast is not None:
                        return fast
        try:
            pkt = TCPPacket.parse(data)
        except PacketError:
            self.count("passed_unparsed")
            return Result(Verdict.ACCEPT)
        key = pkt.flow_key() if outbound else pkt.reverse_flow_key()
        flow = self._flows.get(key)
        if flow is None:
            if pkt.flags & (SYN | ACK | RST) == SYN:
                return self._required(pkt, outbound, self._new_flow(pkt, outbound, now, data))
            return self._required(pkt, outbound, Result(Verdict.ACCEPT, plain=True))
        result = Result(None)
        flow.last_activity = now
        handshaking = flow.state in _HANDSHAKE_STATES
        target = flow
        try:
            if type(flow) is HalfOpen:
                if self._half_open_packet(flow, pkt, data, outbound, now, result):
                    target = None
                else:
                    flow = target = self._promote(flow)
            if target is not None:
                if flow.stale is not None:
                    target = self._route_stale(flow, pkt, outbound, now)
                if target.closed_at is not None and not pkt.flags & SYN:
                    self._ended(target, pkt, outbound, packet_id, now, result)
                elif outbound:
                    self._outbound(target, pkt, packet_id, now, result)
                else:
                    self._inbound(target, pkt, now, result)
        except Exception as error:  # noqa: BLE001 -- a bug must not stop the daemon or leak
            if target is None or type(target) is HalfOpen:
                target = self._promote(flow)    # type: ignore[arg-type]
            self._failed(target, error, now, result)
        current = self._flows.get(key)
        if current is not None:
            # the flow, or the one that replaced it (a new SYN on the 4-tuple)
            if current.scheduled is None or current is not flow:
                current.scheduled = None
            self._schedule(current)
            result.encrypted = (current is flow and handshaking
                                and flow.state in (State.KEYING, State.ENCRYPTED))
        elif result.verdict is Verdict.ACCEPT and flow.state in _HANDSHAKE_STATES:
            result.plain = True
        if result.verdict is None:
            result.verdict = Verdict.DROP
        return self._required(pkt, outbound, result) if result.plain else result

    def _fast(self, flow: Flow, data: bytes, outbound: bool, tcp_start: int,
              fields: tuple[int, ...], now: float) -> Result | None:
        """Run a fast path; None when it declines (nothing changed: the full path runs)."""
        try:
            result = (fast_outbound if outbound else fast_inbound)(self, flow, data, tcp_start,
                                                                   fields, now)
            if result is None:
                return None
        except Exception as error:  # noqa: BLE001 -- as in handle_packet
            result = Result(None)
            self._failed(flow, error, now, result)
        flow.last_activity = now
        if self._flows.get(flow.key) is flow:
            self._schedule(flow)
        if result.verdict is None:
            result.verdict = Verdict.DROP
        return result

    def _failed(self, flow: Flow, error: Exception, now: float, result: Result) -> None:
        """An error while handling a packet of ``flow``: abort it (or drop a bad packet)."""
        if isinstance(error, FlowAbort):
            self.abort(flow, error.reason, now, result)
        elif isinstance(error, TcpcryptError):
            self.abort(flow, _abort_reason(error), now, result)
        elif isinstance(error, PacketError):
            self.count("drops_bad-packet")
            result.verdict, result.data = Verdict.DROP, None
        else:   # a bug: the connection is aborted, never passed on in plaintext
            self.abort(flow, "internal-error", now, result)
            flow.abort_reason = f"internal-error: {type(error).__name__}: {error}"

    def handle_timer(self, now: float) -> Result:
        """Run every timer due at ``now``: retransmissions, redelivery, expiry."""
        self._now = now
        result = Result(None)
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, _, flow = heapq.heappop(timers)
            if flow.scheduled != when or self._flows.get(flow.key) is not flow:
                continue
            flow.scheduled = None
            try:
                self._on_timer(flow, now, result)
            except Exception as error:  # noqa: BLE001 -- see handle_packet
                self._failed(flow, error, now, result)
            if self._flows.get(flow.key) is flow:
                self._schedule(flow)
        result.verdict = None
        return result

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must run next, or None."""
        timers = self._timers
        while timers:
            when, _, flow = timers[0]
            if flow.scheduled == when and self._flows.get(flow.key) is flow:
                return when
            heapq.heappop(timers)
        return None

    def flows(self, now: float | None = None) -> list[FlowStatus]:
        """Status of every tracked flow, for ``tcpcryptd status``.

        Ages are measured at ``now`` (the daemon passes its clock, so they keep growing
        while the engine is idle); without it, at the time of the last packet or timer.
        """
        at = self._now if now is None else now
        return [flow.status(at) for flow in self._flows.values()]

    def flow_status(self, key: FlowKey, now: float | None = None) -> FlowStatus | None:
        """Status of the flow ``key`` (version, local address, local port, remote address,
        remote port; addresses packed), None when the engine does not track it: one
        connection for the TCPINC API request, without building every flow's status."""
        flow = self._flows.get(key)
        return None if flow is None else flow.status(self._now if now is None else now)

    def shutdown(self, now: float) -> Result:
        """The daemon is stopping: abort every connection that has or is making a session.

        RST to the peer and to the local stack (RFC 793 ABORT), so both applications learn
        at once instead of stalling; counted as ``aborts_shutdown``. Whatever a local stack
        sends afterwards on such a connection is reset by the firewall's guard, never sent
        in plaintext.
        """
        self._now = now
        result = Result(None)
        for flow in list(self._flows.values()):
            if flow.state in (State.KEYING, State.ENCRYPTED):
                self.abort(flow, "shutdown", now, result)
        return result

    # -- services for the handshake, outbound and inbound paths ---------------------------

    def count(self, name: str) -> None:
        self.counters[name] += 1

    def wire_pieces(self, flow: Flow, wire_offset: int, data: bytes, *,
                    fin: bool = False) -> list[Transmit]:
        """Engine-made segments carrying wire bytes ``data`` at ``wire_offset``, PSH on the last."""
        max_payload = max(flow.peer_mss - len(flow.wire_options(False)), 64)
        pieces = [data[i:i + max_payload] for i in range(0, len(data), max_payload)] or [b""]
        out = []
        for k, piece in enumerate(pieces):
            last = k == len(pieces) - 1
            flags = (PSH if last and piece else 0) | (FIN if fin and last else 0)
            out.append(Transmit(flow.wire_packet(wire_offset, flags, piece), Direction.OUTBOUND))
            wire_offset += len(piece)
        return out

    def engine_ack(self, flow: Flow) -> Transmit:
        """Our own ACK to the peer, with SACK blocks in wire space (DESIGN.md §3)."""
        return Transmit(flow.wire_packet(flow.wire_snd_next(), 0, sack=True), Direction.OUTBOUND)

    def _arm_injected(self, flow: Flow, now: float) -> None:
        if flow.srtt is None:
            if flow.syn_rtt is not None:
                flow.rtt_sample(flow.syn_rtt, self.config.min_rto, self.config.max_rto)
            else:
                flow.rto = self.config.initial_rto
        if flow.rtx_deadline is None:
            flow.rtx_deadline = now + flow.rto
        flow.rtt_probe = (flow.smap.wire_end, now)

    def inject_empty_frame(self, flow: Flow, now: float, result: Result) -> None:
        """An empty frame (RFC 8548 §3.8 rekey reply), with our own retransmission."""
        assert flow.session is not None
        record = flow.smap.append(0, flow.session.seal(flow.smap.wire_end, b""), injected=True)
        result.transmit.extend(self.wire_pieces(flow, record.wire_start, record.wire))
        self._arm_injected(flow, now)

    def on_keys(self, flow: Flow, init2: bytes, now: float, result: Result) -> None:
        """The session exists: B sends Init2 at once; held local data is released, encrypted."""
        self.count("encrypted")
        assert flow.session is not None
        flow.aead_name = flow.session.aead.name
        flow.session_id = flow.session.session_id   # shared with the session, hex in status
        if init2:
            flow.smap.append(0, init2, injected=True)
            result.transmit.extend(self.wire_pieces(flow, 0, init2))
            self._arm_injected(flow, now)
        release_held(self, flow, now, result)

    def on_peer_ack(self, flow: Flow, now: float) -> None:
        """The peer's ACK advanced: RTT sample (Karn), timer of injected bytes (RFC 6298)."""
        probe = flow.rtt_probe
        if probe is not None and flow.smap.peer_wire_ack >= probe[0]:
            flow.rtt_sample(now - probe[1], self.config.min_rto, self.config.max_rto)
            flow.rtt_probe = None
        if flow.rtx_deadline is not None:
            if flow.smap.injected_pending:
                flow.rtx_deadline = now + flow.rto
            else:
                flow.rtx_deadline = None
                flow.rtx_count = 0

    def close(self, flow: Flow, now: float, result: Result) -> None:
        """A RST passed: linger, then forget."""
        flow.state = State.CLOSED
        flow.closed_at = now
        self._drop_held(flow, result)

    def check_closed(self, flow: Flow, now: float) -> None:
        """Both FINs acknowledged (the peer's by the local stack): linger, then forget."""
        smap = flow.smap
        if (flow.closed_at is None and flow.local_fin and flow.dl_fin_sent
                and flow.stack_rcv_ack >= flow.dl_sent
                and smap.fin_wire is not None and smap.peer_wire_ack > smap.fin_wire):
            flow.state = State.CLOSED
            flow.closed_at = now

    def abort(self, flow: Flow, reason: str, now: float, result: Result) -> None:
        """Abort the connection: RST to the peer and to the local stack (RFC 793 ABORT)."""
        self.count("aborts")
        self.count(f"aborts_{reason}")
        flow.abort_reason = reason
        result.verdict, result.data = Verdict.DROP, None
        if flow.state not in _HANDSHAKE_STATES:
            result.transmit.append(Transmit(flow.wire_packet(flow.wire_snd_next(), RST),
                                            Direction.OUTBOUND))
            result.transmit.append(Transmit(flow.local_packet(flow.dl_sent, RST),
                                            Direction.INBOUND))
        self._drop_held(flow, result)
        flow.state = State.ABORTED
        flow.closed_at = now
        flow.rtx_deadline = flow.dl_deadline = None
        flow.dl_buf = bytearray()
        flow.rx_partial = b""
        flow.rx.limit = 0

    # -- internals ------------------------------------------------------------------------

    def _drop_held(self, flow: Flow, result: Result) -> None:
        if flow.held:
            for packet_id, _ in flow.held:
                result.releases.append(Release(packet_id, None, False))
            flow.held = []

    def _bury(self, flow: Flow) -> None:
        """Linger over: free the flow's buffers and keys, keep only its 4-tuple (DESIGN.md §6)."""
        flow.state = State.TOMBSTONE
        flow.final_local_ack = flow.smap.wire_to_local_ack(flow.smap.peer_wire_ack)
        flow.final_wire_seq = flow.wire_snd_next()
        flow.final_wire_ack = flow.rx.next + (1 if flow.rx_fin_done else 0)
        flow.smap = SendMap()
        flow.rx = Reassembly(limit=0)
        flow.dl_buf = bytearray()
        flow.rx_partial = b""
        flow.handshake = flow.eno = flow.negotiated = None
        flow.session = None  # forward secrecy: keys go with the connection (RFC 8547 §5)
        flow.aead_idle_at = None
        flow.rtx_deadline = flow.dl_deadline = None

    def _answer_ended(self, flow: Flow, pkt: TCPPacket, outbound: bool,
                      result: Result) -> None:
        """Answer a segment of an ended connection as a plain TCP end would (RFC 9293).

        Only segments with ACK and without SYN or RST come here (others are dropped without
        an answer, RFC 9293 §3.10.7.4).  Never the segment itself: only engine-made,
        payload-free ACK or RST segments, each sent back toward the segment's sender.
        After an abort, and for a segment beyond the final point of a buried connection,
        nothing more can be delivered: a RST, as a TCP without a TCB answers (RFC 9293
        §3.10.7.1, ``<SEQ=SEG.ACK><CTL=RST>``), so the sender stops (its copy of our abort
        RST may have been lost).  In a buried connection that closed without an abort, a
        segment occupying sequence space at or below the final point its receiver
        acknowledged (the local stack's last data and FIN, which the peer acknowledged; or
        the peer's, which we acknowledged) is a retransmission whose sender missed the final
        ACK: it is acknowledged again with the known final numbers, as in TIME-WAIT (RFC 9293
        §3.10.7.4, "Acknowledge it").  A bare ACK at the final point gets no answer (ACKs are
        not acknowledged; no ACK loop with a stack in TIME-WAIT).
        """
        length = len(pkt.payload) + (1 if pkt.flags & FIN else 0)
        if flow.abort_reason or flow.state is not State.TOMBSTONE:
            beyond = 1
        elif outbound:
            final = (flow.local_isn + 1 + (flow.final_local_ack or 0)) & MASK32
            beyond = (pkt.seq + length - final) & MASK32
        else:
            final = (flow.peer_isn + 1 + (flow.final_wire_ack or 0)) & MASK32
            beyond = (pkt.seq + length - final) & MASK32
        if 0 < beyond < 1 << 31:
            self.count("ended_resets")
            if outbound:
                result.transmit.append(Transmit(
                    flow.local_packet((pkt.ack - flow.peer_isn - 1) & MASK32, RST),
                    Direction.INBOUND))
            else:
                result.transmit.append(Transmit(
                    flow.wire_packet((pkt.ack - flow.local_isn - 1) & MASK32, RST),
                    Direction.OUTBOUND))
            return
        if length == 0 and pkt.seq == final:
            return
        self.count("ended_acks")
        result.transmit.append(
            Transmit(flow.local_packet(flow.dl_sent, 0), Direction.INBOUND) if outbound else
            Transmit(flow.wire_packet(flow.final_wire_seq, 0), Direction.OUTBOUND))

    def _forget(self, flow: Flow | HalfOpen, result: Result, *, restore: bool = True) -> None:
        """Drop ``flow`` from the table, its held packets with it (dropped: never released
        unencrypted); an ended flow it stood in for comes back (unless ``restore`` is
        False: the flow is being replaced)."""
        self._drop_held(flow, result)
        if self._flows.get(flow.key) is flow:
            del self._flows[flow.key]
            if type(flow) is HalfOpen:
                self._half_open -= 1
            stale = self._live_stale(flow, self._now) if restore else None
            flow.stale = None
            if stale is not None:
                self._flows[flow.key] = stale
                stale.scheduled = None
                self._schedule(stale)

    def _fallback(self, flow: Flow, fallback: Fallback, result: Result) -> None:
        self.count("fallback")
        self.count(f"fallback_{fallback.reason}")
        self._forget(flow, result)
        result.verdict, result.plain = Verdict.ACCEPT, True

    def _plain(self, reason: str, result: Result | None = None) -> Result:
        """Leave the connection plain, counted as ``plain_<reason>``: the packet passes."""
        self.count("plain")
        self.count(f"plain_{reason}")
        if result is None:
            return Result(Verdict.ACCEPT, plain=True)
        result.verdict, result.plain = Verdict.ACCEPT, True
        return result

    def _required(self, pkt: TCPPacket, outbound: bool, result: Result) -> Result:
        """Policy ``require`` (engine/policy.py): a connection left plain is never handed to
        the kernel as plain, and is reset both ways (its packet dropped) where
        :func:`~tcpcryptd.engine.policy.resets` says, counted as ``require_resets``."""
        if result.plain and self.config.policy.require and (
                self.config.policy.of_packet(pkt, outbound) is Mode.REQUIRE):
            result.plain = False
            transmit = resets(pkt, outbound)
            if transmit:
                self.count("require_resets")
                result.verdict, result.data = Verdict.DROP, None
                result.transmit.extend(transmit)
        return result

    def _new_flow(self, pkt: TCPPacket, outbound: bool, now: float,
                  raw: bytes | None = None) -> Result:
        """A SYN on an untracked 4-tuple (``raw``: the packet as it arrived, else rebuilt)."""
        cfg = self.config
        if cfg.policy.of_packet(pkt, outbound) is Mode.SKIP:
            return self._plain("policy-skip")
        refusal = syn_refusal(cfg, pkt)
        if refusal is not None:
            return self._plain(refusal)
        if len(self._flows) >= cfg.max_flows:
            return self._plain("flow-limit")
        if outbound:
            flow = open_active(cfg, pkt, now)
            if not add_syn_option(flow, pkt):
                return self._plain("option-space")
        else:
            opened = open_half_open(cfg, pkt, pkt.to_bytes() if raw is None else bytes(raw),
                                    now)
            if isinstance(opened, Fallback):
                self.count("fallback")
                self.count(f"fallback_{opened.reason}")
                return Result(Verdict.ACCEPT, plain=True)
            if self._half_open >= cfg.max_half_open:
                # the SYN goes on untouched (no ENO answer: the connection is plain TCP,
                # RFC 8547 §4.6), as beyond max_flows
                return self._plain("half-open-limit")
            self._half_open += 1
            flow = opened
        self._flows[flow.key] = flow
        self._schedule(flow)
        return Result(Verdict.ACCEPT, pkt.to_bytes_incremental())

    def _outbound(self, flow: Flow, pkt: TCPPacket, packet_id: int, now: float,
                  result: Result) -> None:
        flags = pkt.flags
        if flags & SYN:
            retransmitted_syn = (pkt.seq == flow.local_isn and flow.role == "A"
                                 and flow.state in (State.SYN_SENT, State.NEGOTIATED))
            if not flags & ACK and not retransmitted_syn:
                # the stack opens a new connection on a tracked 4-tuple: whatever it kept of
                # the old one is gone (a socket in TIME-WAIT sends no SYN), so the old flow
                # is replaced outright, never mixed with the new one (RFC 9293 §3.10.7.4)
                self.count(f"replaced_{flow.state}")
                self._forget(flow, result, restore=False)
                new = self._new_flow(pkt, True, now)
                result.verdict, result.data, result.plain = new.verdict, new.data, new.plain
                return
            if retransmitted_syn and not flags & ACK:
                add_syn_option(flow, pkt)  # identical bytes on every retransmission
                flow.syn_sends += 1
            elif flow.closed_at is not None:
                # a SYN-ACK on an ended flow: the stack accepted a new connection that the
                # engine left plain (its SYN had no ENO), or repeats one of the old one
                if pkt.ack == (flow.peer_isn + 1) & MASK32:
                    self.count("drops_stale-syn-ack")
                    result.verdict = Verdict.DROP
                    return
                self.count(f"replaced_{flow.state}")
                self._forget(flow, result, restore=False)
                result.verdict, result.plain = Verdict.ACCEPT, True
                return
            elif pkt.ack != (flow.peer_isn + 1) & MASK32:
                # the stack answers a SYN the flow does not stand for (an older one on the
                # 4-tuple): never with this flow's ENO answer nor its numbers
                self.count("drops_stale-syn-ack")
                result.verdict = Verdict.DROP
                return
            elif flow.role == "B" and flags & ACK and flow.state is not State.SYN_RECEIVED:
                # a SYN-ACK retransmitted after the peer's ACK arrived: the stack missed that
                # ACK (local loss); same ENO bytes to the wire, and a fresh ACK to the stack
                add_syn_option(flow, pkt)
                flow.stack_seen_ack = None
                result.transmit.append(Transmit(flow.local_packet(flow.dl_sent, 0),
                                                Direction.INBOUND))
            elif flow.state is State.SYN_RECEIVED and flags & ACK:
                if not on_local_syn_ack(flow, pkt, now):
                    self._forget(flow, result)
                    self._plain("option-space", result)
                    return
            if len(pkt.payload):
                pkt.payload = b""   # no SYN data on an ENO flow (RFC 8547 §4.7), never plaintext
                self.count("drops_syn-data")
            result.verdict, result.data = Verdict.ACCEPT, pkt.to_bytes_incremental()
            return
        if flow.state in (State.SYN_SENT, State.SYN_RECEIVED):
            if flags & RST:
                # In SYN-SENT the stack sends RSTs only in answer to segments that do not
                # belong to its connection attempt (RFC 9293 §3.10.7.3); it gives up an
                # attempt silently.  In SYN-RECEIVED it drops the connection with a RST that
                # answers the SYN (ACK = the peer's ISN + 1) or starts at its own ISN + 1.
                if flow.state is State.SYN_RECEIVED and (
                        (flags & ACK and pkt.ack == (flow.peer_isn + 1) & MASK32)
                        or (flow.syn_sends and pkt.seq == (flow.local_isn + 1) & MASK32)):
                    self._forget(flow, result)
                result.verdict = Verdict.ACCEPT
            elif len(pkt.payload) or flags & FIN:
                self.count("drops_before-established")   # never plaintext on an ENO flow
                result.verdict = Verdict.DROP
            else:
                result.verdict = Verdict.ACCEPT
            return
        handle_outbound(self, flow, pkt, packet_id, now, result)

    def _inbound(self, flow: Flow, pkt: TCPPacket, now: float, result: Result) -> None:
        flags = pkt.flags
        if flags & SYN:
            if flags & RST:
                self.count("drops_syn-rst")
                result.verdict = Verdict.DROP
                return
            if flags & ACK:
                if flow.closed_at is not None:
                    self.count("drops_stale-syn-ack")   # an old duplicate: nothing to answer
                    result.verdict = Verdict.DROP
                    return
                if flow.state is State.SYN_SENT:
                    if pkt.ack != (flow.local_isn + 1) & MASK32:
                        # not an answer to our SYN: the stack resets it (RFC 9293 §3.10.7.3)
                        # and the flow waits for the real SYN-ACK
                        result.verdict = Verdict.ACCEPT
                        return
                    fallback = on_syn_ack(flow, pkt, now)
                    if fallback is not None:
                        self._fallback(flow, fallback, result)
                        return
                    flow.stack_seen_ack = 0
                    flow.stack_seen_window = flow.peer_window_field
                else:
                    clamp_mss(flow, pkt)
            elif flow.state is State.SYN_SENT:
                # simultaneous open (RFC 8547 §4.6: no ENO)
                self._forget(flow, result)
                self._fallback(flow, Fallback("simultaneous-open"), result)  # type: ignore[arg-type]
                return
            elif pkt.seq == flow.peer_isn and flow.role == "B":
                if flow.closed_at is not None:
                    # an old duplicate of the ended connection's SYN (no higher ISN: a
                    # TIME-WAIT stack would not take it either, RFC 9293 §3.10.7.4)
                    self.count("drops_old-syn")
                    result.verdict = Verdict.DROP
                    return
                clamp_mss(flow, pkt)   # a retransmitted or duplicated SYN: the stack answers
            elif flow.closed_at is not None or flow.state is State.SYN_RECEIVED:
                self._replace_inbound(flow, pkt, now, result)
                return
            else:
                # a SYN with another ISN on a synchronized connection: the stack answers it
                # with a challenge ACK (RFC 5961 §4), translated like any of its ACKs
                clamp_mss(flow, pkt)
            result.verdict, result.data = Verdict.ACCEPT, pkt.to_bytes_incremental()
            return
        if flow.state is State.SYN_SENT:
            if flags & RST:
                # RFC 9293 §3.10.7.3: in SYN-SENT only a RST whose ACK acknowledges our SYN
                # is acceptable; any other is dropped (the stack would drop it too), and the
                # flow must not be forgotten for it
                if not (flags & ACK and pkt.ack == (flow.local_isn + 1) & MASK32):
                    self.count("drops_rst-unacceptable")
                    result.verdict = Verdict.DROP
                    return
                self._forget(flow, result)
            result.verdict = Verdict.ACCEPT
            return
        if flow.state is State.SYN_RECEIVED:
            if flags & RST:
                self._syn_received_rst(flow, pkt, result)
                return
            fallback = on_first_ack(flow, pkt, now)
            if fallback is not None:
                self._fallback(flow, fallback, result)
                return
            if flow.state is State.SYN_RECEIVED:
                self.count("drops_before-ack")
                result.verdict = Verdict.DROP
                return
        handle_inbound(self, flow, pkt, now, result)

    # -- half-open records ---------------------------------------------------------------

    def _half_open_packet(self, record: HalfOpen, pkt: TCPPacket, raw: bytes, outbound: bool,
                          now: float, result: Result) -> bool:
        """A segment on a :class:`HalfOpen` record, handled as :meth:`_outbound` and
        :meth:`_inbound` handle it on a syn-received :class:`Flow`; False when the segment
        needs the flow itself (the peer's third segment, anything unusual): the caller
        promotes the record and runs the usual path.  A flood's retransmitted SYNs, RSTs
        and the stack's SYN-ACKs are answered from the record and never promote it."""
        if record.stale is not None:
            return False
        flags = pkt.flags
        if outbound:
            if flags & (SYN | ACK | RST) != SYN | ACK or pkt.ack != (record.peer_isn + 1) & MASK32:
                return False
            if not half_open_syn_ack(record, pkt, bytes(raw), now):
                self._forget(record, result)
                self._plain("option-space", result)
                return True
            if len(pkt.payload):
                pkt.payload = b""   # no SYN data on an ENO flow (RFC 8547 §4.7)
                self.count("drops_syn-data")
            result.verdict, result.data = Verdict.ACCEPT, pkt.to_bytes_incremental()
            return True
        if flags & SYN:
            if flags & RST:
                self.count("drops_syn-rst")
                result.verdict = Verdict.DROP
            elif flags & ACK or pkt.seq == record.peer_isn:
                clamp_mss(record, pkt)
                result.verdict, result.data = Verdict.ACCEPT, pkt.to_bytes_incremental()
            else:
                self._replace_inbound(record, pkt, now, result)  # type: ignore[arg-type]
            return True
        if flags & RST:
            self._syn_received_rst(record, pkt, result)
            return True
        return False

    def _syn_received_rst(self, flow: Flow | HalfOpen, pkt: TCPPacket, result: Result) -> None:
        """A RST before the peer's first ACK (a syn-received flow or its record).

        The stack's numbers are the wire's until then: it checks the RST against its own
        window.  Out of the window it is dropped here too; the flow is forgotten only for the
        RST at exactly the peer's ISN + 1 (which any stack takes); an in-window one may only
        make the stack challenge (RFC 5961 §3.2).
        """
        offset = (pkt.seq - flow.peer_isn - 1) & MASK32
        window = flow.stack_window if flow.syn_sends else 0xFFFF
        if offset >= max(window, 1):
            self.count("drops_rst-out-of-window")
            result.verdict = Verdict.DROP
            return
        if offset == 0:
            self._forget(flow, result)
        result.verdict = Verdict.ACCEPT

    def _promote(self, record: HalfOpen) -> Flow:
        """The record's :class:`Flow` (:func:`~tcpcryptd.engine.handshake.promote`), in the
        record's place in the table if it has one there; the caller schedules it."""
        flow = promote(self.config, record)
        if self._flows.get(record.key) is record:
            self._flows[record.key] = flow
            self._half_open -= 1
            record.stale = None
            record.scheduled = None     # its heap entry is dead: the flow gets its own
        return flow

    # -- 4-tuple reuse (RFC 9293 §3.10.7.4) -------------------------------------------------

    def _replace_inbound(self, flow: Flow, pkt: TCPPacket, now: float, result: Result) -> None:
        """A SYN with a new ISN on a 4-tuple whose flow ended or is still a half-open one.

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
            self.count(f"replaced_{flow.state}")
        self._forget(flow, result, restore=False)
        new = self._new_flow(pkt, False, now)
        result.verdict, result.data, result.plain = new.verdict, new.data, new.plain
        created = self._flows.get(flow.key)
        if created is not None:
            created.stale = stale
        elif stale is not None:
            # the new SYN stays plain: the ended flow stays until the stack's SYN-ACK shows
            # it took the SYN (then the flow goes, see _outbound), for its TIME-WAIT answers
            self._flows[flow.key] = stale
            stale.scheduled = None
            result.plain = False

    def _live_stale(self, flow: Flow, now: float) -> Flow | None:
        """``flow.stale`` aged to ``now`` (it is out of the table: its timers do not run)."""
        stale = flow.stale
        if stale is None:
            return None
        cfg = self.config
        assert stale.closed_at is not None
        if now >= stale.closed_at + cfg.linger + cfg.tombstone:
            flow.stale = None
            return None
        if stale.state is not State.TOMBSTONE and now >= stale.closed_at + cfg.linger:
            self._bury(stale)
        return stale

    def _route_stale(self, flow: Flow, pkt: TCPPacket, outbound: bool, now: float) -> Flow:
        """Which connection a segment belongs to while the stack has not answered a new SYN
        (``flow``, syn-received) that arrived on the 4-tuple of an ended one (``flow.stale``).
        """
        stale = self._live_stale(flow, now)
        if stale is None:
            return flow
        flags = pkt.flags
        if outbound:
            if flags & SYN and flags & ACK and pkt.ack == (flow.peer_isn + 1) & MASK32:
                # the stack took the new SYN: the old connection is gone for good
                self.count(f"replaced_{stale.state}")
                flow.stale = None
                return flow
            if flags & RST and flags & ACK and pkt.ack == (flow.peer_isn + 1) & MASK32:
                return flow     # the stack refuses the new SYN
            if flags & SYN and not flags & ACK:
                return flow     # the stack opens a connection itself: a replacement again
            return stale        # TIME-WAIT ACKs and the like: the old connection's numbers
        if flags & SYN and not flags & ACK:
            return flow
        if flags & RST and not self._ended_rst_exact(stale, pkt.seq):
            return flow
        return stale

    def _ended_rst_exact(self, flow: Flow, seq: int) -> bool:
        """A RST exactly at the final receive point of an ended flow (RFC 5961 §3.2)."""
        if flow.state is State.CLOSED:
            return rst_position(flow, seq) == RST_EXACT
        if flow.state is State.TOMBSTONE and not flow.abort_reason:
            return seq == (flow.peer_isn + 1 + (flow.final_wire_ack or 0)) & MASK32
        return False

    def _ended(self, flow: Flow, pkt: TCPPacket, outbound: bool, packet_id: int, now: float,
               result: Result) -> None:
        """A non-SYN segment of an ended connection (closed, aborted or tombstone).

        A closed flow lingers with its full state: both ways are translated as before
        (every segment the stack sends leaves in the wire sequence space).  After an abort
        or once buried, nothing of it may pass, least of all plaintext, with two exceptions
        that keep plain TCP's TIME-WAIT behaviour: the stack's bare ACK at its final point
        (its TIME-WAIT answer to a SYN it did not take) leaves with the final wire numbers,
        and the peer's RST exactly at the final wire receive point reaches the stack at its
        own (RFC 9293 §3.10.7.4; a SYN-SENT peer sends it on receiving that ACK, so a new
        connection on the 4-tuple does not wait for TIME-WAIT to run out).
        """
        if flow.state is State.CLOSED:
            if outbound:
                handle_outbound(self, flow, pkt, packet_id, now, result)
                if result.verdict is Verdict.ACCEPT:
                    self.count("ended_translated")
            else:
                handle_inbound(self, flow, pkt, now, result)
            return
        result.verdict = Verdict.DROP
        flags = pkt.flags
        tombstone = flow.state is State.TOMBSTONE and not flow.abort_reason
        if tombstone and flags & (RST | FIN | ACK) == ACK and not len(pkt.payload):
            if outbound and pkt.seq == (flow.local_isn + 1 + (flow.final_local_ack or 0)) & MASK32:
                pkt.seq = (flow.local_isn + 1 + flow.final_wire_seq) & MASK32
                pkt.ack = (flow.peer_isn + 1 + (flow.final_wire_ack or 0)) & MASK32
                if len(pkt.options) > (12 if flow.ts_ok else 0):
                    pkt.options = tcp_options.replace_sack(pkt.options, [])
                self.count("ended_translated")
                result.verdict, result.data = Verdict.ACCEPT, pkt.to_bytes_incremental()
                return
        if tombstone and flags & RST and not outbound and self._ended_rst_exact(flow, pkt.seq):
            self.count("resets_accepted")
            pkt.seq = (flow.peer_isn + 1 + flow.dl_sent) & MASK32
            if flags & ACK:
                pkt.ack = (flow.local_isn + 1 + (flow.final_local_ack or 0)) & MASK32
            if len(pkt.options) > (12 if flow.ts_ok else 0):
                pkt.options = tcp_options.replace_sack(pkt.options, [])
            pkt.flags &= ~(FIN | PSH | URG)
            pkt.payload = b""
            result.verdict, result.data = Verdict.ACCEPT, pkt.to_bytes()
            return
        self.count(f"drops_{flow.state}")
        if flags & (SYN | RST | ACK) == ACK:
            self._answer_ended(flow, pkt, outbound, result)

    def _deadline(self, flow: Flow) -> float:
        cfg = self.config
        if flow.state is State.TOMBSTONE:
            end = flow.closed_at + cfg.linger + cfg.tombstone  # type: ignore[operator]
        elif flow.closed_at is not None:
            end = flow.closed_at + cfg.linger
        elif flow.state in _HANDSHAKE_STATES or flow.state is State.KEYING:
            end = flow.created + cfg.handshake_timeout
        else:
            end = flow.last_activity + cfg.idle_timeout
        for when in (flow.rtx_deadline, flow.dl_deadline, flow.aead_idle_at):
            if when is not None and when < end:
                end = when
        return end

    def _schedule(self, flow: Flow) -> None:
        release = flow.aead_idle_at
        if (release is None and flow.session is not None and self.config.aead_idle_release > 0
                and flow.session.aead_built):
            # keys made or rebuilt since the last release: release them when the flow idles
            release = flow.aead_idle_at = self._now + self.config.aead_idle_release
        scheduled = flow.scheduled
        if scheduled is not None:
            # a deadline only moves earlier through these four; skip the rest on the hot path
            rtx, redeliver, closed = flow.rtx_deadline, flow.dl_deadline, flow.closed_at
            if ((rtx is None or rtx >= scheduled) and (redeliver is None or redeliver >= scheduled)
                    and (closed is None or closed + self.config.linger >= scheduled)
                    and (release is None or release >= scheduled)):
                return
        when = self._deadline(flow)
        if scheduled is None or when < scheduled:
            flow.scheduled = when
            timers = self._timers
            heapq.heappush(timers, (when, next(self._tiebreak), flow))
            if len(timers) > 3 * len(self._flows) // 2 + 256:
                self._compact_timers()

    def _compact_timers(self) -> None:
        """Drop the heap entries superseded by an earlier deadline (each ~120 B; DESIGN.md §6
        invariant 6): every flow keeps one; at most 1.5 per flow, amortised O(1) per push."""
        flows = self._flows
        self._timers = [entry for entry in self._timers
                        if entry[2].scheduled == entry[0] and flows.get(entry[2].key) is entry[2]]
        heapq.heapify(self._timers)

    def _on_timer(self, flow: Flow, now: float, result: Result) -> None:
        cfg = self.config
        if flow.closed_at is not None:
            if now >= flow.closed_at + cfg.linger + cfg.tombstone:
                self._forget(flow, result)
                return
            if now >= flow.closed_at + cfg.linger:
                self._bury(flow)
                return
        elif flow.state in _HANDSHAKE_STATES:
            if now >= flow.created + cfg.handshake_timeout:
                self.count("expired_handshake")
                self._forget(flow, result)
                return
        elif flow.state is State.KEYING:
            if now >= flow.created + cfg.handshake_timeout:
                # encryption is on but no keys came: nothing may pass in plaintext, so abort
                self.abort(flow, "init-timeout", now, result)
                return
        elif now >= flow.last_activity + cfg.idle_timeout:
            self.abort(flow, "idle", now, result)
            return
        if flow.rtx_deadline is not None and now >= flow.rtx_deadline:
            self._retransmit_injected(flow, now, result)
        if flow.dl_deadline is not None and now >= flow.dl_deadline:
            self.redeliver(flow, now, result)
        if flow.aead_idle_at is not None and now >= flow.aead_idle_at:
            self._release_aead(flow, now)

    def _release_aead(self, flow: Flow, now: float) -> None:
        """An idle flow keeps its raw traffic keys only (``EngineConfig.aead_idle_release``).

        The timer is armed when keys are made or rebuilt and not moved by each packet; when
        it fires for a flow that saw packets since, it is armed again from the last one.
        """
        session = flow.session
        due = flow.last_activity + self.config.aead_idle_release
        if session is None:
            flow.aead_idle_at = None
        elif now >= due:
            session.release_aead()
            self.count("aead_released")
            flow.aead_idle_at = None
        else:
            flow.aead_idle_at = due

    def _retransmit_injected(self, flow: Flow, now: float, result: Result) -> None:
        """RFC 6298 §5 for bytes the local stack never sent: resend, back off, give up."""
        smap = flow.smap
        records = smap.injected_unacked()
        if not records:
            flow.rtx_deadline = None
            return
        flow.rtx_count += 1
        if flow.rtx_count > self.config.max_retransmits:
            self.abort(flow, "retransmit-limit", now, result)
            return
        self.count("retransmits")
        for record in records:
            lo = max(record.wire_start, smap.peer_wire_ack)
            fin = smap.fin_wire is not None and record.wire_end == smap.fin_wire
            result.transmit.extend(self.wire_pieces(flow, lo, record.wire[lo - record.wire_start:],
                                                    fin=fin))
        flow.rto = min(flow.rto * 2, self.config.max_rto)
        flow.rtx_deadline = now + flow.rto
        flow.rtt_probe = None

    def redeliver(self, flow: Flow, now: float, result: Result, *,
                  first_only: bool = False) -> None:
        """Plaintext the stack has not acknowledged: send it again (timer or duplicate ACKs)."""
        if flow.stack_rcv_ack >= flow.dl_sent:
            flow.dl_deadline = None
            flow.dl_backoff = 0
            deliver_pending(self, flow, now, None, result)
            return
        data_end = min(flow.dl_sent, flow.dl_base + len(flow.dl_buf))
        seg = max(flow.local_mss - (12 if flow.ts_ok else 0), 64)
        off = flow.stack_rcv_ack
        while True:
            piece_end = min(off + seg, data_end)
            fin = flow.dl_fin_sent and piece_end == data_end
            data = bytes(flow.dl_buf[off - flow.dl_base:piece_end - flow.dl_base])
            if data or fin:
                urg_ptr = flow.urgent_pointer(off)
                result.transmit.append(Transmit(flow.local_packet(
                    off, PSH | (FIN if fin else 0) | (URG if urg_ptr else 0), data, urg_ptr),
                    Direction.INBOUND))
            off = piece_end
            if off >= data_end or first_only:
                break
        if not first_only:
            flow.dl_backoff = min(flow.dl_backoff + 1, 6)
        flow.dl_deadline = now + self.config.local_rto * (1 << flow.dl_backoff)
