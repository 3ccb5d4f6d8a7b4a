"""IPv4/IPv6 + TCP packets: parse, rebuild and build, on ``bytes`` with ``struct``.

This is the per-packet hot path (docs/ARCHITECTURE.md "Hot path"): no scapy, no logging,
one ``struct`` call per header, the payload a zero-copy ``memoryview`` of the queued buffer.

What :meth:`TCPPacket.parse` accepts, and why the rest is a :class:`PacketError` (the engine
passes such packets on untouched):

* IPv4 (RFC 791) with or without header options, except source-route options (LSRR, SSRR):
  with those the TCP pseudo-header holds the final destination, not the header's
  destination address (RFC 9293 §3.1), and rebuilding would need it. Fragments (MF set or a
  non-zero offset) are refused: neither a first nor a later fragment holds a whole segment.
  Bytes after the IPv4 total length (link-layer padding) are ignored.
* IPv6 (RFC 8200) with the extension headers a TCP segment may carry before it: hop-by-hop
  options (0), routing (43) with Segments Left 0 and destination options (60), walked in
  order and kept verbatim. A routing header with Segments Left > 0 is refused (the
  pseudo-header would need the final destination, RFC 8200 §8.1), as are fragment (44),
  ESP (50), AH (51), no-next-header (59), jumbograms (payload length 0) and anything not
  TCP.
* TCP (RFC 9293 §3.1) with data offset 5..15 inside the segment.

Checksums are not verified on parse, and a rebuilt packet gets fresh ones:
:meth:`TCPPacket.to_bytes` by a full sum, :meth:`TCPPacket.to_bytes_incremental` by RFC 1624
for header-only edits; the latter needs a complete checksum in the packet, so a packet whose
local stack left the checksum to the NIC (``CHECKSUM_PARTIAL``: the field holds only the
pseudo-header sum) goes through :func:`complete_checksum` first.
"""

from __future__ import annotations

import struct

from tcpcryptd.packet.checksum import (
    Buffer,
    internet_checksum,
    ipv4_header_checksum,
    residue_of,
)

__all__ = [
    "FIN",
    "SYN",
    "RST",
    "PSH",
    "ACK",
    "URG",
    "ECE",
    "CWR",
    "FlowKey",
    "PacketError",
    "TCPPacket",
    "build",
    "complete_checksum",
    "TCP_HEADER",
    "rewrite_header",
    "rewrite_segment",
]

# TCP control bits (RFC 9293 §3.1; ECE/CWR RFC 3168 §6.1). ``TCPPacket.flags`` holds the 12
# bits after the data offset, so the reserved bits and AE (RFC 3540, RFC 9768) round-trip.
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80
_FLAG_BITS = 0x0FFF

#: (version, src, sport, dst, dport): one direction of a connection.
FlowKey = tuple[int, bytes, int, bytes, int]

_IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
_IPV6_HEADER = struct.Struct("!IHBB16s16s")
_TCP_HEADER = struct.Struct("!HHIIHHHH")
#: The fixed TCP header (RFC 9293 §3.1), for callers that read it from raw bytes.
TCP_HEADER = _TCP_HEADER
_U16 = struct.Struct("!H")
#: IPv4 header without options and the fixed TCP header, packed in one call on the hot path.
_IPV4_TCP_HEADERS = struct.Struct("!BBHHHBBH4s4sHHIIHHHH")
_IPV4_DF = 0x4000
_IPV4_MF_AND_OFFSET = 0x3FFF
_IPV4_OPT_EOL = 0
_IPV4_OPT_NOP = 1
_IPV4_SOURCE_ROUTES = frozenset((0x83, 0x89))  # LSRR, SSRR (RFC 791 §3.1)
_PROTO_TCP = 6
_IPV6_HOP_BY_HOP = 0
_IPV6_ROUTING = 43
_IPV6_DEST_OPTIONS = 60
_MAX_OPTIONS_LEN = 40
_MAX_IP_LENGTH = 0xFFFF


class PacketError(Exception):
    """Bytes that are not a whole, well-formed IPv4/IPv6 TCP segment this codec handles.

    The only exception :meth:`TCPPacket.parse` raises, for any input bytes.
    """


