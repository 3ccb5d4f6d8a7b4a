"""Segmentation offloads as the kernel does them around the queue: GSO and GRO.

* GSO (sender): consecutive data segments a stack emits at one instant are handed to the
  engine as one super-packet of up to ``Scenario.gso`` payload bytes (TSO autosizing); a
  super-packet the engine accepts is cut after the verdict into segments of the stack's
  segment size (the first piece's length, its ``gso_size``), FIN and PSH on the last only,
  as ``tcp_gso_segment`` does.
* GRO (receiver): in-order data segments of one connection that arrive at the same instant
  are merged, a random number at a time, before the engine sees them, up to 64 KB: frames
  and merged packets meet at arbitrary boundaries.
"""

from __future__ import annotations

import random

from tcpcryptd.packet.tcp import ACK, FIN, PSH, RST, SYN, URG, TCPPacket

from .wire import _rebuild

#: GRO merges at most this much payload into one packet (the kernel's 64 KB limit)
GRO_MAX = 65000
_MERGEABLE = ACK | PSH


def _mergeable(pkt: TCPPacket) -> bool:
    return bool(pkt.payload) and pkt.flags & ~_MERGEABLE == 0 and pkt.flags & ACK != 0


def _continues(prev: TCPPacket, pkt: TCPPacket) -> bool:
    return ((prev.sport, prev.dport, prev.ack, prev.options) == (pkt.sport, pkt.dport, pkt.ack,
                                                                 pkt.options)
            and (prev.seq + len(prev.payload)) % (1 << 32) == pkt.seq and not prev.flags & PSH)


def gso_merge(segments: list[bytes], limit: int) -> list[tuple[bytes, int]]:
    """The stack's segments of one instant as (packet, gso_size): runs of in-order data
    segments become super-packets of at most ``limit`` payload bytes (gso_size 0: a
    segment left alone)."""
    out: list[tuple[bytes, int]] = []
    run: list[TCPPacket] = []

    def close_run() -> None:
        if len(run) == 1:
            out.append((run[0].to_bytes(), 0))
        elif run:
            payload = b"".join(bytes(p.payload) for p in run)
            merged = _rebuild(run[-1], seq=run[0].seq, payload=payload)
            out.append((merged, len(run[0].payload)))
        run.clear()

    for data in segments:
        pkt = TCPPacket.parse(data)
        if not _mergeable(pkt):
            close_run()
            out.append((data, 0))
            continue
        if run and (not _continues(run[-1], pkt)
                    or sum(len(p.payload) for p in run) + len(pkt.payload) > limit):
            close_run()
        run.append(pkt)
    close_run()
    return out


def gso_segment(data: bytes, gso_size: int) -> list[bytes]:
    """Cut an accepted super-packet into ``gso_size`` pieces (``tcp_gso_segment``)."""
    pkt = TCPPacket.parse(data)
    payload = bytes(pkt.payload)
    if len(payload) <= gso_size or pkt.flags & (SYN | RST | URG):
        return [data]
    pieces = []
    for start in range(0, len(payload), gso_size):
        last = start + gso_size >= len(payload)
        flags = pkt.flags if last else pkt.flags & ~(FIN | PSH)
        pieces.append(_rebuild(pkt, seq=(pkt.seq + start) % (1 << 32), flags=flags,
                               payload=payload[start:start + gso_size]))
    return pieces


def gro_merge(first: bytes, following: list[bytes], rng: random.Random) -> tuple[bytes, int]:
    """Merge ``first`` with a random number of the ``following`` arrivals that continue it;
    returns the packet and how many of ``following`` it took."""
    pkt = TCPPacket.parse(first)
    if not _mergeable(pkt):
        return first, 0
    want = rng.randint(0, len(following))
    parts = [pkt]
    for data in following[:want]:
        nxt = TCPPacket.parse(data)
        if (not _mergeable(nxt) or not _continues(parts[-1], nxt)
                or sum(len(p.payload) for p in parts) + len(nxt.payload) > GRO_MAX):
            break
        parts.append(nxt)
    if len(parts) == 1:
        return first, 0
    payload = b"".join(bytes(p.payload) for p in parts)
    return _rebuild(parts[-1], seq=pkt.seq, payload=payload), len(parts) - 1
