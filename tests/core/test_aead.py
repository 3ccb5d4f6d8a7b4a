"""AEAD table and traffic keys (RFC 8548 §3.6 Figure 4, §4.2.3, §6 Table 3)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from tcpcryptd.core.aead import (
    AEAD_ALGORITHMS,
    MAX_FRAME_OFFSET,
    TrafficKey,
    aead_algorithm,
)
from tcpcryptd.core.constants import AEADId
from tcpcryptd.core.errors import FrameAuthError

# (id, key length, cryptography class) from RFC 8548 §6 Table 3 and §7 Table 5.
TABLE = [
    (0x0001, 16, AESGCM),
    (0x0002, 32, AESGCM),
    (0x0010, 32, ChaCha20Poly1305),
]


def material_for(key_len: int) -> bytes:
    return bytes(range(1, key_len + 13))


@pytest.mark.parametrize(("alg_id", "key_len", "_cls"), TABLE)
def test_table_lengths(alg_id: int, key_len: int, _cls: type) -> None:
    alg = aead_algorithm(alg_id)
    assert (alg.key_len, alg.nonce_len, alg.tag_len) == (key_len, 12, 16)
    assert alg.traffic_key_len == key_len + 12


def test_table_has_exactly_the_rfc_algorithms() -> None:
    assert set(AEAD_ALGORITHMS) == {AEADId.AES_128_GCM, AEADId.AES_256_GCM,
                                    AEADId.CHACHA20_POLY1305}


def test_unknown_algorithm() -> None:
    with pytest.raises(KeyError):
        aead_algorithm(0x0003)


@pytest.mark.parametrize(("alg_id", "key_len", "cls"), TABLE)
@pytest.mark.parametrize("offset", [0, 1, 75, 0x0123456789ABCDEF, MAX_FRAME_OFFSET])
def test_nonce_is_frame_id_xor_nr(alg_id: int, key_len: int, cls: type, offset: int) -> None:
    """Known answer: encrypt with the AEAD directly under N = (0^4 | offset_be8) XOR NR."""
    material = material_for(key_len)
    key = TrafficKey(aead_algorithm(alg_id), material)
    k, nr = material[:key_len], material[key_len:]
    frame_id = bytes(4) + offset.to_bytes(8, "big")
    nonce = bytes(a ^ b for a, b in zip(frame_id, nr, strict=True))
    assert key.nonce(offset) == nonce
    plaintext, ad = b"\x00hello tcpcrypt", b"\x00\x00\x20"
    expected = cls(k).encrypt(nonce, plaintext, ad)
    assert key.seal(offset, plaintext, ad) == expected
    assert key.open(offset, expected, ad) == plaintext


@pytest.mark.parametrize(("alg_id", "key_len", "_cls"), TABLE)
def test_open_rejects_tampering(alg_id: int, key_len: int, _cls: type) -> None:
    key = TrafficKey(aead_algorithm(alg_id), material_for(key_len))
    sealed = key.seal(10, b"data", b"ad!")
    with pytest.raises(FrameAuthError):
        key.open(11, sealed, b"ad!")  # other offset -> other nonce
    with pytest.raises(FrameAuthError):
        key.open(10, sealed, b"ad?")
    with pytest.raises(FrameAuthError):
        key.open(10, bytes([sealed[0] ^ 1]) + sealed[1:], b"ad!")
    with pytest.raises(FrameAuthError):
        key.open(10, memoryview(sealed)[:5], b"ad!")


def test_open_accepts_memoryview() -> None:
    key = TrafficKey(aead_algorithm(AEADId.AES_128_GCM), material_for(16))
    sealed = key.seal(3, b"abc", b"xyz")
    assert key.open(3, memoryview(b"__" + sealed)[2:], b"xyz") == b"abc"


@pytest.mark.parametrize("offset", [-1, MAX_FRAME_OFFSET + 1])
def test_offset_outside_frame_id(offset: int) -> None:
    key = TrafficKey(aead_algorithm(AEADId.AES_128_GCM), material_for(16))
    with pytest.raises(ValueError):
        key.nonce(offset)
    with pytest.raises(ValueError):
        key.seal(offset, b"x", b"")
    with pytest.raises(ValueError):
        key.open(offset, bytes(17), b"")


@pytest.mark.parametrize("length", [0, 27, 29, 44])
def test_material_length_checked(length: int) -> None:
    with pytest.raises(ValueError):
        TrafficKey(aead_algorithm(AEADId.AES_128_GCM), bytes(length))


def test_material_and_repr() -> None:
    material = material_for(32)
    key = TrafficKey(aead_algorithm(AEADId.CHACHA20_POLY1305), material)
    assert key.material == material
    assert key.algorithm.id == AEADId.CHACHA20_POLY1305
    assert material.hex() not in repr(key) and "ChaCha20" in repr(key)
