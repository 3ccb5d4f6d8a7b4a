"""Super-packets: the local stack's GSO segments framed whole (RFC 8548 §4.1, §4.2).

With GSO the local stack hands over one segment of up to ~64 KB where the wire will carry
many MSS-sized ones: the kernel cuts it (by the stack's segment size, its ``gso_size``)
after the verdict, also when the daemon gave it a new payload. A frame may span any number
of wire segments (RFC 8548 §4.1: the byte stream is framed, not the segments), so such a
segment becomes one frame (or the few :func:`_frame_new` needs) and leaves as one packet.

Which segments are super-packets needs no word from the kernel: a segment carrying more
payload than one wire segment holds (the peer's MSS less the options) cannot be a single
segment of the stack, whose MSS the handshake clamped below the peer's (RFC 9293 §3.7.1).
The rewritten packet stays within :data:`MAX_PACKET` bytes; what does not fit leaves as
MSS-sized engine-made packets, as for any other segment. With the default ``gso_max_size``
(65536) Linux sizes a segment below it by its header reserve (``MAX_TCP_HEADER``): measured
on a 1500-byte MTU, the largest is 65212 bytes (45 segments of 1448 plus headers), so a
frame's 20 bytes fit and the interfaces need no change.
"""

from __future__ import annotations

from tcpcryptd.packet.tcp import TCPPacket

#: The largest packet the verdict carries back: the netlink attribute holding it has a
#: 16-bit length that counts its 4-byte header (``NFQNL_MAX_COPY_RANGE``).
MAX_PACKET = 0xFFFF - 4


def header_length(pkt: TCPPacket) -> int:
    """IP and TCP header bytes of ``pkt`` as it will be written."""
    ip = 20 + len(pkt.ip_options) if pkt.version == 4 else 40 + len(pkt.ext_headers)
    return ip + 20 + len(pkt.options)


def first_payload_limit(n: int, mss_payload: int, headers: int) -> int:
    """Wire payload the segment being rewritten may carry: one wire segment's
    (``mss_payload``) unless it is a super-packet (``n`` above that), then whatever
    keeps the packet within :data:`MAX_PACKET` with ``headers`` header bytes."""
    if n <= mss_payload:
        return mss_payload
    return max(MAX_PACKET - headers, mss_payload)
