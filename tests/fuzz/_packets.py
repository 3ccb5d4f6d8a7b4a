"""Hypothesis strategies and mutations for fuzzed IPv4/IPv6 + TCP packets.

Packets are drawn around a reference: the sequence and acknowledgment numbers of the most
recent real packet of the same direction, so that "near the real values" means something
in every flow state, and far away values are drawn too.  Options come in every shape the
engine reads: ENO (kind 69) in SYN and non-SYN form, well-formed and malformed, SACK, TS,
MSS, window scale, unknown kinds, lengths that lie; payloads are random bytes, Init1/Init2
heads with bad lengths, or real frames with truncations, flipped bytes and garbage tags.
"""

from __future__ import annotations

import struct

from hypothesis import strategies as st

from _bench import M32, Direction, Side, scrub
from tcpcryptd.core.constants import INIT1_MAGIC, INIT2_MAGIC
from tcpcryptd.packet.tcp import ACK, CWR, ECE, FIN, PSH, RST, SYN, URG, PacketError, TCPPacket, build

#: Flag combinations worth drawing on their own (besides any 12-bit value).
FLAG_COMBOS = (SYN, SYN | ACK, ACK, ACK | PSH, FIN | ACK, FIN, RST, RST | ACK, URG | ACK,
               URG | ACK | PSH, SYN | FIN, SYN | RST, SYN | FIN | RST | URG,
               SYN | FIN | RST | URG | ACK | PSH, ECE | CWR | ACK, SYN | ECE | CWR, 0, 0xFFF)
#: message_len values around the Init messages' real and bounding lengths.
INIT_LENGTHS = (0, 1, 7, 8, 9, 10, 11, 42, 43, 73, 74, 75, 78, 79, 80, 4095, 4096, 4097,
                1 << 16, 0x7FFFFFFF, 0xFFFFFFFF)
#: Timer steps that cross the engine's timeouts (RTOs, linger, tombstone, handshake, idle).
TIME_STEPS = (0.0, 0.001, 0.2, 0.5, 1.0, 2.0, 5.0, 5.001, 30.0, 60.0, 61.0, 75.0, 120.0,
              600.0, 661.0, 7200.0, 7201.0)

_U32 = st.integers(0, M32)


def near(ref: int) -> st.SearchStrategy[int]:
    """A 32-bit number near ``ref`` (both sides, across the wrap), far from it, or any."""
    return st.one_of(
        st.integers(-3, 3).map(lambda d: (ref + d) & M32),
        st.integers(-70_000, 70_000).map(lambda d: (ref + d) & M32),
        st.sampled_from((1 << 31, (1 << 31) - 1, (1 << 31) + 1, 1 << 20, -(1 << 20), 1 << 30))
        .map(lambda d: (ref + d) & M32),
        _U32,
    )


def _sack(ref: int) -> st.SearchStrategy[bytes]:
    blocks = st.lists(st.tuples(near(ref), near(ref)), max_size=4)
    return st.one_of(
        blocks.map(lambda bs: bytes([5, 2 + 8 * len(bs)])
                   + b"".join(struct.pack("!II", lo, hi) for lo, hi in bs)),
        st.tuples(st.integers(0, 255), blocks).map(
            lambda t: bytes([5, t[0]]) + b"".join(struct.pack("!II", lo, hi) for lo, hi in t[1])),
    )


