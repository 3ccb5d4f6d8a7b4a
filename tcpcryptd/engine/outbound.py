"""Outbound path: local stack -> wire (docs/ARCHITECTURE.md "Outbound", RFC 8548 §3.6-3.7, §4.2).

For every non-SYN segment the local stack sends on an ENO flow:

* its ACK/window/SACK describe the peer's stream: the ACK becomes the engine's wire receive
  point (see :meth:`~tcpcryptd.engine.flow.Flow.wire_ack_offset` for the ACK rule), the SACK
  blocks the engine's own out-of-order wire ranges, the window
  :meth:`~tcpcryptd.engine.flow.Flow.wire_window`; the stack's ACK also releases plaintext
  the engine holds for it and may let more flow to it;
* new local data becomes frames (one per segment, split so every wire packet fits the peer's
  MSS), appended to the send map; data already framed -- a retransmission with any new
  boundaries -- *replays* the stored wire bytes of the frames covering it (never a second
  seal at a used offset: AES-GCM nonce reuse);
* a FIN rides on the segment with the last byte of the FINp frame; a bare FIN becomes an
  empty FINp frame (20 bytes) plus FIN (RFC 8548 §3.7);
* URG: the stack's urgent pointer becomes the frame's URGp + urgent field, the offset of the
  last urgent byte from the frame's first data byte in the application stream
  (README.md "Readings of the RFCs"); URG is cleared on the wire;
* zero-window probes (``snd.una - 1``, 0 or 1 byte) pass with a translated sequence number
  and no payload: they are not framed and leak no byte; a keep-alive of an encrypted flow
  becomes an empty-frame rekey instead, which the peer must answer (RFC 8548 §3.9,
  :func:`~tcpcryptd.engine.rekey.keepalive`);
* new data after the key generation reached ``rekey_bytes``/``rekey_interval`` starts a new
  generation (RFC 8548 §3.8, :mod:`~tcpcryptd.engine.rekey`);
* until keys exist, data segments are HELD (bounded) and released in order, encrypted;
* host A's third ACK carries Init1 (:func:`~tcpcryptd.engine.keying.start_init1`), or
  makes the resumed session (:func:`~tcpcryptd.engine.keying.resume`, RFC 8548 §3.5).

:func:`fast_outbound` is the same path for the segments of a bulk transfer -- new in-order
data that fits one frame, and pure ACKs -- read with one ``struct`` call instead of a full
parse; it produces the same bytes and state as :func:`handle_outbound` (tested by running
the simulation both ways) and declines everything else before changing anything.
"""

from __future__ import annotations

from tcpcryptd.core.constants import NON_SYN_OPTION
from tcpcryptd.core.frame import FRAME_OVERHEAD, FRAME_OVERHEAD_URGENT, MAX_FRAME_DATA
from tcpcryptd.engine.actions import Direction, Release, Result, Transmit, Verdict
from tcpcryptd.engine.closing import check_closed, close
from tcpcryptd.engine.context import Context
from tcpcryptd.engine.delivery import deliver_pending, note_stack, redeliver
from tcpcryptd.engine.flow import (
    MASK32,
    Flow,
    State,
    packet_tsval,
    refresh_tsval,
    segment_shape,
    unwrap,
)
from tcpcryptd.engine.keying import resume, start_init1
from tcpcryptd.engine.rekey import due, initiate, keepalive
from tcpcryptd.engine.superpacket import first_payload_limit, header_length
from tcpcryptd.packet import options as tcp_options
from tcpcryptd.packet.tcp import (
    ACK,
    FIN,
    PSH,
    RST,
    URG,
    TCPPacket,
    build,
    rewrite_header,
    rewrite_segment,
)


