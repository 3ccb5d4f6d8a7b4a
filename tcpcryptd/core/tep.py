"""Key agreement of the tcpcrypt TEPs (RFC 8548 §5, §7 Table 4).

Every TEP has one :class:`KeyAgreementScheme`: it makes ephemeral key pairs
(:class:`EphemeralKey`), knows how long the Pub field of an Init message is, validates a
peer's Pub and computes the ephemeral secret ES.

Pub encodings on the wire (RFC 8548 §5):

* ECDHE-Curve25519 / ECDHE-Curve448: the raw 32 / 56 byte public value, no prefix.
* ECDHE-P256 / ECDHE-P521: ``pubkey_len (u16 BE) | compressed point``.  Reading
  (README.md "Readings of the RFCs"): the figure numbers the whole structure
  0..L-1, so we send ``L = 2 + point length`` (35 / 69); on receipt ``L`` may be that or the bare point length
  (33 / 67), nothing else.  ES is the x-coordinate of the shared point (ECSVDP-DH).

Every failure of a peer's Pub (bad length prefix, point not on the curve, point at infinity,
uncompressed form, all-zero X25519/X448 secret) raises :class:`KeyAgreementError`, except a
``pubkey_len`` that makes the Init message unparseable, which is an :class:`InitMessageError`
raised by :meth:`KeyAgreementScheme.pub_field_length`.
"""

from __future__ import annotations

import os
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, x448, x25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tcpcryptd.core.constants import TEP
from tcpcryptd.core.errors import InitMessageError, KeyAgreementError

#: Mask of the TEP identifier inside a suboption byte (the v bit is bit 7, RFC 8547 §4.2).
TEP_ID_MASK = 0x7F

_U16 = struct.Struct(">H")
_PUBKEY_LEN_PREFIX = _U16.size

_XPrivateKey = x25519.X25519PrivateKey | x448.X448PrivateKey


class EphemeralKey:
    """An ephemeral key pair of one TEP: ``pub`` is its wire encoding (RFC 8548 §4.1, §5).

    The private half never appears in ``repr``; :meth:`private_bytes` exists for test vectors.
    """

    __slots__ = ("scheme", "pub", "_private")

    def __init__(self, scheme: KeyAgreementScheme, private: Any, pub: bytes) -> None:
        self.scheme = scheme
        self.pub = pub
        self._private = private

    def private_bytes(self) -> bytes:
        """Raw private key (X25519/X448: RFC 7748 bytes; P-curves: big-endian scalar)."""
        return self.scheme._private_bytes(self._private)

    def exchange(self, peer_pub: bytes) -> bytes:
        """Validate the peer's Pub field and return ES; :class:`KeyAgreementError` if invalid."""
        return self.scheme._exchange(self._private, peer_pub)

    def __repr__(self) -> str:
        return f"EphemeralKey({self.scheme.name})"


class KeyAgreementScheme(ABC):
    """Key agreement of one TEP (RFC 8548 §5)."""

    tep: int
    name: str
    #: Length of ES in bytes.
    secret_len: int

    @abstractmethod
    def generate(self, random: Callable[[int], bytes] = os.urandom) -> EphemeralKey:
        """Make a fresh ephemeral key pair from the bytes ``random(n)`` returns."""

    @abstractmethod
    def load_private(self, raw: bytes) -> EphemeralKey:
        """Key pair from raw private bytes (see :meth:`EphemeralKey.private_bytes`)."""

    @property
    @abstractmethod
    def min_pub_field_len(self) -> int:
        """Shortest Pub field this TEP accepts (for message-length lower bounds)."""

    @abstractmethod
    def pub_field_length(self, buf: bytes | memoryview, start: int) -> int:
        """Length of the Pub field that starts at ``buf[start]`` inside an Init message.

        Raises :class:`InitMessageError` when that cannot be told from ``buf`` (P-curves: the
        length prefix is missing or has a value RFC 8548 §5 does not allow).
        """

    # ``private`` is always a key of this scheme's own making (EphemeralKey is built only by
    # its scheme), so its type is not checked again: an isinstance test against a
    # cryptography key ABC goes through ABCMeta.__instancecheck__, on the handshake's
    # critical path.

    @abstractmethod
    def _private_bytes(self, private: Any) -> bytes: ...

    @abstractmethod
    def _exchange(self, private: Any, peer_pub: bytes) -> bytes: ...

    def __repr__(self) -> str:
        return f"<KeyAgreementScheme {self.name} 0x{self.tep:02x}>"


class _MontgomeryScheme(KeyAgreementScheme):
    """ECDHE-Curve25519 / ECDHE-Curve448: RFC 7748 X25519 / X448, raw Pub (RFC 8548 §5)."""

    def __init__(self, tep: int, name: str, key_len: int, private_cls: type[_XPrivateKey],
                 public_cls: type[x25519.X25519PublicKey] | type[x448.X448PublicKey]) -> None:
        self.tep = tep
        self.name = name
        self.key_len = key_len
        self.secret_len = key_len
        self._private_cls = private_cls
        self._public_cls = public_cls

    def _wrap(self, private: _XPrivateKey) -> EphemeralKey:
        return EphemeralKey(self, private, private.public_key().public_bytes_raw())

    def generate(self, random: Callable[[int], bytes] = os.urandom) -> EphemeralKey:
        # any key_len random bytes are a private key (RFC 7748 §5: clamped when used)
        return self.load_private(random(self.key_len))

    def load_private(self, raw: bytes) -> EphemeralKey:
        return self._wrap(self._private_cls.from_private_bytes(raw))

    @property
    def min_pub_field_len(self) -> int:
        return self.key_len

    def pub_field_length(self, buf: bytes | memoryview, start: int) -> int:
        return self.key_len

    def _private_bytes(self, private: _XPrivateKey) -> bytes:
        return private.private_bytes_raw()

    def _exchange(self, private: _XPrivateKey, peer_pub: bytes) -> bytes:
        if len(peer_pub) != self.key_len:
            raise KeyAgreementError(f"{self.name} public key must be {self.key_len} bytes")
        try:
            # OpenSSL's X25519/X448 derive refuses an all-zero result (a low-order peer
            # point, RFC 7748 §6) with ValueError; test_tep checks that it still does.
            return private.exchange(self._public_cls.from_public_bytes(bytes(peer_pub)))
        except ValueError:
            raise KeyAgreementError(f"{self.name}: all-zero shared secret") from None


