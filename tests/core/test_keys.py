"""Key schedule (RFC 8548 §3.3-§3.5) against RFC 5869 and a hand-written HKDF."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcpcryptd.core.keys import (
    PRF,
    KeySchedule,
    compute_prk,
    cprf,
    extract,
    first_master_key,
    next_master_key,
    next_session_secret,
    resumption_id,
    session_id,
    traffic_keys,
)


def hkdf_expand_by_hand(key: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 §2.3: T(n) = HMAC(PRK, T(n-1) | info | n), n one byte."""
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(key, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def test_rfc5869_case_1() -> None:
    ikm = bytes([0x0B] * 22)
    salt = bytes(range(0x0D))
    info = bytes(range(0xF0, 0xFA))
    prk = extract(salt, ikm)
    assert prk.hex() == "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"
    assert cprf(prk, info, 42).hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")


@given(key=st.binary(min_size=32, max_size=32), info=st.binary(max_size=40),
       length=st.integers(min_value=1, max_value=100))
def test_cprf_is_hkdf_expand(key: bytes, info: bytes, length: int) -> None:
    assert cprf(key, info, length) == hkdf_expand_by_hand(key, info, length)


@given(key=st.binary(max_size=150), messages=st.lists(st.binary(max_size=100), max_size=4))
def test_prf_is_hmac_sha256_for_every_message(key: bytes, messages: list[bytes]) -> None:
    """One keying serves several messages (keys longer than the block are hashed first)."""
    prf = PRF(key)
    for message in messages:
        assert prf.mac(message) == hmac.new(key, message, hashlib.sha256).digest()
    assert repr(prf) == "PRF(HMAC-SHA256)"   # nothing of the key


@pytest.mark.parametrize("key", [b"", bytes(64), bytes(range(65)), b"k" * 200])
def test_prf_keys_of_every_size_against_the_block(key: bytes) -> None:
    """RFC 2104 §2: shorter keys are padded, keys longer than the 64-byte block hashed."""
    assert PRF(key).mac(b"message") == hmac.new(key, b"message", hashlib.sha256).digest()


@pytest.mark.parametrize("length", [0, 255 * 32 + 1])
def test_expand_refuses_lengths_outside_rfc5869(length: int) -> None:
    with pytest.raises(ValueError):
        PRF(bytes(32)).expand(b"\x01", length)


def test_derivations_take_a_keyed_prf_or_the_key() -> None:
    ss, sn = bytes(range(32)), b"n" * 16
    prf = PRF(ss)
    assert session_id(0x23, prf, sn) == session_id(0x23, ss, sn)
    assert first_master_key(prf, sn) == first_master_key(ss, sn)
    assert next_session_secret(prf) == next_session_secret(ss)
    assert KeySchedule(prf, sn, 28).keys(0) == KeySchedule(ss, sn, 28).keys(0)


def test_prk_is_extract_over_concatenation() -> None:
    n_a, transcript, es = b"N" * 32, b"\x45\x03\x23", b"E" * 32
    init1, init2 = b"i1" * 20, b"i2" * 20
    expected = hmac.new(n_a, transcript + init1 + init2 + es, hashlib.sha256).digest()
    assert compute_prk(n_a, transcript, init1, init2, es) == expected


def test_derived_values() -> None:
    ss0 = bytes(range(32))
    ss1 = next_session_secret(ss0)
    assert ss1 == hkdf_expand_by_hand(ss0, b"\x01", 32)
    sn = b"\xaa" * 3 + b"\xbb" * 5
    sid = session_id(0xA3, ss1, sn)
    assert sid == b"\xa3" + hkdf_expand_by_hand(ss1, b"\x02" + sn, 32)
    assert resumption_id(ss1) == hkdf_expand_by_hand(ss1, b"\x06", 18)
    mk0 = first_master_key(ss1, sn)
    assert mk0 == hkdf_expand_by_hand(ss1, b"\x03" + sn, 32)
    assert next_master_key(mk0) == hkdf_expand_by_hand(mk0, b"\x03", 32)
    k_ab, k_ba = traffic_keys(mk0, 28)
    assert k_ab == hkdf_expand_by_hand(mk0, b"\x04", 28)
    assert k_ba == hkdf_expand_by_hand(mk0, b"\x05", 28)


def test_key_schedule_walks_forward() -> None:
    ss, sn = b"s" * 32, b""
    schedule = KeySchedule(ss, sn, 44)
    mk = [hkdf_expand_by_hand(ss, b"\x03", 32)]
    for _ in range(3):
        mk.append(hkdf_expand_by_hand(mk[-1], b"\x03", 32))
    assert schedule.keys(3) == traffic_keys(mk[3], 44)
    assert schedule.newest_generation == 3
    assert schedule.keys(0) == traffic_keys(mk[0], 44)
    assert schedule.keys(1)[0] == hkdf_expand_by_hand(mk[1], b"\x04", 44)


def test_key_schedule_discards() -> None:
    schedule = KeySchedule(b"s" * 32, b"n", 28)
    third = schedule.keys(2)
    schedule.discard_below(2)
    assert schedule.lowest_generation == 2
    with pytest.raises(KeyError):
        schedule.keys(1)
    assert schedule.keys(2) == third
    schedule.discard_below(1)  # never moves back
    assert schedule.lowest_generation == 2
    schedule.discard_below(10)  # the newest derived generation stays
    assert schedule.lowest_generation == 2
    assert schedule.keys(4) == KeySchedule(b"s" * 32, b"n", 28).keys(4)
    assert "2..4" in repr(schedule)
    with pytest.raises(KeyError):
        schedule.keys(-1)