def _wire_header(flow: Flow, pkt: TCPPacket, wire_offset: int, *, data: bool) -> None:
    """Rewrite seq, ack, window and options of a stack segment for the wire.

    URG never reaches the wire: urgent data travels as URGp inside the frame (RFC 8548 §3.7).
    """
    pkt.seq = (flow.local_isn + 1 + wire_offset) & MASK32
    if pkt.flags & URG:
        pkt.flags &= ~URG
        pkt.urg_ptr = 0
    if pkt.flags & ACK:
        pkt.ack = (flow.peer_isn + 1 + flow.wire_ack_offset()) & MASK32
        pkt.window = flow.window_field()
    if flow.ts_ok:
        refresh_tsval(pkt, flow.stack_tsval, flow.peer_tsval)
    raw = pkt.options
    if len(raw) != (12 if flow.ts_ok else 0) or flow.send_eno or flow.rx.buffered:
        blocks = []
        if not data and flow.sack_ok:
            isn1 = flow.peer_isn + 1
            blocks = [((l + isn1) & MASK32, (r + isn1) & MASK32)
                      for l, r in flow.rx.sack_blocks()]
        raw = tcp_options.replace_sack(raw, blocks)
        if flow.send_eno:
            raw = tcp_options.add(raw, NON_SYN_OPTION)
        pkt.options = raw


def _hold(ctx: Context, flow: Flow, packet_id: int, pkt: TCPPacket, result: Result) -> None:
    """Keep a local segment until keys exist (deferred verdict); dropped when the flow
    already ended (a RST closed it before its keys came: nothing would release it) or when
    too many wait (the stack retransmits)."""
    if flow.closed_at is not None:
        ctx.count("drops_hold-closed")
        result.verdict = Verdict.DROP
        return
    if len(flow.held) >= ctx.config.max_held_packets:
        ctx.count("drops_hold-limit")
        result.verdict = Verdict.DROP
        return
    if not flow.held:
        flow.held = []
    flow.held.append((packet_id, pkt))
    result.verdict = Verdict.HOLD


def _frame_new(flow: Flow, data: memoryview | bytes, urgent_last: int | None, fin: bool,
               max_payload: int) -> None:
    """Seal new local data into frames that each fit one wire packet (RFC 8548 §4.2)."""
    smap = flow.smap
    session = flow.session
    assert session is not None
    overhead = FRAME_OVERHEAD_URGENT if urgent_last is not None else FRAME_OVERHEAD
    step = max(1, min(max_payload - overhead, MAX_FRAME_DATA - 2))
    pos, n = 0, len(data)
    while pos < n:
        chunk = data[pos:pos + step]
        pos += len(chunk)
        local_start = smap.local_end
        urgent = None
        if urgent_last is not None and 0 <= urgent_last - local_start <= 0xFFFF:
            urgent = urgent_last - local_start
        smap.append(len(chunk), session.seal(smap.wire_end, chunk, fin=fin and pos >= n,
                                             urgent=urgent))
    flow.bytes_out_plain += n


def _split(flow: Flow, pkt: TCPPacket, wire_lo: int, payload: bytes, max_payload: int,
           flags: int, fin: bool, first: int | None = None) -> tuple[bytes, list[Transmit]]:
    """The rewritten packet (first piece, up to ``first`` bytes: a super-packet's limit)
    and engine-made packets of at most ``max_payload`` bytes for the rest."""
    first = max_payload if first is None else first
    pieces = [payload[:first]] + [payload[i:i + max_payload]
                                  for i in range(first, len(payload), max_payload)]
    flags &= ~(FIN | URG)
    extra: list[Transmit] = []
    offset = wire_lo + len(pieces[0])
    for k, piece in enumerate(pieces[1:], start=2):
        last = k == len(pieces)
        extra.append(Transmit(build(
            pkt.version, pkt.src, pkt.dst, pkt.sport, pkt.dport,
            (flow.local_isn + 1 + offset) & MASK32, pkt.ack,
            flags | (FIN if fin and last else 0), pkt.window, pkt.options, piece,
            pkt.ttl, pkt.df, pkt.tos), Direction.OUTBOUND))
        offset += len(piece)
        flow.packets_out += 1
    pkt.flags = flags | (FIN if fin and len(pieces) == 1 else 0)
    if len(pieces) > 1:
        pkt.flags &= ~PSH
    pkt.urg_ptr = 0
    pkt.payload = pieces[0]
    flow.packets_out += 1
    flow.bytes_out_wire += len(payload)
    return pkt.to_bytes(), extra


