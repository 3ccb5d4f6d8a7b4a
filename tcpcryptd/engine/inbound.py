"""Inbound path: wire -> local stack (docs/ARCHITECTURE.md "Inbound", RFC 8548 §3.6-3.8, §4.2).

For every non-SYN segment from the peer on an ENO flow:

* its ACK/SACK describe our outbound wire stream: translated to local through the send map
  (an ACK inside a frame counts up to the frame's local start; progress over injected bytes
  only is absorbed), timers of injected bytes advance;
* its payload goes into the wire-space :class:`~tcpcryptd.engine.reassembly.Reassembly`
  (out of order, duplicates, overlaps, any boundaries); the contiguous bytes feed first the
  peer's Init message, then the frame parser: frames are verified and decrypted strictly in
  order and only whole verified frames' plaintext is queued for the local stack (local
  offsets; local seq = peer ISN + 1 + offset);
* the plaintext goes to the stack as its window allows, in this very packet (rewritten) and
  in engine-made packets, kept until the stack ACKs it and resent on a timer
  (:mod:`~tcpcryptd.engine.delivery`);
* the ACK rule is :meth:`~tcpcryptd.engine.flow.Flow.wire_ack_offset`: the engine itself
  ACKs the peer at once when bytes were taken but nothing reached the stack (Init, partial
  frame, closed local window), and answers a gap with a duplicate ACK carrying SACK blocks in
  wire space, so the peer's fast retransmit works;
* a segment with nothing new for the stack (no data, no ACK progress, same window, not a
  genuine duplicate ACK) is dropped, never shown as a spurious duplicate ACK;
* :func:`fast_inbound` is the same path for the segments of a bulk transfer -- pure ACKs
  and in-order segments carrying exactly one whole frame -- read with one ``struct`` call;
  it produces the same bytes and state as :func:`handle_inbound` (tested by running the
  simulation both ways) and declines everything else before changing anything;
* FIN: a TCP FIN must sit right after a verified FINp frame, else abort; the FINp frame
  delivers the FIN to the stack.  URGp frames set URG and the urgent pointer toward the
  stack.  A RST cannot be authenticated (RFC 8548 §3.7, §8): :func:`handle_rst` applies
  RFC 5961 §3.2 to its real sequence number in wire space
  (:func:`~tcpcryptd.engine.closing.rst_position`; exact: reset; in the window:
  challenge ACK; outside: dropped), so an encrypted connection is no easier to reset than a
  plain one.
"""

from __future__ import annotations

from tcpcryptd.core.frame import (
    CONTROL_REKEY,
    FRAME_OVERHEAD,
    HEADER_LEN,
    MAX_CLEN,
    MIN_CLEN,
    whole_frames,
)
from tcpcryptd.engine.actions import Direction, Result, Verdict
from tcpcryptd.engine.closing import RST_IN_WINDOW, RST_OUTSIDE, check_closed, close, rst_position
from tcpcryptd.engine.context import Context
from tcpcryptd.engine.delivery import MAX_DELIVERY, deliver_pending, local_sack, to_stack_header
from tcpcryptd.engine.flow import (
    MASK32,
    TS_LAYOUT,
    Flow,
    FlowAbort,
    packet_tsval,
    segment_shape,
    ts_newer,
    unwrap,
)
from tcpcryptd.engine.keying import consume_init, keys_made
from tcpcryptd.engine.outbound import release_held
from tcpcryptd.engine.reassembly import disagrees
from tcpcryptd.engine.rekey import on_rekey_frame
from tcpcryptd.engine.timers import on_peer_ack
from tcpcryptd.packet import options as tcp_options
from tcpcryptd.packet.tcp import ACK, FIN, PSH, RST, URG, TCPPacket, rewrite_header, rewrite_segment

#: the largest frame on the wire: header and the largest clen (RFC 8548 §4.2)
_MAX_FRAME_WIRE = HEADER_LEN + MAX_CLEN

def note_peer(flow: Flow, tsval: int | None, ttl: int, df: bool, tos: int,
              window: int) -> None:
    """Remember the peer's TSval, TTL, window (less frame overhead) for engine-made packets."""
    if tsval is not None and ts_newer(tsval, flow.peer_tsval):
        flow.peer_tsval = tsval
    flow.in_ttl, flow.in_df, flow.in_tos = ttl, df, tos
    # the peer's window counts wire bytes; leave room for frame overhead (~1.6% + a header)
    window <<= flow.peer_wscale
    window = max(0, window - (window >> 6) - 24)
    flow.peer_window_field = min(window >> flow.peer_wscale, 0xFFFF)