def _ipv4_options_ok(options: bytes) -> bool:
    """Whether IPv4 header options are well-formed and carry no source route (RFC 791)."""
    i = 0
    n = len(options)
    while i < n:
        kind = options[i]
        if kind == _IPV4_OPT_EOL:
            return True
        if kind == _IPV4_OPT_NOP:
            i += 1
            continue
        if i + 1 >= n or options[i + 1] < 2 or i + options[i + 1] > n:
            return False
        if kind in _IPV4_SOURCE_ROUTES:
            return False
        i += options[i + 1]
    return True


def _walk_ipv6_extensions(buf: Buffer, next_header: int, end: int) -> int:
    """Offset of the TCP header after the IPv6 extension headers (RFC 8200 §4).

    Raises PacketError for any header but hop-by-hop, destination options and a routing
    header with Segments Left 0, and for a chain that runs past the payload.
    """
    pos = 40
    while next_header != _PROTO_TCP:
        if next_header not in (_IPV6_HOP_BY_HOP, _IPV6_ROUTING, _IPV6_DEST_OPTIONS):
            raise PacketError(f"IPv6 next header {next_header} is not TCP")
        if pos + 8 > end:
            raise PacketError("IPv6 extension header truncated")
        if next_header == _IPV6_ROUTING and buf[pos + 3] != 0:
            raise PacketError("IPv6 routing header with segments left")
        next_header = buf[pos]
        pos += (buf[pos + 1] + 1) * 8
    if pos > end:
        raise PacketError("IPv6 extension header truncated")
    return pos