def _stack_keepalive(flow: Flow, start: int, end: int) -> bool:
    """A TCP keep-alive of the local stack: ``snd.una - 1`` with no data or one byte while
    nothing is in flight, the peer's window open (else it is a zero-window probe)."""
    smap = flow.smap
    return (flow.state is State.ENCRYPTED and start == smap.local_acked - 1
            and end <= smap.local_acked
            and smap.local_acked == smap.local_end and flow.stack_seen_window != 0)


def process_data(ctx: Context, flow: Flow, pkt: TCPPacket, now: float,
                 result: Result) -> tuple[bytes | None, list[Transmit]]:
    """Frame or replay one data/FIN segment of the stack; None = drop (counted).

    New data after the current key generation reached its limits starts a new one
    (:func:`~tcpcryptd.engine.rekey.due`, RFC 8548 §3.8).
    """
    smap = flow.smap
    payload = pkt.payload
    n = len(payload)
    fin = bool(pkt.flags & FIN)
    urg_ptr = pkt.urg_ptr if pkt.flags & URG else 0
    start = unwrap(pkt.seq, flow.local_isn, smap.local_end)
    if start + n > smap.local_end and due(flow, now):
        initiate(ctx, flow, now, result)
    header_done = False
    if start == smap.local_end and not pkt.flags & (FIN | URG) and smap.fin_local is None:
        # the common case: new data, one frame, one packet
        _wire_header(flow, pkt, 0, data=True)
        header_done = True
        mss_payload = flow.peer_mss - len(pkt.options)
        if n + FRAME_OVERHEAD <= first_payload_limit(n, mss_payload, header_length(pkt)) \
                and n <= MAX_FRAME_DATA:
            wire_start = smap.wire_end
            wire = flow.session.seal(wire_start, payload)  # type: ignore[union-attr]
            smap.append(n, wire)
            pkt.seq = (flow.local_isn + 1 + wire_start) & MASK32
            pkt.payload = wire
            flow.packets_out += 1
            flow.bytes_out_plain += n
            flow.bytes_out_wire += len(wire)
            return pkt.to_bytes(), []
    end = start + n
    if start > smap.local_end:
        ctx.count("drops_local-gap")
        return None, []
    # a retransmission: the stack may have missed an ACK, let the next one through
    flow.stack_seen_ack = None
    if end + fin <= smap.wire_to_local_ack(smap.peer_wire_ack):
        if not fin and n <= 1 and end >= smap.local_acked - 1:
            if _stack_keepalive(flow, start, end) and keepalive(ctx, flow, now, result):
                return None, []   # an authenticated probe instead (RFC 8548 §3.9)
            # zero-window probe: snd.una - 1 on the wire, no payload
            _wire_header(flow, pkt, smap.wire_acked - 1, data=False)
            pkt.payload = b""
            pkt.flags &= ~PSH
            flow.packets_out += 1
            return pkt.to_bytes(), []
        # the peer has all of it: the stack missed our ACK (lost on the local path), so the
        # engine repeats it instead of letting the stack retransmit into the void
        ctx.count("drops_stale")
        flow.stack_seen_ack = None
        return None, [Transmit(flow.local_packet(flow.dl_sent, 0), Direction.INBOUND)]
    if fin and (end < smap.local_end if smap.fin_local is None else end != smap.fin_local):
        ctx.count("drops_bad-fin")
        return None, []
    if not header_done:
        _wire_header(flow, pkt, 0, data=True)
    max_payload = max(flow.peer_mss - len(pkt.options), 64)
    first = first_payload_limit(n, max_payload, header_length(pkt))
    if end > smap.local_end:
        if smap.fin_local is not None:
            ctx.count("drops_data-after-fin")
            return None, []
        # 0xFFFF is Linux's "the urgent byte lies further than this": position unknown yet
        urgent_last = start + urg_ptr - 1 if 0 < urg_ptr < 0xFFFF else None
        new = payload[smap.local_end - start:]
        _frame_new(flow, new, urgent_last, fin, first)
        if fin:
            smap.close()
    elif fin and smap.fin_local is None:
        assert flow.session is not None
        smap.append(0, flow.session.seal(smap.wire_end, b"", fin=True), injected=True)
        smap.close()
    if fin:
        flow.local_fin = True
    if n:
        wire_lo, wire_hi = smap.wire_range(start, end)
    else:
        wire_lo = wire_hi = smap.fin_wire  # type: ignore[assignment]
        fin_frame = smap.unacked[-1] if smap.unacked else None
        if fin_frame is not None and fin_frame.wire_end == smap.fin_wire:
            wire_lo = max(fin_frame.wire_start, smap.peer_wire_ack)
    wire_fin = fin and (smap.fin_wire is not None)
    if wire_fin:
        wire_hi = smap.fin_wire  # type: ignore[assignment]
        wire_lo = min(wire_lo, wire_hi)
    pkt.seq = (flow.local_isn + 1 + wire_lo) & MASK32
    return _split(flow, pkt, wire_lo, smap.read(wire_lo, wire_hi), max_payload, pkt.flags,
                  wire_fin, first)