def _consume_frames(ctx: Context, flow: Flow, chunk: bytes | memoryview, now: float,
                    result: Result) -> None:
    """Verify and decrypt the whole frames now contiguous (RFC 8548 §4.2), strictly in order."""
    session = flow.session
    assert session is not None
    partial = flow.rx_partial
    data: bytes | bytearray | memoryview = chunk
    if partial:
        partial += chunk
        data = partial
    pos, total = 0, len(data)
    if flow.rx_finp and total >= HEADER_LEN:
        raise FlowAbort("data-after-finp")   # nothing may follow the FINp frame (§3.7)
    for start, length in whole_frames(data):
        generation = session.local_generation
        frame = session.open(flow.rx_frame_offset, data[start:start + length])
        flow.rx_frame_offset += length
        pos = start + length
        if frame.urgent is not None:
            flow.rx_urgent = flow.dl_base + len(flow.dl_buf) + frame.urgent
        if frame.data:
            flow.dl_buf += frame.data
        if frame.fin:
            flow.rx_finp = True
        if frame.rekey:
            on_rekey_frame(ctx, flow, frame, session.local_generation > generation, now, result)
        if flow.rx_finp and total - pos >= HEADER_LEN:
            raise FlowAbort("data-after-finp")
    if partial:
        del partial[:pos]
    elif pos < total:
        flow.rx_partial = bytearray(data[pos:])


def _consume(ctx: Context, flow: Flow, chunk: bytes | memoryview, now: float,
             result: Result) -> None:
    if flow.rx_fin_done:
        raise FlowAbort("data-after-fin")
    if not flow.rx_init_done:
        init2, chunk = consume_init(ctx, flow, chunk)
        if not flow.rx_init_done:
            return
        keys_made(ctx, flow, init2, now, result)
        release_held(ctx, flow, now, result)
    if chunk:
        _consume_frames(ctx, flow, chunk, now, result)


def _check_fin(flow: Flow) -> None:
    """A TCP FIN must follow a verified FINp frame directly (RFC 8548 §3.7), else abort."""
    fin_at = flow.rx_fin_wire
    if fin_at is None or flow.rx_fin_done or flow.rx.next < fin_at:
        return
    if (flow.rx.next == fin_at and flow.rx_finp and not flow.rx_partial
            and flow.rx_frame_offset == fin_at):
        flow.rx_fin_done = True
        return
    raise FlowAbort("fin-without-finp")


def _challenge_ack(ctx: Context, flow: Flow, now: float, result: Result) -> None:
    """The engine's ACK in answer to an unacceptable segment, at most one per flow per
    ``EngineConfig.challenge_ack_interval`` (RFC 5961 §7)."""
    last = flow.challenge_at
    if last is None or now - last >= ctx.config.challenge_ack_interval or now < last:
        flow.challenge_at = now
        ctx.count("challenge_acks")
        result.transmit.append(flow.engine_ack())


