"""AEAD algorithms of tcpcrypt and per-generation traffic keys (RFC 8548 §3.6, §4.2.3, §6).

A traffic key ``k_ab[j]`` / ``k_ba[j]`` is ``K | NR`` (RFC 8548 §3.6, Figure 4): the first
``ae_key_len`` bytes are the AEAD key, the following ``ae_nonce_len`` bytes the nonce
randomizer.  The nonce of a frame is ``N = frame_ID XOR NR`` where ``frame_ID`` is the frame's
64-bit offset in the wire stream, big-endian, left-padded with zero bytes to ``ae_nonce_len``
(RFC 8548 §4.2.3).

:class:`TrafficKey` is on the per-frame hot path: it builds its AEAD object once and keeps NR
as an integer, so a nonce costs one XOR and one ``int.to_bytes``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from tcpcryptd.core.constants import AEADId
from tcpcryptd.core.errors import FrameAuthError

#: Width of the offset field of a frame ID (RFC 8548 §4.2.3).
FRAME_ID_OFFSET_LEN = 8
#: Largest offset a frame ID can carry; a host MUST rekey before wrapping (RFC 8548 §3.6).
MAX_FRAME_OFFSET = (1 << (8 * FRAME_ID_OFFSET_LEN)) - 1

_AEADFactory = Callable[[bytes], AESGCM | ChaCha20Poly1305]


@dataclass(frozen=True, slots=True)
class AEADAlgorithm:
    """One row of RFC 8548 §6 Table 3 / §7 Table 5."""

    id: int
    name: str
    key_len: int
    nonce_len: int
    tag_len: int
    factory: _AEADFactory

    @property
    def traffic_key_len(self) -> int:
        """Length of a traffic key ``k_ab[j]``/``k_ba[j]``: ae_key_len + ae_nonce_len (§3.3)."""
        return self.key_len + self.nonce_len


#: The AEAD algorithms of RFC 8548 §6, by sym_cipher identifier.
AEAD_ALGORITHMS: dict[int, AEADAlgorithm] = {
    alg.id: alg
    for alg in (
        AEADAlgorithm(AEADId.AES_128_GCM, "AES-128-GCM", 16, 12, 16, AESGCM),
        AEADAlgorithm(AEADId.AES_256_GCM, "AES-256-GCM", 32, 12, 16, AESGCM),
        AEADAlgorithm(AEADId.CHACHA20_POLY1305, "ChaCha20-Poly1305", 32, 12, 16, ChaCha20Poly1305),
    )
}


def aead_algorithm(sym_cipher: int) -> AEADAlgorithm:
    """Return the algorithm for a sym_cipher identifier; ``KeyError`` if it is not supported."""
    return AEAD_ALGORITHMS[sym_cipher]


class TrafficKey:
    """One traffic key ``K | NR`` with its AEAD object, made once (RFC 8548 §3.6).

    ``seal``/``open`` take the frame's offset in the wire stream and the associated data
    (``control | clen``, RFC 8548 §4.2.2).  The key material is never part of ``repr``.
    """

    __slots__ = ("algorithm", "_aead", "_nr", "_material")

    def __init__(self, algorithm: AEADAlgorithm, material: bytes) -> None:
        key_len = algorithm.key_len
        if len(material) != key_len + algorithm.nonce_len:
            raise ValueError(
                f"{algorithm.name} traffic key needs {algorithm.traffic_key_len} bytes, "
                f"got {len(material)}"
            )
        self.algorithm = algorithm
        self._material = material = bytes(material)
        self._aead = algorithm.factory(material[:key_len])
        self._nr = int.from_bytes(material[key_len:], "big")

    @property
    def material(self) -> bytes:
        """The raw traffic key ``K | NR`` (secret: for test vectors only, never log it)."""
        return self._material

    def nonce(self, offset: int) -> bytes:
        """AEAD nonce ``N = frame_ID XOR NR`` for a frame at ``offset`` (RFC 8548 §3.6)."""
        if not 0 <= offset <= MAX_FRAME_OFFSET:
            raise ValueError(f"frame offset {offset} outside the 64-bit frame ID range")
        return (offset ^ self._nr).to_bytes(self.algorithm.nonce_len, "big")

    # seal/open compute the nonce inline (no call to nonce()): they run once per frame.

    def seal(self, offset: int, plaintext: bytes, associated_data: bytes) -> bytes:
        """Encrypt a frame's plaintext; returns ciphertext with the tag appended."""
        if not 0 <= offset <= MAX_FRAME_OFFSET:
            raise ValueError(f"frame offset {offset} outside the 64-bit frame ID range")
        nonce = (offset ^ self._nr).to_bytes(self.algorithm.nonce_len, "big")
        return self._aead.encrypt(nonce, plaintext, associated_data)

    def open(self, offset: int, ciphertext: bytes | memoryview,
             associated_data: bytes | bytearray | memoryview) -> bytes:
        """Decrypt and verify; raise :class:`FrameAuthError` on FAIL (RFC 8548 §3.6)."""
        if not 0 <= offset <= MAX_FRAME_OFFSET:
            raise ValueError(f"frame offset {offset} outside the 64-bit frame ID range")
        nonce = (offset ^ self._nr).to_bytes(self.algorithm.nonce_len, "big")
        try:
            return self._aead.decrypt(nonce, ciphertext, associated_data)
        except InvalidTag:
            raise FrameAuthError(f"AEAD FAIL for the frame at offset {offset}") from None

    def __repr__(self) -> str:
        return f"TrafficKey({self.algorithm.name})"