def _send_init1(ctx: Context, flow: Flow, pkt: TCPPacket, packet_id: int, now: float,
                result: Result) -> None:
    """Host A's third ACK: Init1 rides on it (or right before a data segment, which waits)."""
    init1 = start_init1(ctx, flow, now)
    if len(pkt.payload) or pkt.flags & FIN:
        result.transmit.extend(flow.wire_pieces(0, init1))
        _hold(ctx, flow, packet_id, pkt, result)
        return
    _wire_header(flow, pkt, 0, data=True)
    max_payload = max(flow.peer_mss - len(pkt.options), 64)
    data, extra = _split(flow, pkt, 0, init1, max_payload, pkt.flags | PSH, False)
    result.verdict, result.data = Verdict.ACCEPT, data
    result.transmit.extend(extra)


def handle_outbound(ctx: Context, flow: Flow, pkt: TCPPacket, packet_id: int, now: float,
                    result: Result) -> None:
    """A non-SYN segment from the local stack on an ENO flow."""
    flags = pkt.flags
    if note_stack(ctx, flow, packet_tsval(pkt) if flow.ts_ok else None, pkt.ttl, pkt.df,
                  pkt.tos, flags, pkt.window, pkt.ack, bool(len(pkt.payload)), now):
        redeliver(ctx, flow, now, result, first_only=True)
    if flags & RST:
        # the stack's RST at its SND.NXT leaves at the wire's; one that answers the peer's
        # latest ACK (<SEQ=SEG.ACK>, RFC 9293 §3.10.7.1) leaves at exactly that ACK, even
        # inside a frame, so the peer's RFC 5961 check finds it exact
        smap = flow.smap
        local = unwrap(pkt.seq, flow.local_isn, smap.local_end)
        wire = smap.local_to_wire(local)
        if local < smap.local_end and local == smap.wire_to_local_ack(smap.peer_wire_ack):
            wire = smap.peer_wire_ack
        _wire_header(flow, pkt, wire, data=False)
        pkt.payload = b""   # RST data is never framed: it must not leak
        result.verdict, result.data = Verdict.ACCEPT, pkt.to_bytes()
        close(flow, now, result)
        return
    if flow.state is State.NEGOTIATED:
        if flow.resume_entry is None:
            _send_init1(ctx, flow, pkt, packet_id, now, result)
            return
        resume(ctx, flow, now, result)   # no Init1: the segment goes on encrypted
    if flow.undelivered():
        deliver_pending(ctx, flow, now, None, result)   # the stack's window may have opened
    if len(pkt.payload) or flags & FIN:
        if not flow.keyed or flow.held:
            _hold(ctx, flow, packet_id, pkt, result)
            return
        data, extra = process_data(ctx, flow, pkt, now, result)
        result.verdict = Verdict.DROP if data is None else Verdict.ACCEPT
        result.data = data
        result.transmit.extend(extra)
        if flow.local_fin:
            check_closed(flow, now)
        return
    # a pure ACK or window update
    start = unwrap(pkt.seq, flow.local_isn, flow.smap.local_end)
    if start < flow.smap.local_acked:
        if _stack_keepalive(flow, start, start) and keepalive(ctx, flow, now, result):
            result.verdict = Verdict.DROP   # an authenticated probe instead (RFC 8548 §3.9)
            return
        flow.stack_seen_ack = None  # a zero-window probe: let the answer through
    _wire_header(flow, pkt, flow.smap.local_to_wire(start), data=False)
    flow.packets_out += 1
    result.verdict, result.data = Verdict.ACCEPT, pkt.to_bytes_incremental()
    if flow.local_fin:
        check_closed(flow, now)


