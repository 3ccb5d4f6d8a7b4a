"""The end of a connection: close, abort, linger, tombstone, and answers for ended ones.

* :func:`close` (a RST passed) and :func:`check_closed` (both FINs acknowledged) start the
  TIME-WAIT-like linger (``EngineConfig.linger``): both ways are still translated.
* :func:`abort` is RFC 9293's ABORT on both sides: a RST to the peer and one to the local
  stack, buffers dropped; reported as an :class:`~tcpcryptd.engine.events.Aborted` event.
  :func:`fail` maps an error raised while handling a packet to its abort reason.
* :func:`bury`: once the linger is over only the 4-tuple and the final numbers stay (the
  tombstone, ``EngineConfig.tombstone``); keys and buffers go (RFC 8547 §5: forward secrecy).
* :func:`ended` and :func:`answer_ended`: what an aborted or buried connection does with a
  segment (drop it, answer as a plain TCP end would, RFC 9293 §3.10.7).
* 4-tuple reuse (RFC 9293 §3.10.7.4): :func:`route_stale` decides whether a segment belongs
  to a new syn-received flow or to the ended one it replaces.
* :func:`rst_position`: RFC 5961 §3.2 for a RST, in the peer's wire sequence space.
"""

from __future__ import annotations

from tcpcryptd.core.errors import (
    CipherMismatchError,
    FrameAuthError,
    FrameError,
    InitMessageError,
    KeyAgreementError,
    TcpcryptError,
)
from tcpcryptd.engine.actions import Direction, Release, Result, Transmit, Verdict
from tcpcryptd.engine.context import Context
from tcpcryptd.engine.events import Aborted
from tcpcryptd.engine.flow import HANDSHAKE_STATES, MASK32, Flow, FlowAbort, HalfOpen, State, unwrap
from tcpcryptd.engine.reassembly import Reassembly
from tcpcryptd.engine.sendmap import SendMap
from tcpcryptd.packet import options as tcp_options
from tcpcryptd.packet.tcp import ACK, FIN, PSH, RST, SYN, URG, PacketError, TCPPacket

#: :func:`rst_position`: the RST sits exactly at the receive point, inside the receive
#: window but not exactly there, or outside the window (RFC 5961 §3.2)
RST_EXACT, RST_IN_WINDOW, RST_OUTSIDE = 0, 1, 2


def rst_position(flow: Flow, seq: int) -> int:
    """Where an inbound RST's sequence number lies in the peer's *wire* stream.

    RCV.NXT is what a plain TCP at the engine's place would have acknowledged: every
    contiguous wire byte taken (:attr:`Reassembly.next`), plus the peer's FIN once it was
    verified after its FINp frame.  As Linux does (``tcp_reset_check``), a RST one below
    that point is also exact once the peer's FIN was taken (the peer may have sent the RST
    before it saw the FIN acknowledged).  RCV.WND is the window the engine advertises.
    """
    nxt = flow.rx.next
    fin = 1 if flow.rx_fin_done else 0
    offset = unwrap(seq, flow.peer_isn, nxt)
    if offset == nxt + fin or (fin and offset == nxt):
        return RST_EXACT
    window = flow.window_field() << flow.local_wscale
    if nxt + fin <= offset < nxt + fin + window:
        return RST_IN_WINDOW
    return RST_OUTSIDE


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


def fail(ctx: Context, flow: Flow, error: Exception, now: float, result: Result) -> None:
    """An error while handling a packet of ``flow``: abort it (or drop a bad packet)."""
    if isinstance(error, FlowAbort):
        abort(ctx, flow, error.reason, now, result)
    elif isinstance(error, TcpcryptError):
        abort(ctx, flow, _abort_reason(error), now, result)
    elif isinstance(error, PacketError):
        ctx.count("drops_bad-packet")
        result.verdict, result.data = Verdict.DROP, None
    else:   # a bug: the connection is aborted, never passed on in plaintext
        abort(ctx, flow, "internal-error", now, result)
        flow.abort_reason = f"internal-error: {type(error).__name__}: {error}"


def close(flow: Flow, now: float, result: Result) -> None:
    """A RST passed: linger, then forget."""
    flow.state = State.CLOSED
    flow.closed_at = now
    drop_held(flow, result)


def check_closed(flow: Flow, now: float) -> None:
    """Both FINs acknowledged (the peer's by the local stack): linger, then forget."""
    smap = flow.smap
    if (flow.closed_at is None and flow.local_fin and flow.dl_fin_sent
            and flow.stack_rcv_ack >= flow.dl_sent
            and smap.fin_wire is not None and smap.peer_wire_ack > smap.fin_wire):
        flow.state = State.CLOSED
        flow.closed_at = now


def abort(ctx: Context, flow: Flow, reason: str, now: float, result: Result) -> None:
    """Abort the connection: RST to the peer and to the local stack (RFC 793 ABORT)."""
    ctx.count("aborts")
    ctx.count(f"aborts_{reason}")
    local, remote = flow.addresses()
    result.events.append(Aborted(local, remote, reason))
    flow.abort_reason = reason
    result.verdict, result.data = Verdict.DROP, None
    if flow.state not in HANDSHAKE_STATES:
        result.transmit.append(Transmit(flow.wire_packet(flow.wire_snd_next(), RST),
                                        Direction.OUTBOUND))
        result.transmit.append(Transmit(flow.local_packet(flow.dl_sent, RST),
                                        Direction.INBOUND))
    drop_held(flow, result)
    flow.state = State.ABORTED
    flow.closed_at = now
    flow.rtx_deadline = flow.dl_deadline = None
    flow.dl_buf = bytearray()
    flow.rx_partial = b""
    flow.rx.limit = 0