def handle_rst(ctx: Context, flow: Flow, pkt: TCPPacket, now: float, result: Result) -> None:
    """An inbound RST (or RST|ACK) on a synchronized ENO flow: RFC 5961 §3.2 in wire space.

    A RST cannot be authenticated (RFC 8548 §3.7, §8: tcpcrypt leaves an off-path attacker
    exactly the denial of service it has against plain TCP, and no more).  So the engine
    applies the checks a plain TCP applies to the *real* sequence number, in the wire
    sequence space the peer and any attacker see:

    * exactly at RCV.NXT (:func:`rst_position`): the connection is reset.  The RST goes to
      the stack at the stack's own receive point (``dl_sent``: everything the engine passed
      on), so the stack's RFC 5961 check accepts it too, and its ACK field is translated;
    * inside the receive window but not exact: dropped, and the engine itself sends the
      challenge ACK (RFC 5961 §3.2) in wire space, at most one per flow per
      ``EngineConfig.challenge_ack_interval`` (RFC 5961 §7: challenge ACKs are rate
      limited).  A genuine peer answers it with a RST at the acknowledged number;
    * outside the window: dropped silently (RFC 5961 §3.2), counted.

    Why the engine decides rather than translating the number for the stack to check:
    between the wire and the stack there is no sequence-preserving map for a RST.  Wire
    offsets inside a frame not yet whole, Init bytes and frame headers have no local
    counterpart, and verified plaintext the stack had no room for lies beyond the stack's
    RCV.NXT although the peer sees it acknowledged.  Any translation would widen the set of
    numbers that reset the connection (everything that maps onto the stack's RCV.NXT) or
    reset on numbers a plain TCP at the engine's place would challenge.  Judged in wire
    space, exactly one sequence number resets, as in plain TCP, and nothing an unverified
    RST carries (window, timestamps) changes the engine's state unless it is exact.
    """
    position = rst_position(flow, pkt.seq)
    if position == RST_OUTSIDE:
        ctx.count("drops_rst-out-of-window")
        result.verdict = Verdict.DROP
        return
    if position == RST_IN_WINDOW:
        ctx.count("drops_rst-in-window")
        result.verdict = Verdict.DROP
        _challenge_ack(ctx, flow, now, result)
        return
    ctx.count("resets_accepted")
    flow.packets_in += 1
    smap = flow.smap
    pkt.seq = (flow.peer_isn + 1 + flow.dl_sent) & MASK32
    if pkt.flags & ACK:
        # the ACK field only: the RST keeps its own TSval (the stack's PAWS check sees it)
        pkt.ack = (flow.local_isn + 1 + smap.wire_to_local_ack(
            unwrap(pkt.ack, flow.local_isn, smap.peer_wire_ack))) & MASK32
        if len(pkt.options) > (12 if flow.ts_ok else 0):
            pkt.options = tcp_options.replace_sack(pkt.options, [])
    pkt.flags &= ~(FIN | PSH | URG)
    pkt.urg_ptr = 0
    pkt.payload = b""
    result.verdict, result.data = Verdict.ACCEPT, pkt.to_bytes()
    close(flow, now, result)


def handle_inbound(ctx: Context, flow: Flow, pkt: TCPPacket, now: float, result: Result) -> None:
    """A non-SYN segment from the peer on an ENO flow."""
    flags = pkt.flags
    if flags & RST:
        handle_rst(ctx, flow, pkt, now, result)
        return
    note_peer(flow, packet_tsval(pkt) if flow.ts_ok else None, pkt.ttl, pkt.df, pkt.tos,
              pkt.window)
    flow.send_eno = False  # a non-SYN segment arrived (RFC 8547 §4.6)
    flow.packets_in += 1
    smap = flow.smap
    if not flags & ACK:
        ctx.count("drops_no-ack")
        result.verdict = Verdict.DROP
        return
    prev_ack = smap.peer_wire_ack
    wire_ack = unwrap(pkt.ack, flow.local_isn, prev_ack)
    if wire_ack > flow.wire_snd_next():
        # RFC 9293 §3.10.7.4: answer with an ACK and drop; rate limited as RFC 5961 §7
        # asks, or a forged segment the peer then acknowledges starts an endless exchange
        # (the peer answers our ACK, below its receive point, with an ACK of its own)
        ctx.count("drops_ack-of-unsent")
        result.verdict = Verdict.DROP
        _challenge_ack(ctx, flow, now, result)
        return
    local_ack = smap.ack(wire_ack)
    if wire_ack > prev_ack:
        on_peer_ack(ctx, flow, now)
    n = len(pkt.payload)
    # a segment below the receive point without data is a keep-alive or a zero-window probe:
    # it asks for an ACK with the current window (RFC 9293 §3.8.6.1), so the engine answers
    answer = not n and not flags & FIN and pkt.seq != (flow.peer_isn + 1 + flow.rx.next) & MASK32 \
        and unwrap(pkt.seq, flow.peer_isn, flow.rx.next) < flow.rx.next
    if n:
        flow.bytes_in_wire += n
        offset = unwrap(pkt.seq, flow.peer_isn, flow.rx.next)
        # per-flow memory bound: never take more than the buffer allows, but always enough
        # to complete the largest frame (no deadlock on a frame larger than the window)
        flow.rx.limit = max(ctx.config.max_buffered_bytes - len(flow.dl_buf), _MAX_FRAME_WIRE)
        _check_conflict(flow, offset, pkt.payload)
        chunk = flow.rx.take(offset, pkt.payload)
        if chunk:
            flow.rx_push = bool(flags & PSH)
            _consume(ctx, flow, chunk, now, result)
        answer = True
    _after_payload(ctx, flow, pkt, now, result, prev_ack, wire_ack, local_ack, answer)