class TCPPacket:
    """One IPv4 or IPv6 TCP segment, its fields as plain mutable attributes.

    Addresses are ``bytes`` of 4 or 16; ``flags`` is the 12-bit field after the data offset
    (test with :data:`SYN` etc.); ``options`` the raw TCP option bytes (a multiple of 4, at
    most 40; see :mod:`tcpcryptd.packet.options`); ``payload`` a ``memoryview`` into the
    parsed buffer (assign ``bytes`` to replace it); ``ttl`` the hop limit for IPv6; ``tos``
    the traffic class for IPv6; ``df`` and ``ip_id`` are IPv4 only (``True``/0 for IPv6);
    ``flow_label`` IPv6 only. ``ip_options`` (IPv4) and ``ext_headers`` (IPv6, with
    ``ip6_next_header`` the IPv6 header's next-header value) are kept verbatim.
    """

    __slots__ = (
        "version",
        "src",
        "dst",
        "sport",
        "dport",
        "seq",
        "ack",
        "flags",
        "window",
        "urg_ptr",
        "options",
        "payload",
        "ttl",
        "df",
        "tos",
        "ip_id",
        "flow_label",
        "ip_options",
        "ext_headers",
        "ip6_next_header",
        "_raw",
        "_tcp_start",
        "_tcp_header_end",
        "_parsed_payload",
        "_ip_fields",
    )

    version: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    urg_ptr: int
    options: bytes
    payload: Buffer
    ttl: int
    df: bool
    tos: int
    ip_id: int
    flow_label: int
    ip_options: bytes
    ext_headers: bytes
    ip6_next_header: int

    @classmethod
    def parse(cls, buf: Buffer) -> TCPPacket:
        """Parse an IPv4 or IPv6 packet carrying a TCP segment; PacketError on anything else.

        ``buf`` is not copied: ``payload`` is a view of it, so it must not be mutated while
        the packet is in use.
        """
        n = len(buf)
        if n < 20:
            raise PacketError("shorter than an IP header")
        version = buf[0] >> 4
        pkt = cls.__new__(cls)
        if version == 4:
            (vihl, tos, end, ip_id, frag, ttl, proto, _csum, src, dst) = _IPV4_HEADER.unpack_from(
                buf
            )
            tcp_start = (vihl & 15) << 2
            if tcp_start < 20:
                raise PacketError("IPv4 header length below 5")
            if end < tcp_start + 20 or end > n:
                raise PacketError("IPv4 total length inconsistent with the packet")
            if frag & _IPV4_MF_AND_OFFSET:
                raise PacketError("IPv4 fragment")
            if proto != _PROTO_TCP:
                raise PacketError(f"IPv4 protocol {proto} is not TCP")
            if tcp_start > 20:
                ip_options = bytes(buf[20:tcp_start])
                if not _ipv4_options_ok(ip_options):
                    raise PacketError("malformed or source-route IPv4 options")
            else:
                ip_options = b""
            pkt.df = bool(frag & _IPV4_DF)
            pkt.ip_id = ip_id
            pkt.flow_label = 0
            pkt.ext_headers = b""
            pkt.ip6_next_header = _PROTO_TCP
        elif version == 6:
            if n < 40:
                raise PacketError("shorter than an IPv6 header")
            word, payload_length, next_header, ttl, src, dst = _IPV6_HEADER.unpack_from(buf)
            end = 40 + payload_length
            if payload_length == 0 or end > n:
                raise PacketError("IPv6 payload length inconsistent with the packet")
            tos = (word >> 20) & 0xFF
            tcp_start = (
                40
                if next_header == _PROTO_TCP
                else _walk_ipv6_extensions(buf, next_header, end)
            )
            if end < tcp_start + 20:
                raise PacketError("TCP header truncated")
            pkt.df = True
            pkt.ip_id = 0
            pkt.flow_label = word & 0xFFFFF
            pkt.ext_headers = bytes(buf[40:tcp_start])
            pkt.ip6_next_header = next_header
            ip_options = b""
        else:
            raise PacketError(f"IP version {version}")
        (
            pkt.sport,
            pkt.dport,
            pkt.seq,
            pkt.ack,
            offset_flags,
            pkt.window,
            _csum,
            pkt.urg_ptr,
        ) = _TCP_HEADER.unpack_from(buf, tcp_start)
        header_end = tcp_start + ((offset_flags >> 12) << 2)
        if header_end < tcp_start + 20:
            raise PacketError("TCP data offset below 5")
        if header_end > end:
            raise PacketError("TCP data offset past the segment")
        pkt.version = version
        pkt.src = src
        pkt.dst = dst
        pkt.flags = offset_flags & _FLAG_BITS
        pkt.options = bytes(buf[tcp_start + 20 : header_end])
        pkt.payload = pkt._parsed_payload = memoryview(buf)[header_end:end]
        pkt.ttl = ttl
        pkt.tos = tos
        pkt.ip_options = ip_options
        pkt._raw = buf
        pkt._tcp_start = tcp_start
        pkt._tcp_header_end = header_end
        # the same tuple as _current_ip_fields(), built from the locals without a method call
        pkt._ip_fields = (
            version,
            src,
            dst,
            ttl,
            tos,
            pkt.df,
            pkt.ip_id,
            pkt.flow_label,
            ip_options,
            pkt.ext_headers,
            pkt.ip6_next_header,
        )
        return pkt

    def _current_ip_fields(self) -> tuple[object, ...]:
        """Everything outside the TCP header that a rebuild takes from the attributes."""
        return (
            self.version,
            self.src,
            self.dst,
            self.ttl,
            self.tos,
            self.df,
            self.ip_id,
            self.flow_label,
            self.ip_options,
            self.ext_headers,
            self.ip6_next_header,
        )

    def flow_key(self) -> FlowKey:
        """(version, src, sport, dst, dport) of this segment's direction."""
        return (self.version, self.src, self.sport, self.dst, self.dport)

    def reverse_flow_key(self) -> FlowKey:
        """The flow key of the opposite direction: what the peer's segments carry."""
        return (self.version, self.dst, self.dport, self.src, self.sport)

    def to_bytes(self) -> bytes:
        """The packet with every length and both checksums computed afresh (full sums)."""
        return _encode(
            self.version,
            self.src,
            self.dst,
            self.sport,
            self.dport,
            self.seq,
            self.ack,
            self.flags,
            self.window,
            self.urg_ptr,
            self.options,
            self.payload,
            self.ttl,
            self.df,
            self.tos,
            self.ip_id,
            self.flow_label,
            self.ip_options,
            self.ext_headers,
            self.ip6_next_header,
        )

    def to_bytes_incremental(self) -> bytes:
        """The packet after header-only edits, the TCP checksum updated per RFC 1624.

        For the hot path of ACK/SACK translation: ports, seq, ack, flags, window, urg_ptr and
        options (any length, still a multiple of 4) may have changed; the payload must still
        be the parsed one and the IP fields unchanged. The old TCP header is replaced by the
        new one in the received checksum (eqn. 3 with ``m``/``m'`` the whole headers, plus
        the pseudo-header length), so the cost does not depend on the payload size, and an
        error in the received checksum survives instead of being laundered. Anything else
        changed (payload, addresses, TTL...) falls back to :meth:`to_bytes`.
        """
        if self.payload is not self._parsed_payload or self._ip_fields != self._current_ip_fields():
            return self.to_bytes()
        if len(self.options) & 3 or len(self.options) > _MAX_OPTIONS_LEN:
            raise ValueError("TCP options must be a multiple of 4 bytes, at most 40")
        if self.flags & ~_FLAG_BITS:
            raise ValueError("TCP flags are 12 bits")
        return rewrite_header(self._raw, self._tcp_start, self._tcp_header_end, self.sport,
                              self.dport, self.seq, self.ack, self.flags, self.window,
                              self.urg_ptr, self.options, self.payload)


