"""Encryption frames and the streaming decoder (RFC 8548 §3.6, §3.7, §4.2)."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpcryptd.core.aead import TrafficKey, aead_algorithm
from tcpcryptd.core.constants import AEADId
from tcpcryptd.core.errors import FrameAuthError, FrameError, TcpcryptError
from tcpcryptd.core.frame import (
    FRAME_OVERHEAD,
    FRAME_OVERHEAD_URGENT,
    MAX_FRAME_DATA,
    MAX_FRAME_DATA_URGENT,
    Frame,
    FrameDecoder,
    decode_frame,
    encode_frame,
    frame_length,
)
from tcpcryptd.core.session import Session

AES128 = aead_algorithm(AEADId.AES_128_GCM)
MATERIAL = bytes(range(100, 128))
KEY = TrafficKey(AES128, MATERIAL)
SS = bytes(range(32))


def session_pair() -> tuple[Session, Session]:
    """A sender and a receiver on one fixed session secret (no handshake needed here)."""
    return (Session("A", 0x23, AES128, SS, b"", sends_with_k_ab=True),
            Session("B", 0x23, AES128, SS, b"", sends_with_k_ab=False))


def aes_nonce(offset: int) -> bytes:
    frame_id = bytes(4) + offset.to_bytes(8, "big")
    return bytes(a ^ b for a, b in zip(frame_id, MATERIAL[16:], strict=True))


def test_layout_known_answer() -> None:
    """control | clen | AES-GCM(K, frame_ID XOR NR, flags | urgent | data, AD = header)."""
    frame = encode_frame(KEY, 77, b"payload", rekey=True, fin=True, urgent=3)
    clen = 1 + 2 + 7 + 16
    assert frame[:3] == bytes([0x01]) + struct.pack(">H", clen)
    assert len(frame) == 3 + clen == 7 + FRAME_OVERHEAD_URGENT
    plaintext = AESGCM(MATERIAL[:16]).decrypt(aes_nonce(77), frame[3:], frame[:3])
    assert plaintext == b"\x03\x00\x03payload"
    plain = encode_frame(KEY, 0, b"xy")
    assert len(plain) == 2 + FRAME_OVERHEAD and plain[0] == 0
    assert AESGCM(MATERIAL[:16]).decrypt(aes_nonce(0), plain[3:], plain[:3]) == b"\x00xy"


@pytest.mark.parametrize(("rekey", "fin", "urgent"),
                         [(False, False, None), (True, False, None), (False, True, 0),
                          (True, True, 65535)])
def test_round_trip(rekey: bool, fin: bool, urgent: int | None) -> None:
    frame = encode_frame(KEY, 1234, memoryview(b"data!"), rekey=rekey, fin=fin, urgent=urgent)
    decoded = decode_frame(KEY, 1234, frame, generation=5)
    assert decoded == Frame(1234, len(frame), rekey, fin, urgent, b"data!", 5)


def test_empty_frame() -> None:
    frame = encode_frame(KEY, 9, b"")
    assert len(frame) == FRAME_OVERHEAD
    assert decode_frame(KEY, 9, frame).data == b""


def test_size_limits() -> None:
    frame = encode_frame(KEY, 0, bytes(MAX_FRAME_DATA))
    assert (frame[1] << 8 | frame[2]) == 65535
    assert decode_frame(KEY, 0, frame).data == bytes(MAX_FRAME_DATA)
    with pytest.raises(ValueError):
        encode_frame(KEY, 0, bytes(MAX_FRAME_DATA + 1))
    assert len(encode_frame(KEY, 0, bytes(MAX_FRAME_DATA_URGENT), urgent=1)) == 65538
    with pytest.raises(ValueError):
        encode_frame(KEY, 0, bytes(MAX_FRAME_DATA_URGENT + 1), urgent=1)
    for urgent in (-1, 65536):
        with pytest.raises(ValueError):
            encode_frame(KEY, 0, b"x", urgent=urgent)


def _raw_frame(control: int, plaintext: bytes, offset: int = 0) -> bytes:
    header = struct.pack(">BH", control, len(plaintext) + 16)
    return header + KEY.seal(offset, plaintext, header)


def test_reserved_bits_ignored_but_authenticated() -> None:
    """cres and fres are ignored on receipt; cres is still part of the AD as received."""
    frame = _raw_frame(0xFE, b"\xfc" + b"abc")
    decoded = decode_frame(KEY, 0, frame)
    assert (decoded.rekey, decoded.fin, decoded.urgent, decoded.data) == (False, False, None,
                                                                          b"abc")
    with pytest.raises(FrameAuthError):
        decode_frame(KEY, 0, b"\x00" + frame[1:])


def test_urgent_field_too_short() -> None:
    for plaintext in (b"\x02", b"\x02\x00"):
        with pytest.raises(FrameError):
            decode_frame(KEY, 0, _raw_frame(0, plaintext))
    assert decode_frame(KEY, 0, _raw_frame(0, b"\x02\x00\x07")).urgent == 7


def test_decode_frame_errors() -> None:
    frame = encode_frame(KEY, 0, b"abc")
    for bad in (b"", frame[:2], frame[:-1], frame + b"\x00"):
        with pytest.raises(FrameError):
            decode_frame(KEY, 0, bad)
    with pytest.raises(FrameError, match="clen"):
        decode_frame(KEY, 0, b"\x00\x00\x10" + bytes(16))
    with pytest.raises(FrameAuthError):
        decode_frame(KEY, 1, frame)


def test_frame_length() -> None:
    assert frame_length(b"\x00\x00") is None
    assert frame_length(b"\x01\x00\x11") == 20
    with pytest.raises(FrameError):
        frame_length(b"\x00\x00\x10")


# --- FrameDecoder -------------------------------------------------------------------------


def _stream(sender: Session, start: int, payloads: list[bytes]) -> tuple[bytes, list[bytes]]:
    wire, offset = b"", start
    for i, data in enumerate(payloads):
        frame = sender.seal(offset, data, fin=i == len(payloads) - 1)
        wire += frame
        offset += len(frame)
    return wire, payloads


def test_decoder_whole_stream() -> None:
    sender, receiver = session_pair()
    wire, payloads = _stream(sender, 75, [b"a", b"", b"bc" * 100, b"end"])
    decoder = FrameDecoder(receiver, 75)
    frames = decoder.feed(wire)
    assert [f.data for f in frames] == payloads
    assert [f.fin for f in frames] == [False, False, False, True]
    assert frames[1].offset == 75 + len(b"a") + FRAME_OVERHEAD
    assert decoder.offset == 75 + len(wire) and decoder.buffered == 0


def test_decoder_every_split_point() -> None:
    sender, _ = session_pair()
    wire, payloads = _stream(sender, 0, [b"one", b"two" * 7, b"", b"four"])
    for cut in range(len(wire) + 1):
        for cut2 in (cut, min(len(wire), cut + 5)):
            _, receiver = session_pair()
            decoder = FrameDecoder(receiver, 0)
            frames = decoder.feed(wire[:cut]) + decoder.feed(wire[cut:cut2]) + decoder.feed(
                wire[cut2:])
            assert [f.data for f in frames] == payloads


@settings(max_examples=60, deadline=None)
@given(payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=6), data=st.data())
def test_decoder_arbitrary_chunking(payloads: list[bytes], data: st.DataObject) -> None:
    sender, receiver = session_pair()
    wire, _ = _stream(sender, 3, payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=20)))
    decoder = FrameDecoder(receiver, 3)
    frames: list[Frame] = []
    previous = 0
    for cut in [*cuts, len(wire)]:
        frames += decoder.feed(wire[previous:cut])
        previous = cut
    assert [f.data for f in frames] == payloads


def test_decoder_big_frame_byte_by_byte() -> None:
    sender, receiver = session_pair()
    frame = sender.seal(0, bytes(range(256)) * 255)
    decoder = FrameDecoder(receiver, 0)
    view = memoryview(frame)
    for i in range(len(frame) - 1):
        assert decoder.feed(view[i : i + 1]) == []
    assert decoder.buffered == len(frame) - 1
    (last,) = decoder.feed(view[-1:])
    assert last.data == bytes(range(256)) * 255 and decoder.buffered == 0


def test_decoder_rejects_small_clen_at_once_and_stays_dead() -> None:
    _, receiver = session_pair()
    decoder = FrameDecoder(receiver, 0)
    assert decoder.feed(b"\x00") == []
    with pytest.raises(FrameError):
        decoder.feed(b"\x00\x05")
    with pytest.raises(FrameError, match="already failed"):
        decoder.feed(b"")


def test_decoder_auth_failure_after_good_frame() -> None:
    sender, receiver = session_pair()
    good = sender.seal(0, b"good")
    bad = bytearray(sender.seal(len(good), b"evil"))
    bad[-1] ^= 0x80
    decoder = FrameDecoder(receiver, 0)
    assert [f.data for f in decoder.feed(good)] == [b"good"]
    with pytest.raises(FrameAuthError):
        decoder.feed(bytes(bad))
    with pytest.raises(FrameError):
        decoder.feed(b"")


def test_flipped_bit_anywhere_never_yields_data() -> None:
    """Every single-bit flip of a frame: an error, or (longer clen) waiting, never data."""
    sender, _ = session_pair()
    frame = sender.seal(0, b"secret data")
    for bit in range(len(frame) * 8):
        tampered = bytearray(frame)
        tampered[bit // 8] ^= 1 << (bit % 8)
        _, receiver = session_pair()
        decoder = FrameDecoder(receiver, 0)
        try:
            assert decoder.feed(bytes(tampered)) == []
        except (FrameAuthError, FrameError):
            pass
        _, receiver = session_pair()
        with pytest.raises(FrameError):
            receiver.open(0, bytes(tampered))


@settings(max_examples=300)
@given(chunks=st.lists(st.binary(max_size=80), max_size=8))
def test_decoder_any_bytes(chunks: list[bytes]) -> None:
    _, receiver = session_pair()
    decoder = FrameDecoder(receiver, 0)
    try:
        for chunk in chunks:
            assert decoder.feed(chunk) == []
    except TcpcryptError:
        pass