def _check_conflict(flow: Flow, offset: int, payload: bytes | memoryview) -> None:
    """Abort when a segment disagrees with unverified bytes already received at its offsets.

    A peer resends the same bytes at the same offsets (RFC 8548 §3.6: never two different
    bytes at one offset under one key), so a disagreement means one copy is forged: treated
    like a failed tag (RFC 8548 §4.2: abort), counted as ``aborts_conflicting-data``.
    Keeping the first copy instead, a forged frame header at the receive point whose length
    runs beyond what the peer ever sends would stall the connection for good, and the
    genuine bytes would be dropped as duplicates.  Compared: the Init message or partial
    frame taken but not yet verified (just below the receive point) and the out-of-order
    bytes; verified bytes are gone, and a copy of them is an ordinary duplicate.
    """
    rx = flow.rx
    pending = flow.rx_partial if flow.rx_init_done else flow.rx_init
    if (pending and offset < rx.next and disagrees(pending, rx.next - len(pending), payload,
                                                   offset)) \
            or (rx.buffered and rx.conflicts(offset, payload)):
        raise FlowAbort("conflicting-data")


def _news(flow: Flow, prev_ack: int, wire_ack: int, local_ack: int, bare: bool) -> bool:
    """Whether a segment that delivers nothing still tells the stack something: a higher
    ACK, another window, or (``bare``: no data, no FIN) a genuine duplicate ACK while the
    stack has data in flight. Anything else is dropped, never a spurious duplicate ACK."""
    return wire_ack >= prev_ack and (
        flow.stack_seen_ack is None or local_ack > flow.stack_seen_ack
        or flow.peer_window_field != flow.stack_seen_window
        or (bare and wire_ack == prev_ack and flow.smap.local_end > local_ack))


def _after_payload(ctx: Context, flow: Flow, pkt: TCPPacket, now: float, result: Result,
                   prev_ack: int, wire_ack: int, local_ack: int, answer: bool) -> None:
    """The rest of :func:`handle_inbound` once ACK and payload are taken: the FIN, delivery
    to the stack, the segment's own fate, the engine's ACK."""
    flags = pkt.flags
    n = len(pkt.payload)
    if flags & FIN:
        fin_at = unwrap(pkt.seq, flow.peer_isn, flow.rx.next) + n
        if flow.rx_fin_wire is None:
            flow.rx_fin_wire = fin_at
        elif fin_at != flow.rx_fin_wire:
            raise FlowAbort("fin-moved")
        answer = True
    if flow.rx_fin_wire is not None:
        _check_fin(flow)
    if flow.undelivered():
        delivered = deliver_pending(ctx, flow, now, pkt, result)
    else:
        delivered = 0
    if result.verdict is None:
        if _news(flow, prev_ack, wire_ack, local_ack, not n and not flags & FIN):
            pkt.seq = (flow.peer_isn + 1 + flow.dl_sent) & MASK32
            to_stack_header(flow, pkt, local_ack)
            pkt.flags &= ~(FIN | PSH | URG)
            pkt.urg_ptr = 0
            if n:
                pkt.payload = b""
                result.data = pkt.to_bytes()
            else:
                result.data = pkt.to_bytes_incremental()
            result.verdict = Verdict.ACCEPT
        else:
            result.verdict = Verdict.DROP
    if answer and not delivered and not result.releases and not any(
            t.direction is Direction.OUTBOUND for t in result.transmit):
        result.transmit.append(flow.engine_ack())
    if flow.local_fin:
        check_closed(flow, now)


