"""Key agreement per TEP (RFC 8548 §5): encodings, validation, exchange."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tcpcryptd.core.constants import TEP
from tcpcryptd.core.errors import InitMessageError, KeyAgreementError
from tcpcryptd.core.tep import KEY_AGREEMENTS, key_agreement

ALL_TEPS = [TEP.ECDHE_P256, TEP.ECDHE_P521, TEP.ECDHE_CURVE25519, TEP.ECDHE_CURVE448]
# Pub field on the wire and ES length (RFC 8548 §5; README.md "Readings of the RFCs"
# for pubkey_len).
PUB_FIELD_LEN = {0x21: 35, 0x22: 69, 0x23: 32, 0x24: 56}
ES_LEN = {0x21: 32, 0x22: 66, 0x23: 32, 0x24: 56}
P_CURVES = {0x21: (ec.SECP256R1(), 33), 0x22: (ec.SECP521R1(), 67)}


def test_every_tep_has_a_scheme() -> None:
    assert set(KEY_AGREEMENTS) == set(ALL_TEPS)


def test_lookup_ignores_v_bit_and_rejects_unknown() -> None:
    assert key_agreement(0xA3) is key_agreement(0x23)
    assert "Curve25519" in repr(key_agreement(0x23))
    with pytest.raises(KeyError):
        key_agreement(0x25)


@pytest.mark.parametrize("tep", ALL_TEPS)
def test_exchange_agrees(tep: int) -> None:
    scheme = key_agreement(tep)
    a, b = scheme.generate(), scheme.generate()
    assert len(a.pub) == PUB_FIELD_LEN[tep] == scheme.min_pub_field_len
    assert scheme.pub_field_length(a.pub, 0) == len(a.pub)
    es = a.exchange(b.pub)
    assert es == b.exchange(a.pub)
    assert len(es) == ES_LEN[tep] == scheme.secret_len


@pytest.mark.parametrize("tep", ALL_TEPS)
def test_private_key_round_trip(tep: int) -> None:
    scheme = key_agreement(tep)
    key = scheme.generate()
    again = scheme.load_private(key.private_bytes())
    assert again.pub == key.pub
    assert again.private_bytes() == key.private_bytes()
    assert key.private_bytes().hex() not in repr(key)


def test_x25519_rfc7748_known_answer() -> None:
    """RFC 7748 §6.1 Diffie-Hellman example."""
    scheme = key_agreement(TEP.ECDHE_CURVE25519)
    alice = scheme.load_private(bytes.fromhex(
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
    bob = scheme.load_private(bytes.fromhex(
        "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"))
    assert alice.pub.hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    assert bob.pub.hex() == "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert alice.exchange(bob.pub).hex() == shared == bob.exchange(alice.pub).hex()


@pytest.mark.parametrize("tep", [TEP.ECDHE_P256, TEP.ECDHE_P521])
def test_p_curve_encoding(tep: int) -> None:
    curve, point_len = P_CURVES[tep]
    key = key_agreement(tep).generate()
    (pubkey_len,) = struct.unpack_from(">H", key.pub)
    assert pubkey_len == 2 + point_len == len(key.pub)
    assert key.pub[2] in (0x02, 0x03)  # compressed format, RFC 8548 §5
    # ES is the x-coordinate of d_A * Q_B.
    peer = ec.generate_private_key(curve)
    peer_point = peer.public_key().public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    es = key.exchange(struct.pack(">H", 2 + point_len) + peer_point)
    own = ec.EllipticCurvePublicKey.from_encoded_point(curve, key.pub[2:])
    assert es == peer.exchange(ec.ECDH(), own)


@pytest.mark.parametrize("tep", [TEP.ECDHE_P256, TEP.ECDHE_P521])
def test_p_curve_accepts_bare_point_length(tep: int) -> None:
    """README.md "Readings of the RFCs": pubkey_len may also count the point only."""
    scheme = key_agreement(tep)
    a, b = scheme.generate(), scheme.generate()
    bare = struct.pack(">H", len(b.pub) - 2) + b.pub[2:]
    assert scheme.pub_field_length(bare, 0) == len(b.pub)
    assert a.exchange(bare) == b.exchange(a.pub)


@pytest.mark.parametrize("tep", [TEP.ECDHE_P256, TEP.ECDHE_P521])
@pytest.mark.parametrize("delta", [-3, -1, 1, 2, 200])
def test_p_curve_other_pubkey_len_rejected(tep: int, delta: int) -> None:
    scheme = key_agreement(tep)
    a, b = scheme.generate(), scheme.generate()
    wrong = struct.pack(">H", len(b.pub) + delta) + b.pub[2:]
    with pytest.raises(InitMessageError):
        scheme.pub_field_length(wrong, 0)
    with pytest.raises(KeyAgreementError):
        a.exchange(wrong)


def test_p_curve_prefix_truncated() -> None:
    scheme = key_agreement(TEP.ECDHE_P256)
    with pytest.raises(InitMessageError):
        scheme.pub_field_length(b"\x00\x00\x00\x23", 3)


def _x_not_on_curve(curve: ec.EllipticCurve, field_len: int) -> bytes:
    for x in range(1, 200):
        candidate = b"\x02" + x.to_bytes(field_len, "big")
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(curve, candidate)
        except ValueError:
            return candidate
    raise AssertionError("every small x was on the curve")


@pytest.mark.parametrize("tep", [TEP.ECDHE_P256, TEP.ECDHE_P521])
def test_p_curve_invalid_points(tep: int) -> None:
    curve, point_len = P_CURVES[tep]
    scheme = key_agreement(tep)
    key = scheme.generate()
    prefix = struct.pack(">H", 2 + point_len)
    good_x = scheme.generate().pub[3:]
    bad_points = [
        _x_not_on_curve(curve, point_len - 1),           # no y for this x
        b"\x02" + b"\xff" * (point_len - 1),              # x >= p
        b"\x04" + good_x,                                 # uncompressed tag
        b"\x00" * point_len,                              # infinity
        b"\x05" + good_x,                                 # unknown tag
    ]
    for point in bad_points:
        with pytest.raises(KeyAgreementError):
            key.exchange(prefix + point)
    with pytest.raises(KeyAgreementError):
        key.exchange(prefix + b"\x02" + good_x + b"\x00")  # wrong field length


@pytest.mark.parametrize("tep", [TEP.ECDHE_CURVE25519, TEP.ECDHE_CURVE448])
def test_montgomery_zero_secret_rejected(tep: int) -> None:
    scheme = key_agreement(tep)
    key = scheme.generate()
    size = PUB_FIELD_LEN[tep]
    low_order = [bytes(size), (1).to_bytes(size, "little")]
    for pub in low_order:
        with pytest.raises(KeyAgreementError):
            key.exchange(pub)
    with pytest.raises(KeyAgreementError):
        key.exchange(bytes(size - 1))
    assert scheme.pub_field_length(b"", 0) == size


@pytest.mark.parametrize("tep", ALL_TEPS)
def test_load_private_wrong_length(tep: int) -> None:
    with pytest.raises(ValueError):
        key_agreement(tep).load_private(b"\x01" * 7)


def test_p_curve_zero_scalar_rejected() -> None:
    with pytest.raises(ValueError):
        key_agreement(TEP.ECDHE_P256).load_private(bytes(32))


@pytest.mark.parametrize("tep", ALL_TEPS)
def test_key_pairs_come_from_the_given_random_source(tep: int) -> None:
    """``generate(random)`` draws the private key from ``random`` only: the same bytes give
    the same key pair, other bytes another one."""
    import random as random_module
    scheme = key_agreement(tep)
    first = scheme.generate(random_module.Random(7).randbytes)
    again = scheme.generate(random_module.Random(7).randbytes)
    other = scheme.generate(random_module.Random(8).randbytes)
    assert first.pub == again.pub != other.pub
    assert first.private_bytes() == again.private_bytes()


@pytest.mark.parametrize("tep", [TEP.ECDHE_P256, TEP.ECDHE_P521])
def test_p_curve_scalars_out_of_range_are_drawn_again(tep: int) -> None:
    """A P-curve scalar must lie in [1, n-1]: all-ones bits (not below n) and zero are drawn
    again; the next draw is taken as it is."""
    scheme = key_agreement(tep)
    length = scheme.scalar_len
    draws = [b"\xff" * length, b"\x00" * length, b"\x00" * (length - 1) + b"\x05"]
    key = scheme.generate(lambda n: draws.pop(0))
    assert not draws
    assert key.private_bytes() == b"\x00" * (length - 1) + b"\x05"