def _eno(syn_form_body: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """ENO option 69: SYN form with suboptions, non-SYN ``45 02``, malformed lengths."""
    tep_bytes = st.lists(st.sampled_from((0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0xA0, 0xA1, 0xA5,
                                          0x00, 0x01, 0x10, 0x7F, 0x80, 0x81, 0xFF)), max_size=6)
    return st.one_of(
        st.sampled_from((b"\x45\x02", b"\x45\x00", b"\x45\x01", b"\x45\xff", b"\x45",
                         b"\x45\x03", b"\x45\x28")),
        tep_bytes.map(lambda body: bytes([0x45, 2 + len(body)]) + bytes(body)),
        syn_form_body.map(lambda body: bytes([0x45, 2 + len(body)]) + body),
        st.tuples(st.integers(0, 255), syn_form_body).map(
            lambda t: bytes([0x45, t[0]]) + t[1]),
    )


def option_bytes(ref: int) -> st.SearchStrategy[bytes]:
    """TCP option bytes of every shape, padded to a multiple of 4 and cut at 40."""
    atom = st.one_of(
        st.sampled_from((b"\x00", b"\x01", b"\x04\x02", b"\x04\x03", b"\x02", b"\x08",
                         b"\x05\x01", b"\x22\x02")),
        st.integers(0, 0xFFFF).map(lambda mss: b"\x02\x04" + struct.pack("!H", mss)),
        st.integers(0, 255).map(lambda shift: b"\x03\x03" + bytes([shift])),
        st.tuples(_U32, _U32).map(lambda ts: b"\x08\x0a" + struct.pack("!II", *ts)),
        _sack(ref),
        _eno(st.binary(max_size=14)),
        st.binary(min_size=2, max_size=10).map(lambda b: bytes([b[0] | 0x10, len(b)]) + b[2:]),
        st.binary(max_size=12),
    )
    return st.lists(atom, max_size=6).map(_pad_options)


def _pad_options(atoms: list[bytes]) -> bytes:
    raw = b"".join(atoms)[:40]
    return raw + bytes(-len(raw) % 4)


def init_head(magic: int) -> st.SearchStrategy[bytes]:
    """An Init1/Init2 start with a ``message_len`` that may lie, and some body."""
    return st.tuples(st.sampled_from(INIT_LENGTHS) | _U32, st.binary(max_size=120)).map(
        lambda t: struct.pack("!II", magic, t[0]) + t[1])


def payload(side: Side, direction: Direction) -> st.SearchStrategy[bytes]:
    """A segment payload: empty, random, an Init head, or a mutated real frame."""
    frames = [bytes(TCPPacket.parse(raw).payload) for raw in side.history[direction]
              if _parses(raw) and len(TCPPacket.parse(raw).payload)]
    choices = [st.just(b""), st.binary(max_size=600),
               st.sampled_from((INIT1_MAGIC, INIT2_MAGIC)).flatmap(init_head)]
    if frames:
        choices.append(st.sampled_from(frames).flatmap(frame_mutation))
    return st.one_of(choices).map(scrub)


def frame_mutation(frame: bytes) -> st.SearchStrategy[bytes]:
    """A real frame (or Init message) truncated, with a garbage tag, a flipped byte, padded."""
    n = len(frame)
    return st.one_of(
        st.just(frame),
        st.integers(0, max(n - 1, 0)).map(lambda k: frame[:k]),
        st.integers(0, max(n - 1, 0)).map(lambda k: frame[k:]),
        st.binary(min_size=16, max_size=16).map(lambda tag: frame[:-16] + tag),
        st.tuples(st.integers(0, max(n - 1, 0)), st.integers(1, 255)).map(
            lambda t: frame[:t[0]] + bytes([frame[t[0]] ^ t[1]]) + frame[t[0] + 1:] if n else frame),
        st.binary(min_size=1, max_size=64).map(lambda junk: frame + junk),
        st.just(frame + frame),
    )


def _parses(raw: bytes) -> bool:
    try:
        TCPPacket.parse(raw)
    except PacketError:
        return False
    return True


def reference(side: Side, direction: Direction) -> tuple[int, int]:
    """(seq, ack) of the latest parseable packet of ``direction`` at ``side``'s engine."""
    for raw in reversed(side.history[direction]):
        if _parses(raw):
            pkt = TCPPacket.parse(raw)
            return pkt.seq, pkt.ack
    return (side.snd_next, side.rcv_next or 0) if direction is Direction.OUTBOUND else (
        side.rcv_next or 0, side.snd_next)


@st.composite
def header_packet(draw: st.DrawFn, side: Side, direction: Direction, *,
                  body: st.SearchStrategy[bytes] | None = None,
                  flags: st.SearchStrategy[int] | None = None, main: bool = False) -> bytes:
    """A well-formed packet of (mostly; ``main``: only) the main connection with fuzzed
    header fields."""
    seq_ref, ack_ref = reference(side, direction)
    version = side.version if main else draw(
        st.sampled_from((side.version, side.version, side.version, 10 - side.version)))
    if version == side.version:
        local, remote = side.ip, side.peer_ip
    else:
        local, remote = (bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) if version == 4 else (
            bytes(15) + b"\x01", bytes(15) + b"\x02")
    local_port, remote_port = (side.port, side.peer_port) if main else (
        draw(st.sampled_from((side.port,) * 6 + (side.peer_port, 1, 65535)) | st.integers(1, 65535)),
        draw(st.sampled_from((side.peer_port,) * 6 + (side.port,)) | st.integers(0, 65535)))
    src, dst, sport, dport = ((local, remote, local_port, remote_port)
                              if direction is Direction.OUTBOUND
                              else (remote, local, remote_port, local_port))
    return build(
        version, src, dst, sport, dport, draw(near(seq_ref)), draw(near(ack_ref)),
        draw(flags if flags is not None else st.sampled_from(FLAG_COMBOS) | st.integers(0, 0xFFF)),
        draw(st.sampled_from((65535, 0, 1, 502)) | st.integers(0, 0xFFFF)),
        draw(option_bytes(ack_ref)),
        draw(body if body is not None else payload(side, direction)),
        ttl=draw(st.sampled_from((64, 0, 1, 255))),
        df=draw(st.booleans()),
        tos=draw(st.sampled_from((0, 0xFF)) | st.integers(0, 255)),
        urg_ptr=draw(st.sampled_from((0, 0, 1, 0xFFFF)) | st.integers(0, 0xFFFF)),
    )


def _tcp_start(raw: bytes) -> int:
    return (raw[0] & 15) * 4 if raw[0] >> 4 == 4 else 40


@st.composite
def damaged(draw: st.DrawFn, raw: bytes) -> bytes:
    """``raw`` with up to three damages: checksums, lengths, data offset, bytes, truncation."""
    out = bytearray(raw)
    for kind in draw(st.lists(st.sampled_from(("tcp-checksum", "ip-checksum", "ip-length",
                                               "data-offset", "bytes", "truncate", "extend")),
                              max_size=3)):
        if len(out) < 40:
            break
        tcp = _tcp_start(out)
        if kind == "tcp-checksum" and len(out) >= tcp + 18:
            out[tcp + 16] ^= draw(st.integers(1, 255))
        elif kind == "ip-checksum" and out[0] >> 4 == 4:
            out[10] ^= draw(st.integers(1, 255))
        elif kind == "ip-length":
            at = 2 if out[0] >> 4 == 4 else 4
            out[at:at + 2] = struct.pack("!H", draw(st.integers(0, 0xFFFF)))
        elif kind == "data-offset" and len(out) >= tcp + 13:
            out[tcp + 12] = (draw(st.integers(0, 15)) << 4) | (out[tcp + 12] & 15)
        elif kind == "bytes":
            for position, value in draw(st.lists(st.tuples(st.integers(0, len(out) - 1),
                                                           st.integers(0, 255)), max_size=4)):
                out[position] = value
        elif kind == "truncate":
            del out[draw(st.integers(0, len(out) - 1)):]
        elif kind == "extend":
            out += draw(st.binary(min_size=1, max_size=40))
    return bytes(out)


@st.composite
def fuzz_packet(draw: st.DrawFn, side: Side, direction: Direction) -> bytes:
    """Any packet for ``side``'s engine in ``direction``: random bytes, a fuzzed header, a
    damaged real packet; never carrying the plaintext marker."""
    templates = list(side.history[direction])
    sources = [
        st.binary(max_size=120),
        st.tuples(st.sampled_from((b"\x45", b"\x46", b"\x4f", b"\x60", b"\x40", b"\x50")),
                  st.binary(min_size=19, max_size=120)).map(lambda t: t[0] + t[1]),
        header_packet(side, direction),
        header_packet(side, direction).flatmap(damaged),
    ]
    if templates:
        sources.append(st.sampled_from(templates).flatmap(damaged))
    return scrub(draw(st.one_of(sources)))