def fast_inbound(ctx: Context, flow: Flow, data: bytes, tcp_start: int,
                 fields: tuple[int, ...], now: float) -> Result | None:
    """:func:`handle_inbound` for an encrypted flow's common segments, or None (untouched).

    ``tcp_start`` and ``fields`` as for :func:`~tcpcryptd.engine.outbound.fast_outbound`.
    Taken: ACK or PSH|ACK segments with no other option than a timestamp flow's timestamps
    (pure ACKs: timestamps first, then anything, e.g. SACK blocks), at the receive point,
    ACKing nothing older than the last ACK nor anything unsent, while nothing waits for
    delivery; carrying either nothing (also after the peer's FIN, once delivered) or, before
    any FIN, exactly one whole frame (rekey bit clear) whose plaintext the stack has room for
    in one segment, with nothing out of order or partial buffered.
    """
    sport, dport, seq, ack, offset_flags, window, _checksum, _urg_ptr = fields
    shape = segment_shape(flow, data, tcp_start, offset_flags)
    if shape is None:
        return None
    flags, header_end, tsval, n, ttl, df, tos = shape
    end = header_end + n
    more_options = header_end > tcp_start + 32   # after the timestamps: SACK, pure ACKs only
    if n and more_options:
        return None
    rx = flow.rx
    # after the peer's FIN (verified, delivered) only pure ACKs, one number further
    fin_done = flow.rx_fin_done
    if (seq != (flow.peer_isn + 1 + rx.next + fin_done) & MASK32
            or (flow.rx_fin_wire is not None and not (fin_done and flow.dl_fin_sent and not n))
            or flow.dl_sent < flow.dl_base + len(flow.dl_buf)):
        return None
    smap = flow.smap
    prev_ack = smap.peer_wire_ack
    wire_ack = unwrap(ack, flow.local_isn, prev_ack)
    if wire_ack < prev_ack or wire_ack > flow.wire_snd_next():
        return None
    if n and (rx.buffered or flow.rx_partial or not flow.rx_init_done or flow.rx_finp
              or n < HEADER_LEN + MIN_CLEN or data[header_end] & CONTROL_REKEY
              or HEADER_LEN + ((data[header_end + 1] << 8) | data[header_end + 2]) != n
              or n - FRAME_OVERHEAD > min(flow.stack_rcv_ack + flow.stack_window - flow.dl_sent,
                                          MAX_DELIVERY)):
        return None
    note_peer(flow, tsval, ttl, df, tos, window)
    flow.send_eno = False
    flow.packets_in += 1
    local_ack = smap.ack(wire_ack)
    if wire_ack > prev_ack:
        on_peer_ack(ctx, flow, now)
    result = Result(None)
    # what refresh_tsval makes of it: the peer's latest TSval, the echo kept
    options = (TS_LAYOUT + flow.peer_tsval.to_bytes(4, "big") + data[tcp_start + 28:header_end]
               if tsval is not None else b"")
    if not n:
        result.verdict = Verdict.DROP
        if _news(flow, prev_ack, wire_ack, local_ack, True):
            if more_options:
                options = local_sack(flow, options)
            flow.stack_seen_ack = local_ack
            flow.stack_seen_window = flow.peer_window_field
            result.verdict = Verdict.ACCEPT
            result.data = rewrite_header(
                data, tcp_start, header_end, sport, dport,
                (flow.peer_isn + 1 + flow.dl_sent) & MASK32,
                (flow.local_isn + 1 + local_ack) & MASK32, flags & ~PSH,
                flow.peer_window_field, 0, options, b"")
        if flow.local_fin:
            check_closed(flow, now)
        return result
    flow.bytes_in_wire += n
    flow.rx.limit = max(ctx.config.max_buffered_bytes - len(flow.dl_buf), _MAX_FRAME_WIRE)
    rx.next += n
    flow.rx_push = bool(flags & PSH)
    session = flow.session
    assert session is not None   # encrypted
    frame = session.open(flow.rx_frame_offset, memoryview(data)[header_end:end])
    flow.rx_frame_offset += n
    off = flow.dl_sent
    if frame.urgent is not None:
        flow.rx_urgent = off + frame.urgent
    if frame.fin:
        flow.rx_finp = True
    plain = frame.data
    if not plain:   # an empty frame: nothing for the stack, the general rest decides
        _after_payload(ctx, flow, TCPPacket.parse(data), now, result, prev_ack, wire_ack,
                       local_ack, True)
        return result
    flow.dl_buf += plain
    flow.dl_sent = off + len(plain)
    flow.bytes_in_plain += len(plain)
    if flow.dl_deadline is None:
        flow.dl_deadline = now + ctx.config.local_rto
    flow.stack_seen_ack = local_ack
    flow.stack_seen_window = flow.peer_window_field
    urg_ptr = 0 if flow.rx_urgent is None else flow.urgent_pointer(off)
    result.verdict = Verdict.ACCEPT
    result.data = rewrite_segment(
        data, tcp_start, sport, dport, (flow.peer_isn + 1 + off) & MASK32,
        (flow.local_isn + 1 + local_ack) & MASK32,
        (flags & ~(FIN | URG | RST)) | ACK | (URG if urg_ptr else 0),   # PSH as the peer set it
        flow.peer_window_field, urg_ptr, options, plain)
    if flow.local_fin:
        check_closed(flow, now)
    return result