def complete_checksum(data: bytes) -> bytes:
    """``data`` with the TCP checksum the local stack left to the NIC filled in (RFC 9293 §3.1).

    The field holds the pseudo-header sum (``CHECKSUM_PARTIAL``), so the ones' complement
    of the sum over the TCP segment as it is gives the checksum. Only IPv4 and IPv6 with TCP
    right after the fixed header; anything else is returned unchanged.
    """
    if len(data) >= 40 and data[0] >> 4 == 4 and data[9] == _PROTO_TCP:
        start = (data[0] & 0xF) << 2
    elif len(data) >= 60 and data[0] >> 4 == 6 and data[6] == _PROTO_TCP:
        start = 40
    else:
        return data
    if len(data) < start + 20:
        return data
    checksum = internet_checksum(memoryview(data)[start:])
    return b"".join((data[:start + 16], checksum.to_bytes(2, "big"), data[start + 18:]))


def rewrite_header(raw: Buffer, tcp_start: int, old_header_end: int, sport: int, dport: int,
                   seq: int, ack: int, flags: int, window: int, urg_ptr: int, options: bytes,
                   payload: Buffer) -> bytes:
    """``raw`` with a new TCP header and options, the payload and IP fields kept (RFC 1624).

    The engine of :meth:`TCPPacket.to_bytes_incremental`, also called directly by the flow
    engine's fast paths, which read the header with one ``struct`` call instead of a full
    parse. ``raw[tcp_start:old_header_end]`` is the received TCP header, ``payload`` the
    received payload. The caller vouches for ``options`` (a multiple of 4 bytes, at most 40)
    and ``flags`` (12 bits).
    """
    header_length = 20 + len(options)
    length_change = header_length - (old_header_end - tcp_start)
    offset_flags = (header_length << 10) | flags
    # The received segment with its checksum HC and the pseudo-header sums to negative
    # zero, so everything but the old header has residue -res(old header): the new sum is
    # res(new header, checksum 0) - res(old header) + the pseudo-header length change.
    # Each 16/32-bit field is congruent to the sum of its words, so the fixed header's
    # residue comes straight from the field values.
    residue = (
        _header_residue(sport, dport, seq, ack, offset_flags, window, urg_ptr, options)
        - int.from_bytes(raw[tcp_start:old_header_end], "big")
        + length_change
    ) % 0xFFFF
    tcp_header = _TCP_HEADER.pack(
        sport, dport, seq, ack, offset_flags, window, 0xFFFF - residue if residue else 0, urg_ptr
    )
    if length_change == 0:
        ip_header = raw[:tcp_start]
    else:
        ip_header = _ip_header_with_length(raw[:tcp_start], raw[0] >> 4, length_change)
    return b"".join((ip_header, tcp_header, options, payload))


