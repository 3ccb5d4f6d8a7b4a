"""Encryption frames (RFC 8548 §3.6, §3.7, §4.2) and a streaming frame decoder.

::

    frame     = control(1) | clen(2, BE) | ciphertext(clen)
    control   = cres(7 bits: send 0, ignore) | rekey(bit 0)
    plaintext = flags(1) | data                    (URGp = 0)
              | flags(1) | urgent(2, BE) | data    (URGp = 1)
    flags     = fres(6 bits: send 0, ignore) | URGp(bit 1) | FINp(bit 0)
    AD        = control | clen                     (exactly the header bytes as received)
    nonce     = frame_ID XOR NR                    (see tcpcryptd.core.aead)

``offset`` is the frame's position in the wire stream, counted from the first byte after the
SYN, Init messages included (README.md "Readings of the RFCs").
``clen`` <= 65535, so a frame carries at most :data:`MAX_FRAME_DATA` bytes of data
(:data:`MAX_FRAME_DATA_URGENT` with URGp).

Receive-side errors: ``clen`` too small for tag and flags, or for the urgent field once
decrypted, raises :class:`FrameError`; AEAD FAIL raises :class:`FrameAuthError`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from tcpcryptd.core.aead import AEAD_ALGORITHMS, TrafficKey
from tcpcryptd.core.errors import FrameError

_HEADER = struct.Struct(">BH")
_URGENT_PREFIX = struct.Struct(">BH")

#: control | clen
HEADER_LEN = _HEADER.size
#: Largest clen: the ciphertext MUST be shorter than 2^16 bytes (RFC 8548 §3.6).
MAX_CLEN = 0xFFFF
#: control bit 0 (RFC 8548 §4.2).
CONTROL_REKEY = 0x01
#: flags bit 0 and bit 1 (RFC 8548 §4.2.1).
FLAG_FINP = 0x01
FLAG_URGP = 0x02
FLAGS_LEN = 1
URGENT_LEN = 2
MAX_URGENT = 0xFFFF
_FLAGS_NONE = b"\x00"
_FLAGS_FIN = bytes((FLAG_FINP,))

#: Tag length of every RFC 8548 AEAD (§6); frame limits below rely on it being the same.
TAG_LEN = 16
assert all(alg.tag_len == TAG_LEN for alg in AEAD_ALGORITHMS.values())

#: Smallest valid clen: tag plus the flags byte.
MIN_CLEN = TAG_LEN + FLAGS_LEN
#: Wire bytes a frame adds to its data without / with URGp (RFC 8548 §4.2): 20 / 22.
FRAME_OVERHEAD = HEADER_LEN + FLAGS_LEN + TAG_LEN
FRAME_OVERHEAD_URGENT = FRAME_OVERHEAD + URGENT_LEN
#: Most data bytes in one frame without / with URGp: 65518 / 65516.
MAX_FRAME_DATA = MAX_CLEN - FLAGS_LEN - TAG_LEN
MAX_FRAME_DATA_URGENT = MAX_FRAME_DATA - URGENT_LEN


@dataclass(slots=True)
class Frame:
    """One verified, decrypted frame.

    ``offset``: position of its control byte in the wire stream; ``length``: wire bytes
    (header + ciphertext); ``urgent``: the urgent field or ``None`` without URGp (RFC 8548
    §3.7: frame offset + urgent = index of the last urgent byte in the application stream);
    ``generation``: key generation it was decrypted with; ``needs_rekey_reply``: set by
    :meth:`tcpcryptd.core.session.Session.open` when RFC 8548 §3.8 obliges the receiver to
    send a rekey=1 frame at once.
    """

    offset: int
    length: int
    rekey: bool
    fin: bool
    urgent: int | None
    data: bytes
    generation: int = 0
    needs_rekey_reply: bool = False


def encode_frame(key: TrafficKey, offset: int, data: bytes | bytearray | memoryview, *,
                 rekey: bool = False, fin: bool = False, urgent: int | None = None) -> bytes:
    """Build the wire bytes of one frame at ``offset`` (RFC 8548 §4.2).

    ``ValueError`` if the data does not fit in one frame or ``urgent`` is out of 0..65535.
    """
    if urgent is None:
        plaintext = (_FLAGS_FIN if fin else _FLAGS_NONE) + data
    else:
        if not 0 <= urgent <= MAX_URGENT:
            raise ValueError(f"urgent {urgent} outside 0..{MAX_URGENT}")
        plaintext = _URGENT_PREFIX.pack((FLAG_FINP if fin else 0) | FLAG_URGP, urgent) + data
    clen = len(plaintext) + TAG_LEN
    if clen > MAX_CLEN:
        raise ValueError(f"{len(data)} data bytes do not fit in one frame (clen {clen})")
    header = _HEADER.pack(CONTROL_REKEY if rekey else 0, clen)
    return header + key.seal(offset, plaintext, header)


def frame_length(buf: bytes | bytearray | memoryview, pos: int = 0) -> int | None:
    """Wire length of the frame at ``buf[pos]``; ``None`` until its header is there.

    :class:`FrameError` if ``clen`` is too small for tag and flags.
    """
    if len(buf) - pos < HEADER_LEN:
        return None
    clen = (buf[pos + 1] << 8) | buf[pos + 2]
    if clen < MIN_CLEN:
        raise FrameError(f"clen {clen} shorter than tag and flags ({MIN_CLEN})")
    return HEADER_LEN + clen


def whole_frames(buf: bytes | bytearray | memoryview) -> Iterator[tuple[int, int]]:
    """``(start, length)`` of each whole frame at the start of the in-order stream ``buf``,
    in order, up to the first incomplete one (whose bytes the caller keeps for later).

    Lazy: a header is read only once the caller has taken the frame before it (the engine
    stops at a FINp frame before looking further).  :class:`FrameError` at a header whose
    ``clen`` is too small.
    """
    pos, total = 0, len(buf)
    while True:
        length = frame_length(buf, pos)
        if length is None or total - pos < length:
            return
        yield pos, length
        pos += length


def decode_frame(key: TrafficKey, offset: int, frame: bytes | bytearray | memoryview, *,
                 generation: int = 0) -> Frame:
    """Verify and decrypt one whole frame at ``offset``.

    ``frame`` must be exactly one frame.  Raises :class:`FrameError` (malformed) or
    :class:`FrameAuthError` (AEAD FAIL); never returns unverified data.
    """
    length = len(frame)
    if length < HEADER_LEN or HEADER_LEN + ((frame[1] << 8) | frame[2]) != length:
        raise FrameError(f"{length} bytes are not exactly one frame")
    if length < HEADER_LEN + MIN_CLEN:
        raise FrameError(f"clen {length - HEADER_LEN} shorter than tag and flags ({MIN_CLEN})")
    plaintext = key.open(offset, frame[HEADER_LEN:], frame[:HEADER_LEN])
    flags = plaintext[0]
    if flags & FLAG_URGP:
        if len(plaintext) < FLAGS_LEN + URGENT_LEN:
            raise FrameError("URGp frame too short for the urgent field")
        urgent: int | None = (plaintext[1] << 8) | plaintext[2]
        data = plaintext[FLAGS_LEN + URGENT_LEN :]
    else:
        urgent = None
        data = plaintext[FLAGS_LEN:]
    return Frame(offset, length, bool(frame[0] & CONTROL_REKEY), bool(flags & FLAG_FINP), urgent,
                 data, generation)


class FrameOpener(Protocol):
    """What :class:`FrameDecoder` needs from a session (see ``Session.open``)."""

    def open(self, offset: int, frame: bytes) -> Frame: ...


class FrameDecoder:
    """Cuts the in-order wire stream of one direction into verified frames.

    ``feed`` takes arbitrary chunks (down to single bytes) and returns the frames completed
    by them, each verified by ``session.open`` (which picks the key from the rekey bit).
    Consumed bytes are dropped from the front of a ``bytearray`` (amortised O(1) in CPython),
    so a 64 KiB frame fed byte by byte costs linear time.  After an error the decoder is
    dead: every later ``feed`` raises :class:`FrameError`.  Frames completed in the same
    ``feed`` call as a failing frame are not returned (the connection is aborted anyway).
    """

    __slots__ = ("_session", "_buf", "_offset", "_failed")

    def __init__(self, session: FrameOpener, start_offset: int) -> None:
        self._session = session
        self._buf = bytearray()
        self._offset = start_offset
        self._failed = False

    @property
    def offset(self) -> int:
        """Wire offset of the next frame (the first byte not yet returned in a frame)."""
        return self._offset

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self._buf)

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[Frame]:
        """Add the next bytes of the stream; return the frames they complete."""
        if self._failed:
            raise FrameError("frame stream already failed")
        buf = self._buf
        buf += chunk
        frames: list[Frame] = []
        pos = 0
        try:
            for start, length in whole_frames(buf):
                frames.append(self._session.open(self._offset, bytes(buf[start:start + length])))
                pos = start + length
                self._offset += length
        except FrameError:
            self._failed = True
            raise
        finally:
            del buf[:pos]
        return frames
