"""Delivery to the local stack: verified plaintext in local sequence numbers (RFC 8548 §4.2).

The inbound path queues the plaintext of verified frames in ``flow.dl_buf`` (local offsets
``[dl_base, dl_base + len(dl_buf))``; local seq = peer ISN + 1 + offset).  This module sends
it to the stack as the stack's window allows (:func:`deliver_pending`: in the segment being
handled, rewritten, and in engine-made ones), keeps it until the stack acknowledges it
(:func:`note_stack` reads the stack's ACK) and sends it again on a timer or on the stack's
second duplicate ACK (:func:`redeliver`), as a TCP sender would (RFC 6298, RFC 5681 §3.2).
The peer's ACKs and SACK blocks toward the stack are translated into local numbers
(:func:`to_stack_header`).
"""

from __future__ import annotations

from tcpcryptd.engine.actions import Direction, Result, Transmit, Verdict
from tcpcryptd.engine.context import Context
from tcpcryptd.engine.flow import MASK32, Flow, refresh_tsval, ts_newer, unwrap
from tcpcryptd.engine.superpacket import MAX_PACKET
from tcpcryptd.packet import options as tcp_options
from tcpcryptd.packet.tcp import ACK, FIN, PSH, RST, URG, TCPPacket

#: most plaintext bytes in one segment toward the local stack: a packet the verdict can carry
#: with any IP and TCP header (the stack takes segments above its MSS, as from GRO)
MAX_DELIVERY = MAX_PACKET - 120


def local_sack(flow: Flow, raw: bytes) -> bytes:
    """The peer's SACK blocks (our wire stream) translated to whole local frames."""
    smap = flow.smap
    isn1 = flow.local_isn + 1
    blocks = []
    for left, right in tcp_options.sack_blocks(raw):
        lo = unwrap(left, flow.local_isn, smap.peer_wire_ack)
        hi = unwrap(right, flow.local_isn, smap.peer_wire_ack)
        local = smap.sack_to_local(lo, hi)
        if local is not None:
            blocks.append(((local[0] + isn1) & MASK32, (local[1] + isn1) & MASK32))
    return tcp_options.replace_sack(raw, blocks)


def to_stack_header(flow: Flow, pkt: TCPPacket, local_ack: int) -> None:
    """Rewrite ACK, window, timestamps and SACK of a peer's segment for the local stack."""
    pkt.ack = (flow.local_isn + 1 + local_ack) & MASK32
    pkt.window = flow.peer_window_field
    if flow.ts_ok:
        refresh_tsval(pkt, flow.peer_tsval, None)
    if len(pkt.options) > (12 if flow.ts_ok else 0):
        pkt.options = local_sack(flow, pkt.options)
    flow.stack_seen_ack = local_ack
    flow.stack_seen_window = pkt.window


def deliver_pending(ctx: Context, flow: Flow, now: float, pkt: TCPPacket | None,
                    result: Result) -> int:
    """Send verified plaintext (and the FIN) the stack has room for; return bytes sent.

    The first piece is written into ``pkt`` (the packet being handled) when given.
    """
    dl_base, dl_buf = flow.dl_base, flow.dl_buf
    end = dl_base + len(dl_buf)
    send_to = min(end, flow.stack_rcv_ack + flow.stack_window)
    fin = flow.rx_fin_done and not flow.dl_fin_sent
    off = flow.dl_sent
    if off >= send_to and not (fin and off == end):
        return 0
    local_ack = flow.smap.wire_to_local_ack(flow.smap.peer_wire_ack)
    sent = 0
    while True:
        # toward the local stack a segment may be larger than an MSS (as GRO makes them):
        # what a filled gap releases goes up in few segments, not one per frame
        piece_end = min(off + MAX_DELIVERY, send_to) if off < send_to else off
        data = bytes(dl_buf[off - dl_base:piece_end - dl_base])
        is_fin = fin and piece_end == end
        flags = (PSH if flow.rx_push and piece_end == end else 0) | (FIN if is_fin else 0)
        urg_ptr = 0 if flow.rx_urgent is None else flow.urgent_pointer(off)
        if urg_ptr:
            flags |= URG
        if pkt is not None:
            pkt.seq = (flow.peer_isn + 1 + off) & MASK32
            to_stack_header(flow, pkt, local_ack)
            pkt.flags = (pkt.flags & ~(FIN | PSH | URG | RST)) | ACK | flags
            pkt.urg_ptr = urg_ptr
            pkt.payload = data
            result.verdict, result.data = Verdict.ACCEPT, pkt.to_bytes()
            pkt = None
        else:
            result.transmit.append(Transmit(flow.local_packet(off, flags, data, urg_ptr),
                                            Direction.INBOUND))
            flow.stack_seen_ack = local_ack
        sent += len(data)
        off = piece_end
        if is_fin:
            off += 1
            flow.dl_fin_sent = True
            break
        if off >= send_to and not (fin and off == end):
            break
    flow.dl_sent = off
    flow.bytes_in_plain += sent
    if flow.dl_deadline is None:
        flow.dl_deadline = now + ctx.config.local_rto
    return sent or 1


def redeliver(ctx: Context, flow: Flow, now: float, result: Result, *,
              first_only: bool = False) -> None:
    """Plaintext the stack has not acknowledged: send it again (timer or duplicate ACKs)."""
    if flow.stack_rcv_ack >= flow.dl_sent:
        flow.dl_deadline = None
        flow.dl_backoff = 0
        deliver_pending(ctx, flow, now, None, result)
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
    flow.dl_deadline = now + ctx.config.local_rto * (1 << flow.dl_backoff)


def note_stack(ctx: Context, flow: Flow, tsval: int | None, ttl: int, df: bool, tos: int,
               flags: int, window: int, ack: int, has_payload: bool, now: float) -> bool:
    """Remember what engine-made packets must copy from the stack (docs/ARCHITECTURE.md
    "Packets the engine builds"), and let the stack's ACK release the plaintext it took.

    Takes the fields of the stack's segment (``tsval`` None without timestamps). Returns True
    when the stack signals a lost delivery: its second duplicate ACK below the engine's
    delivery point (RFC 5681 §3.2 style), so the caller resends at once.
    """
    if tsval is not None and ts_newer(tsval, flow.stack_tsval):
        flow.stack_tsval = tsval
    flow.out_ttl, flow.out_df, flow.out_tos = ttl, df, tos
    if not flags & ACK:
        return False
    flow.stack_window = window << flow.local_wscale
    acked = unwrap(ack, flow.peer_isn, flow.stack_rcv_ack)
    if acked > flow.stack_rcv_ack and acked <= flow.dl_sent:
        flow.stack_rcv_ack = acked
        drop = min(acked, flow.dl_base + len(flow.dl_buf)) - flow.dl_base
        if drop > 0:
            del flow.dl_buf[:drop]
            flow.dl_base += drop
        flow.dl_backoff = 0
        flow.stack_dupacks = 0
        if flow.rx_urgent is not None and flow.rx_urgent < acked:
            flow.rx_urgent = None   # the stack has the urgent byte
        flow.dl_deadline = now + ctx.config.local_rto if acked < flow.dl_sent else None
        return False
    if acked == flow.stack_rcv_ack < flow.dl_sent and not has_payload:
        flow.stack_dupacks += 1
        return flow.stack_dupacks == 2
    return False