def fast_outbound(ctx: Context, flow: Flow, data: bytes, tcp_start: int,
                  fields: tuple[int, ...], now: float) -> Result | None:
    """:func:`handle_outbound` for an encrypted flow's common segments, or None (untouched).

    ``tcp_start`` is 20 (IPv4 without options) or 40 (IPv6 without extension headers),
    ``fields`` the fixed TCP header as ``struct`` unpacked it. Taken: ACK or PSH|ACK
    segments with no other option than the timestamps a timestamp flow carries, at the
    stack's send point, carrying either nothing (a pure ACK, nothing out of order to SACK;
    also after the stack's FIN) or new data for one frame before any FIN; nothing held,
    ``45 02`` no longer sent.
    """
    sport, dport, seq, ack, offset_flags, window, _checksum, urg_ptr = fields
    shape = segment_shape(flow, data, tcp_start, offset_flags)
    if shape is None:
        return None
    flags, header_end, tsval, n, ttl, df, tos = shape
    end = header_end + n
    if header_end - tcp_start != (20 if tsval is None else 32):
        return None   # options beyond the timestamps: the full path edits them
    smap = flow.smap
    local_fin = flow.local_fin   # after the stack's FIN its segments sit one number further
    if (flow.held or flow.send_eno
            or seq != (flow.local_isn + 1 + smap.local_end + local_fin) & MASK32):
        return None
    if n:
        if (local_fin or n > MAX_FRAME_DATA or n + FRAME_OVERHEAD > first_payload_limit(
                n, flow.peer_mss - (header_end - tcp_start - 20), header_end)
                or smap.wire_end >= flow.rekey_wire or now >= flow.rekey_time):
            return None   # (the last two: rekey.due, a new generation starts)
    elif flow.rx.buffered:
        return None   # SACK blocks to add
    result = Result(Verdict.ACCEPT)
    if note_stack(ctx, flow, tsval, ttl, df, tos, flags, window, ack, n > 0, now):
        redeliver(ctx, flow, now, result, first_only=True)
    if flow.undelivered():
        deliver_pending(ctx, flow, now, None, result)   # the stack's window may have opened
    # what refresh_tsval makes of it (the stack's latest TSval, the peer's latest echoed),
    # the same bytes as an engine-made segment's (no SACK: nothing buffered, no 45 02)
    options = flow.wire_options(False)
    wire_ack = (flow.peer_isn + 1 + flow.wire_ack_offset()) & MASK32
    window = flow.window_field()
    flow.packets_out += 1
    if not n:
        result.data = rewrite_header(data, tcp_start, header_end, sport, dport,
                                     (flow.local_isn + 1 + smap.wire_end + local_fin) & MASK32,
                                     wire_ack, flags, window, urg_ptr, options, b"")
        if local_fin:
            check_closed(flow, now)
        return result
    wire_start = smap.wire_end
    session = flow.session
    assert session is not None   # encrypted
    wire = session.seal(wire_start, memoryview(data)[header_end:end])
    smap.append(n, wire)
    flow.bytes_out_plain += n
    flow.bytes_out_wire += len(wire)
    result.data = rewrite_segment(data, tcp_start, sport, dport,
                                  (flow.local_isn + 1 + wire_start) & MASK32, wire_ack, flags,
                                  window, urg_ptr, options, wire)
    return result


def release_held(ctx: Context, flow: Flow, now: float, result: Result) -> None:
    """Keys exist: frame and release the held segments in order."""
    held, flow.held = flow.held, ()
    for k, (packet_id, pkt) in enumerate(held):
        assert isinstance(pkt, TCPPacket)
        try:
            data, extra = process_data(ctx, flow, pkt, now, result)
        except Exception:
            flow.held = held[k:]   # the abort that follows drops them: each gets its verdict
            raise
        result.releases.append(Release(packet_id, data, data is not None))
        result.transmit.extend(extra)
    check_closed(flow, now)