def rewrite_segment(raw: Buffer, tcp_start: int, sport: int, dport: int, seq: int, ack: int,
                    flags: int, window: int, urg_ptr: int, options: bytes,
                    payload: Buffer) -> bytes:
    """``raw``'s IP header with a new TCP header, options and payload; full TCP checksum.

    The flow engine's fast paths use it for segments whose payload they replace (a frame for
    the wire, plaintext for the stack). Only for IPv4 without header options
    (``tcp_start`` 20) and IPv6 without extension headers (``tcp_start`` 40): the IP header
    keeps every field the sender set (TTL/hop limit, ID, DF, traffic class, flow label) but
    its length and, for IPv4, its checksum, updated incrementally (RFC 1624). Produces the
    same bytes as :meth:`TCPPacket.to_bytes` of the edited packet for a valid input. The
    caller vouches for ``options`` and ``flags`` as for :func:`rewrite_header`.
    """
    header_length = 20 + len(options)
    tcp_length = header_length + len(payload)
    offset_flags = (header_length << 10) | flags
    if tcp_start == 20:
        addresses = int.from_bytes(raw[12:20], "big")
        total = 20 + tcp_length
        if total > _MAX_IP_LENGTH:
            raise ValueError("IPv4 packet longer than 65535 bytes")
        ip_residue = (0xFFFF - ((raw[10] << 8) | raw[11])
                      + total - ((raw[2] << 8) | raw[3])) % 0xFFFF
        ip_header = b"".join((raw[:2], _U16.pack(total), raw[4:10],
                              _U16.pack(0xFFFF - ip_residue if ip_residue else 0), raw[12:20]))
    else:
        addresses = int.from_bytes(raw[8:40], "big")
        if tcp_length > _MAX_IP_LENGTH:
            raise ValueError("IPv6 payload longer than 65535 bytes")
        ip_header = b"".join((raw[:4], _U16.pack(tcp_length), raw[6:40]))
    tcp_header = _TCP_HEADER.pack(
        sport, dport, seq, ack, offset_flags, window,
        _tcp_checksum(addresses, tcp_length, sport, dport, seq, ack, offset_flags, window,
                      urg_ptr, options, payload),
        urg_ptr,
    )
    return b"".join((ip_header, tcp_header, options, payload))


def _tcp_checksum(addresses: int, tcp_length: int, sport: int, dport: int, seq: int, ack: int,
                  offset_flags: int, window: int, urg_ptr: int, options: bytes,
                  payload: Buffer) -> int:
    """The TCP checksum field (RFC 9293 §3.1) from the header's field values.

    One big-integer pass over the payload only: every header word's contribution to the
    ones'-complement sum is taken from the field values (a 16/32-bit field is congruent to
    the sum of its words modulo 0xFFFF, see :mod:`tcpcryptd.packet.checksum`); ``addresses``
    is any integer congruent to the pseudo-header's addresses (their sum, or both read as
    one integer). The true sum is non-zero (the pseudo-header holds protocol 6), so residue
    0 means checksum 0.
    """
    residue = (
        addresses
        + _PROTO_TCP
        + tcp_length
        + _header_residue(sport, dport, seq, ack, offset_flags, window, urg_ptr, options)
        + residue_of(payload)
    ) % 0xFFFF
    return 0xFFFF - residue if residue else 0


def _header_residue(sport: int, dport: int, seq: int, ack: int, offset_flags: int,
                    window: int, urg_ptr: int, options: bytes) -> int:
    """A number congruent (mod 0xFFFF) to the sum of the TCP header's words, checksum 0:
    each 16/32-bit field is congruent to the sum of its words, the options are short."""
    return (sport + dport + seq + ack + offset_flags + window + urg_ptr
            + int.from_bytes(options, "big"))


def _ip_header_with_length(ip_header: Buffer, version: int, change: int) -> bytes:
    """The IP header (with IPv6 extension headers) with its length field moved by ``change``."""
    header = bytearray(ip_header)
    if version == 4:
        total = int.from_bytes(header[2:4], "big") + change
        if total > _MAX_IP_LENGTH:
            raise ValueError("IPv4 packet longer than 65535 bytes")
        header[2:4] = total.to_bytes(2, "big")
        header[10:12] = ipv4_header_checksum(header).to_bytes(2, "big")
    else:
        payload_length = int.from_bytes(header[4:6], "big") + change
        if payload_length > _MAX_IP_LENGTH:
            raise ValueError("IPv6 payload longer than 65535 bytes")
        header[4:6] = payload_length.to_bytes(2, "big")
    return bytes(header)


