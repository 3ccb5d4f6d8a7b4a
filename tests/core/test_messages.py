"""Init1/Init2 codec and bounds (RFC 8548 §4.1, README.md "Readings of the RFCs")."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpcryptd.core.constants import INIT1_MAGIC, INIT2_MAGIC, TEP
from tcpcryptd.core.errors import InitMessageError, TcpcryptError
from tcpcryptd.core.messages import (
    MIN_MESSAGE_LEN,
    Init1,
    Init2,
    encode_init1,
    encode_init2,
    message_length,
    parse_init1,
    parse_init2,
)
from tcpcryptd.core.tep import key_agreement

ALL_TEPS = [TEP.ECDHE_P256, TEP.ECDHE_P521, TEP.ECDHE_CURVE25519, TEP.ECDHE_CURVE448]
# Sizes with one cipher (RFC 8548 §4.1 layout): Init1 = fixed + 2K, Init2.
SIZES = {0x21: (78, 77), 0x22: (112, 111), 0x23: (75, 74), 0x24: (99, 98)}
PUBS = {tep: key_agreement(tep).generate().pub for tep in ALL_TEPS}
N = bytes(range(32))


@pytest.mark.parametrize("tep", ALL_TEPS)
def test_round_trip_and_layout(tep: int) -> None:
    pub = PUBS[tep]
    init1 = encode_init1((0x0001,), N, pub)
    init2 = encode_init2(0x0010, N, pub)
    assert (len(init1), len(init2)) == SIZES[tep]
    assert init1[:4] == b"\x15\x10\x1a\x0e" and init2[:4] == b"\x09\x71\x05\xe0"
    assert struct.unpack(">I", init1[4:8])[0] == len(init1)
    assert init1[8:11] == b"\x01\x00\x01" and init1[11:43] == N and init1[43:] == pub
    assert init2[8:10] == b"\x00\x10" and init2[10:42] == N and init2[42:] == pub
    assert parse_init1(init1, tep) == Init1((0x0001,), N, pub)
    assert parse_init2(init2, tep) == Init2(0x0010, N, pub)
    assert parse_init1(init1, tep).encode() == init1
    assert parse_init2(memoryview(init2), tep).encode() == init2


def _with_len(message: bytes, new_len: int, extra: bytes = b"") -> bytes:
    return message[:4] + struct.pack(">I", new_len) + message[8:] + extra


@pytest.mark.parametrize("tep", ALL_TEPS)
def test_ignored_trailing_bytes(tep: int) -> None:
    init1 = encode_init1((0x0002, 0x0001), N, PUBS[tep])
    longer = _with_len(init1, len(init1) + 5, b"extra")
    assert parse_init1(longer, tep).encode() == init1
    init2 = encode_init2(0x0002, N, PUBS[tep])
    assert parse_init2(_with_len(init2, len(init2) + 1, b"!"), tep).encode() == init2


def test_unknown_ciphers_kept() -> None:
    init1 = encode_init1((0x7777, 0x0001, 0xFFFF), N, PUBS[0x23])
    assert parse_init1(init1, 0x23).sym_ciphers == (0x7777, 0x0001, 0xFFFF)


def test_message_length() -> None:
    init1 = encode_init1((0x0001,), N, PUBS[0x23])
    for cut in range(8):
        assert message_length(init1[:cut], INIT1_MAGIC) is None
    assert message_length(init1[:8], INIT1_MAGIC) == len(init1)
    assert message_length(bytearray(init1), INIT1_MAGIC, max_len=len(init1)) == len(init1)
    with pytest.raises(InitMessageError, match="magic"):
        message_length(init1, INIT2_MAGIC)
    with pytest.raises(InitMessageError, match="exceeds"):
        message_length(init1, INIT1_MAGIC, max_len=len(init1) - 1)
    with pytest.raises(InitMessageError, match="shorter"):
        message_length(_with_len(init1, MIN_MESSAGE_LEN[INIT1_MAGIC] - 1), INIT1_MAGIC)


def test_min_message_len_is_smallest_real_message() -> None:
    assert MIN_MESSAGE_LEN[INIT1_MAGIC] == 75 and MIN_MESSAGE_LEN[INIT2_MAGIC] == 74


@pytest.mark.parametrize("tep", ALL_TEPS)
def test_bounds_errors(tep: int) -> None:
    pub = PUBS[tep]
    init1 = encode_init1((0x0001,), N, pub)
    init2 = encode_init2(0x0001, N, pub)
    cases1 = [
        b"",                                          # nothing
        init1[:20],                                   # truncated
        init1[:-1],                                   # truncated by one
        init1 + b"\x00",                              # beyond message_len
        b"\x00" + init1[1:],                          # bad magic
        init2,                                        # Init2 magic where Init1 is due
        init1[:8] + b"\x00" + init1[9:],              # nciphers = 0
        _with_len(init1, len(init1) - 1)[:-1],        # Pub does not fit
        init1[:8] + b"\xff" + init1[9:],              # 255 ciphers: N_A does not fit
    ]
    for raw in cases1:
        with pytest.raises(InitMessageError):
            parse_init1(raw, tep)
    with pytest.raises(InitMessageError):
        parse_init1(init1, tep, max_len=len(init1) - 1)
    cases2 = [b"", init2[:-1], init2 + b"\x00", init1, _with_len(init2, len(init2) - 1)[:-1]]
    for raw in cases2:
        with pytest.raises(InitMessageError):
            parse_init2(raw, tep)


@pytest.mark.parametrize("tep", [TEP.ECDHE_P256, TEP.ECDHE_P521])
def test_p_curve_pubkey_len_in_message(tep: int) -> None:
    pub = PUBS[tep]
    bare = struct.pack(">H", len(pub) - 2) + pub[2:]
    assert parse_init2(encode_init2(1, N, bare), tep).pub_b == bare
    bad = struct.pack(">H", len(pub) - 1) + pub[2:]
    with pytest.raises(InitMessageError):
        parse_init2(encode_init2(1, N, bad), tep)
    # A message that ends inside pubkey_len: N_A ends at message_len - 1.
    init1 = encode_init1((1,) * 20, N, pub)
    short = _with_len(init1, 9 + 40 + 32 + 1)[: 9 + 40 + 32 + 1]
    with pytest.raises(InitMessageError):
        parse_init1(short, tep)


def test_encode_argument_errors() -> None:
    with pytest.raises(ValueError):
        encode_init1((), N, PUBS[0x23])
    with pytest.raises(ValueError):
        encode_init1((1,) * 256, N, PUBS[0x23])
    with pytest.raises(ValueError):
        encode_init1((1,), N[:31], PUBS[0x23])
    with pytest.raises(ValueError):
        encode_init2(1, N + b"x", PUBS[0x23])


# --- properties -------------------------------------------------------------------------

teps = st.sampled_from(ALL_TEPS)


def _header_led(magic: int) -> st.SearchStrategy[bytes]:
    """Bytes with the right magic and a plausible message_len, to reach the deep checks."""
    return st.builds(
        lambda length, body: struct.pack(">II", magic, length) + body,
        st.integers(min_value=0, max_value=300), st.binary(max_size=300))


@settings(max_examples=300)
@given(raw=st.one_of(st.binary(max_size=200), _header_led(INIT1_MAGIC)), tep=teps)
def test_parse_init1_any_bytes(raw: bytes, tep: int) -> None:
    try:
        parse_init1(raw, tep)
    except TcpcryptError:
        pass


@settings(max_examples=300)
@given(raw=st.one_of(st.binary(max_size=200), _header_led(INIT2_MAGIC)), tep=teps)
def test_parse_init2_any_bytes(raw: bytes, tep: int) -> None:
    try:
        parse_init2(raw, tep)
    except TcpcryptError:
        pass


@given(raw=st.binary(max_size=20), magic=st.sampled_from([INIT1_MAGIC, INIT2_MAGIC]),
       max_len=st.integers(min_value=0, max_value=5000))
def test_message_length_any_bytes(raw: bytes, magic: int, max_len: int) -> None:
    try:
        length = message_length(raw, magic, max_len)
    except TcpcryptError:
        return
    assert length is None or MIN_MESSAGE_LEN[magic] <= length <= max_len


@given(tep=teps, ciphers=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=40),
       n=st.binary(min_size=32, max_size=32), ignored=st.binary(max_size=30))
def test_init1_round_trip(tep: int, ciphers: list[int], n: bytes, ignored: bytes) -> None:
    raw = encode_init1(ciphers, n, PUBS[tep])
    parsed = parse_init1(raw, tep)
    assert parsed == Init1(tuple(ciphers), n, PUBS[tep])
    assert parsed.encode() == raw
    assert parse_init1(_with_len(raw, len(raw) + len(ignored), ignored), tep) == parsed


@given(tep=teps, cipher=st.integers(0, 0xFFFF), n=st.binary(min_size=32, max_size=32),
       ignored=st.binary(max_size=30))
def test_init2_round_trip(tep: int, cipher: int, n: bytes, ignored: bytes) -> None:
    raw = encode_init2(cipher, n, PUBS[tep])
    parsed = parse_init2(raw, tep)
    assert parsed.encode() == raw
    assert parse_init2(_with_len(raw, len(raw) + len(ignored), ignored), tep) == parsed