class _WeierstrassScheme(KeyAgreementScheme):
    """ECDHE-P256 / ECDHE-P521: ECSVDP-DH, ``pubkey_len | compressed point`` (RFC 8548 §5)."""

    def __init__(self, tep: int, name: str, curve: ec.EllipticCurve, field_len: int) -> None:
        self.tep = tep
        self.name = name
        self.curve = curve
        self.scalar_len = field_len
        self.secret_len = field_len
        #: Length of a compressed point: 0x02/0x03 then the x-coordinate.
        self.point_len = 1 + field_len
        #: The pubkey_len value we send: the whole structure, prefix included.
        self.pubkey_len = _PUBKEY_LEN_PREFIX + self.point_len

    def _wrap(self, private: ec.EllipticCurvePrivateKey) -> EphemeralKey:
        point = private.public_key().public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
        return EphemeralKey(self, private, _U16.pack(self.pubkey_len) + point)

    def generate(self, random: Callable[[int], bytes] = os.urandom) -> EphemeralKey:
        # a scalar uniform in [1, n-1]: random bits of the curve's size, drawn again when 0 or
        # not below the group order n (rare: n is close to 2**bits for both curves)
        mask = (1 << self.curve.key_size) - 1
        while True:
            scalar = int.from_bytes(random(self.scalar_len), "big") & mask
            try:
                return self._wrap(ec.derive_private_key(scalar, self.curve))
            except ValueError:
                continue

    def load_private(self, raw: bytes) -> EphemeralKey:
        if len(raw) != self.scalar_len:
            raise ValueError(f"{self.name} private scalar must be {self.scalar_len} bytes")
        return self._wrap(ec.derive_private_key(int.from_bytes(raw, "big"), self.curve))

    @property
    def min_pub_field_len(self) -> int:
        return self.pubkey_len

    def pub_field_length(self, buf: bytes | memoryview, start: int) -> int:
        if len(buf) < start + _PUBKEY_LEN_PREFIX:
            raise InitMessageError(f"{self.name}: Init message ends inside pubkey_len")
        (pubkey_len,) = _U16.unpack_from(buf, start)
        if pubkey_len not in (self.pubkey_len, self.point_len):
            raise InitMessageError(f"{self.name}: pubkey_len {pubkey_len} not allowed")
        return self.pubkey_len

    def _private_bytes(self, private: ec.EllipticCurvePrivateKey) -> bytes:
        return private.private_numbers().private_value.to_bytes(self.scalar_len, "big")

    def _exchange(self, private: ec.EllipticCurvePrivateKey, peer_pub: bytes) -> bytes:
        if len(peer_pub) != self.pubkey_len:
            raise KeyAgreementError(f"{self.name} Pub field must be {self.pubkey_len} bytes")
        (pubkey_len,) = _U16.unpack_from(peer_pub, 0)
        if pubkey_len not in (self.pubkey_len, self.point_len):
            raise KeyAgreementError(f"{self.name}: pubkey_len {pubkey_len} not allowed")
        point = bytes(peer_pub[_PUBKEY_LEN_PREFIX:])
        if point[0] not in (0x02, 0x03):
            raise KeyAgreementError(f"{self.name}: public key not in compressed format")
        try:
            # Decompression checks that x is on the curve (IEEE 1363 A.16.10 for a prime
            # curve with cofactor 1); infinity has no compressed encoding.
            peer = ec.EllipticCurvePublicKey.from_encoded_point(self.curve, point)
        except ValueError:
            raise KeyAgreementError(f"{self.name}: public key not on the curve") from None
        return private.exchange(ec.ECDH(), peer)


#: Key agreement per TEP identifier (RFC 8548 §7 Table 4).
KEY_AGREEMENTS: dict[int, KeyAgreementScheme] = {
    scheme.tep: scheme
    for scheme in (
        _WeierstrassScheme(TEP.ECDHE_P256, "ECDHE-P256", ec.SECP256R1(), 32),
        _WeierstrassScheme(TEP.ECDHE_P521, "ECDHE-P521", ec.SECP521R1(), 66),
        _MontgomeryScheme(TEP.ECDHE_CURVE25519, "ECDHE-Curve25519", 32,
                          x25519.X25519PrivateKey, x25519.X25519PublicKey),
        _MontgomeryScheme(TEP.ECDHE_CURVE448, "ECDHE-Curve448", 56,
                          x448.X448PrivateKey, x448.X448PublicKey),
    )
}


def key_agreement(tep: int) -> KeyAgreementScheme:
    """Scheme for a TEP identifier or TEP byte (the v bit is ignored); ``KeyError`` if unknown."""
    return KEY_AGREEMENTS[tep & TEP_ID_MASK]