def _encode(
    version: int,
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    urg_ptr: int,
    options: bytes,
    payload: Buffer,
    ttl: int,
    df: bool,
    tos: int,
    ip_id: int,
    flow_label: int,
    ip_options: bytes,
    ext_headers: bytes,
    ip6_next_header: int,
) -> bytes:
    """Serialise IP + TCP with correct lengths and full checksums (RFC 791, 8200, 9293).

    The TCP checksum as :func:`_tcp_checksum` computes it; the IPv4 header checksum likewise
    from the field values (its true sum is non-zero: version 4).
    """
    if version == 4:
        address_length = 4
    elif version == 6:
        address_length = 16
    else:
        raise ValueError(f"IP version {version}")
    if len(src) != address_length or len(dst) != address_length:
        raise ValueError(f"IPv{version} addresses are {address_length} bytes")
    options_length = len(options)
    if options_length & 3 or options_length > _MAX_OPTIONS_LEN:
        raise ValueError("TCP options must be a multiple of 4 bytes, at most 40")
    if flags & ~_FLAG_BITS:
        raise ValueError("TCP flags are 12 bits")
    header_length = 20 + options_length
    tcp_length = header_length + len(payload)
    offset_flags = (header_length << 10) | flags
    addresses = int.from_bytes(src, "big") + int.from_bytes(dst, "big")
    checksum = _tcp_checksum(addresses, tcp_length, sport, dport, seq, ack, offset_flags, window,
                             urg_ptr, options, payload)
    if version == 4:
        ip_options_length = len(ip_options)
        if ip_options_length & 3 or ip_options_length > 40:
            raise ValueError("IPv4 options must be a multiple of 4 bytes, at most 40")
        ip_header_length = 20 + ip_options_length
        total = ip_header_length + tcp_length
        if total > _MAX_IP_LENGTH:
            raise ValueError("IPv4 packet longer than 65535 bytes")
        vihl = 0x40 | (ip_header_length >> 2)
        frag = _IPV4_DF if df else 0
        ip_residue = (
            ((vihl << 8) | tos)
            + total
            + ip_id
            + frag
            + ((ttl << 8) | _PROTO_TCP)
            + addresses
            + int.from_bytes(ip_options, "big")
        ) % 0xFFFF
        ip_checksum = 0xFFFF - ip_residue if ip_residue else 0
        if not ip_options_length:
            return b"".join((
                _IPV4_TCP_HEADERS.pack(
                    vihl, tos, total, ip_id, frag, ttl, _PROTO_TCP, ip_checksum, src, dst,
                    sport, dport, seq, ack, offset_flags, window, checksum, urg_ptr,
                ),
                options,
                payload,
            ))
        ip_header = (
            _IPV4_HEADER.pack(
                vihl, tos, total, ip_id, frag, ttl, _PROTO_TCP, ip_checksum, src, dst
            )
            + ip_options
        )
    else:
        payload_length = len(ext_headers) + tcp_length
        if payload_length > _MAX_IP_LENGTH:
            raise ValueError("IPv6 payload longer than 65535 bytes")
        ip_header = (
            _IPV6_HEADER.pack(
                (6 << 28) | (tos << 20) | flow_label,
                payload_length,
                ip6_next_header if ext_headers else _PROTO_TCP,
                ttl,
                src,
                dst,
            )
            + ext_headers
        )
    tcp_header = _TCP_HEADER.pack(sport, dport, seq, ack, offset_flags, window, checksum, urg_ptr)
    return b"".join((ip_header, tcp_header, options, payload))


def build(
    version: int,
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    options: bytes = b"",
    payload: Buffer = b"",
    ttl: int = 64,
    df: bool = True,
    tos: int = 0,
    ip_id: int = 0,
    urg_ptr: int = 0,
) -> bytes:
    """A packet the engine makes itself (Init2, its own ACKs, rekey frames; docs/ARCHITECTURE.md
    "Packets the engine builds").

    ``options`` must already be padded to a multiple of 4 (see
    :mod:`tcpcryptd.packet.options`). ``df`` and ``ip_id`` apply to IPv4 only; ``tos`` is
    the traffic class for IPv6, ``ttl`` the hop limit. ValueError for a bad version, address
    or options length or an oversized packet; ``struct.error`` for a field out of range.
    """
    return _encode(
        version,
        src,
        dst,
        sport,
        dport,
        seq,
        ack,
        flags,
        window,
        urg_ptr,
        options,
        payload,
        ttl,
        df,
        tos,
        ip_id,
        0,
        b"",
        b"",
        _PROTO_TCP,
    )