def drop_held(flow: Flow | HalfOpen, result: Result) -> None:
    """The packets ``flow`` holds are dropped (never released unencrypted)."""
    if flow.held:
        for packet_id, _ in flow.held:
            result.releases.append(Release(packet_id, None, False))
        flow.held = ()


def bury(flow: Flow) -> None:
    """Linger over: free the flow's buffers and keys, keep only its 4-tuple and the final
    numbers its answers need (docs/ARCHITECTURE.md "Life of a flow")."""
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


def answer_ended(ctx: Context, flow: Flow, pkt: TCPPacket, outbound: bool,
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
        ctx.count("ended_resets")
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
    ctx.count("ended_acks")
    result.transmit.append(
        Transmit(flow.local_packet(flow.dl_sent, 0), Direction.INBOUND) if outbound else
        Transmit(flow.wire_packet(flow.final_wire_seq, 0), Direction.OUTBOUND))


def live_stale(ctx: Context, flow: Flow | HalfOpen, now: float) -> Flow | None:
    """``flow.stale`` aged to ``now`` (it is out of the table: its timers do not run)."""
    stale = flow.stale
    if stale is None:
        return None
    cfg = ctx.config
    assert stale.closed_at is not None
    if now >= stale.closed_at + cfg.linger + cfg.tombstone:
        flow.stale = None
        return None
    if stale.state is not State.TOMBSTONE and now >= stale.closed_at + cfg.linger:
        bury(stale)
    return stale


def route_stale(ctx: Context, flow: Flow, pkt: TCPPacket, outbound: bool, now: float) -> Flow:
    """Which connection a segment belongs to while the stack has not answered a new SYN
    (``flow``, syn-received) that arrived on the 4-tuple of an ended one (``flow.stale``).
    """
    stale = live_stale(ctx, flow, now)
    if stale is None:
        return flow
    flags = pkt.flags
    if outbound:
        if flags & SYN and flags & ACK and pkt.ack == (flow.peer_isn + 1) & MASK32:
            # the stack took the new SYN: the old connection is gone for good
            ctx.count(f"replaced_{stale.state}")
            flow.stale = None
            return flow
        if flags & RST and flags & ACK and pkt.ack == (flow.peer_isn + 1) & MASK32:
            return flow     # the stack refuses the new SYN
        if flags & SYN and not flags & ACK:
            return flow     # the stack opens a connection itself: a replacement again
        return stale        # TIME-WAIT ACKs and the like: the old connection's numbers
    if flags & SYN and not flags & ACK:
        return flow
    if flags & RST and not _ended_rst_exact(stale, pkt.seq):
        return flow
    return stale


def _ended_rst_exact(flow: Flow, seq: int) -> bool:
    """A RST exactly at the final receive point of an ended flow (RFC 5961 §3.2)."""
    if flow.state is State.CLOSED:
        return rst_position(flow, seq) == RST_EXACT
    if flow.state is State.TOMBSTONE and not flow.abort_reason:
        return seq == (flow.peer_isn + 1 + (flow.final_wire_ack or 0)) & MASK32
    return False


def ended(ctx: Context, flow: Flow, pkt: TCPPacket, outbound: bool, result: Result) -> None:
    """A non-SYN segment of an aborted or buried connection.

    (A closed flow lingers with its full state: the engine translates both ways as before,
    every segment the stack sends leaves in the wire sequence space.)  After an abort or
    once buried, nothing of it may pass, least of all plaintext, with two exceptions that
    keep plain TCP's TIME-WAIT behaviour: the stack's bare ACK at its final point (its
    TIME-WAIT answer to a SYN it did not take) leaves with the final wire numbers, and the
    peer's RST exactly at the final wire receive point reaches the stack at its own (RFC
    9293 §3.10.7.4; a SYN-SENT peer sends it on receiving that ACK, so a new connection on
    the 4-tuple does not wait for TIME-WAIT to run out).
    """
    result.verdict = Verdict.DROP
    flags = pkt.flags
    tombstone = flow.state is State.TOMBSTONE and not flow.abort_reason
    if tombstone and flags & (RST | FIN | ACK) == ACK and not len(pkt.payload):
        if outbound and pkt.seq == (flow.local_isn + 1 + (flow.final_local_ack or 0)) & MASK32:
            pkt.seq = (flow.local_isn + 1 + flow.final_wire_seq) & MASK32
            pkt.ack = (flow.peer_isn + 1 + (flow.final_wire_ack or 0)) & MASK32
            if len(pkt.options) > (12 if flow.ts_ok else 0):
                pkt.options = tcp_options.replace_sack(pkt.options, [])
            ctx.count("ended_translated")
            result.verdict, result.data = Verdict.ACCEPT, pkt.to_bytes_incremental()
            return
    if tombstone and flags & RST and not outbound and _ended_rst_exact(flow, pkt.seq):
        ctx.count("resets_accepted")
        pkt.seq = (flow.peer_isn + 1 + flow.dl_sent) & MASK32
        if flags & ACK:
            pkt.ack = (flow.local_isn + 1 + (flow.final_local_ack or 0)) & MASK32
        if len(pkt.options) > (12 if flow.ts_ok else 0):
            pkt.options = tcp_options.replace_sack(pkt.options, [])
        pkt.flags &= ~(FIN | PSH | URG)
        pkt.payload = b""
        result.verdict, result.data = Verdict.ACCEPT, pkt.to_bytes()
        return
    ctx.count(f"drops_{flow.state}")
    if flags & (SYN | RST | ACK) == ACK:
        answer_ended(ctx, flow, pkt, outbound, result)
