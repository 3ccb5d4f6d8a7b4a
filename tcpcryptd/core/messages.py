"""Init1 / Init2 key-exchange messages (RFC 8548 §4.1).

::

    Init1 = INIT1_MAGIC(4) | message_len(4) | nciphers(1) | sym_cipher(2) * nciphers
            | N_A(32) | Pub_A | ignored
    Init2 = INIT2_MAGIC(4) | message_len(4) | sym_cipher(2) | N_B(32) | Pub_B | ignored

``message_len`` counts the whole message.  We send an empty ``ignored`` part and, on receipt,
ignore any bytes after Pub up to ``message_len`` (RFC 8548 §4.1).  The Pub length depends on
the TEP (:meth:`tcpcryptd.core.tep.KeyAgreementScheme.pub_field_length`).

Bounds (README.md "Readings of the RFCs"): a bad magic, a ``message_len``
shorter than the fixed part or larger than ``max_len`` (default 4096), a message shorter than ``message_len``, a Pub that does not
fit, and an Init1 with ``nciphers = 0`` (nothing to choose from) raise
:class:`InitMessageError`.  Unknown sym_cipher ids in Init1 are kept; selection skips them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tcpcryptd.core.constants import (
    DEFAULT_MAX_INIT_LEN,
    INIT1_MAGIC,
    INIT2_MAGIC,
    N_A_LEN,
    N_B_LEN,
)
from tcpcryptd.core.errors import InitMessageError
from tcpcryptd.core.tep import KEY_AGREEMENTS, key_agreement

_HEADER = struct.Struct(">II")
_SYM_CIPHER = struct.Struct(">H")
#: magic | message_len
HEADER_LEN = _HEADER.size
#: Most sym_cipher ids an Init1 can list (nciphers is one byte).
MAX_NCIPHERS = 0xFF

_MIN_PUB_FIELD_LEN = min(scheme.min_pub_field_len for scheme in KEY_AGREEMENTS.values())
#: Shortest possible message_len of each message over every supported TEP.
MIN_MESSAGE_LEN = {
    INIT1_MAGIC: HEADER_LEN + 1 + _SYM_CIPHER.size + N_A_LEN + _MIN_PUB_FIELD_LEN,
    INIT2_MAGIC: HEADER_LEN + _SYM_CIPHER.size + N_B_LEN + _MIN_PUB_FIELD_LEN,
}


@dataclass(frozen=True, slots=True)
class Init1:
    """A parsed Init1 (RFC 8548 §4.1); ``pub_a`` is the Pub field as on the wire."""

    sym_ciphers: tuple[int, ...]
    n_a: bytes
    pub_a: bytes

    def encode(self) -> bytes:
        """Wire encoding with an empty ``ignored`` part."""
        return encode_init1(self.sym_ciphers, self.n_a, self.pub_a)


@dataclass(frozen=True, slots=True)
class Init2:
    """A parsed Init2 (RFC 8548 §4.1); ``pub_b`` is the Pub field as on the wire."""

    sym_cipher: int
    n_b: bytes
    pub_b: bytes

    def encode(self) -> bytes:
        """Wire encoding with an empty ``ignored`` part."""
        return encode_init2(self.sym_cipher, self.n_b, self.pub_b)


def message_length(buf: bytes | bytearray | memoryview, magic: int,
                   max_len: int = DEFAULT_MAX_INIT_LEN) -> int | None:
    """``message_len`` of the Init message at the start of ``buf``.

    ``None`` until the 8 header bytes are there.  Raises :class:`InitMessageError` for a
    magic other than ``magic`` or a ``message_len`` below the smallest possible message of
    any supported TEP or above ``max_len``.  The engine uses it to find where the Init
    message ends in the wire stream.
    """
    if len(buf) < HEADER_LEN:
        return None
    got_magic, message_len = _HEADER.unpack_from(buf, 0)
    if got_magic != magic:
        raise InitMessageError(f"bad magic 0x{got_magic:08x}, expected 0x{magic:08x}")
    if message_len < MIN_MESSAGE_LEN[magic]:
        raise InitMessageError(f"message_len {message_len} shorter than the fixed part")
    if message_len > max_len:
        raise InitMessageError(f"message_len {message_len} exceeds the bound {max_len}")
    return message_len


def _whole_message(raw: bytes, magic: int, max_len: int) -> int:
    """Check the header of a complete message; return message_len (== len(raw))."""
    message_len = message_length(raw, magic, max_len)
    if message_len is None or len(raw) < message_len:
        raise InitMessageError("Init message truncated")
    if len(raw) > message_len:
        raise InitMessageError(f"{len(raw) - message_len} bytes beyond message_len")
    return message_len


def _pub_field(raw: bytes, tep: int, start: int) -> bytes:
    """The Pub field at ``raw[start:]``; it must fit inside the message."""
    if start > len(raw):
        raise InitMessageError("message_len too short for the nonce")
    end = start + key_agreement(tep).pub_field_length(raw, start)
    if end > len(raw):
        raise InitMessageError("Pub does not fit in message_len")
    return raw[start:end]


def encode_init1(sym_ciphers: tuple[int, ...] | list[int], n_a: bytes, pub_a: bytes) -> bytes:
    """Encode Init1 with an empty ``ignored`` part (RFC 8548 §4.1)."""
    if not 1 <= len(sym_ciphers) <= MAX_NCIPHERS:
        raise ValueError(f"Init1 lists 1..{MAX_NCIPHERS} sym_ciphers, got {len(sym_ciphers)}")
    if len(n_a) != N_A_LEN:
        raise ValueError(f"N_A must be {N_A_LEN} bytes")
    ciphers = struct.pack(f">B{len(sym_ciphers)}H", len(sym_ciphers), *sym_ciphers)
    message_len = HEADER_LEN + len(ciphers) + N_A_LEN + len(pub_a)
    return b"".join((_HEADER.pack(INIT1_MAGIC, message_len), ciphers, n_a, pub_a))


def parse_init1(raw: bytes | bytearray | memoryview, tep: int, *,
                max_len: int = DEFAULT_MAX_INIT_LEN) -> Init1:
    """Parse a whole Init1 (exactly ``message_len`` bytes) for TEP ``tep``."""
    raw = bytes(raw)
    _whole_message(raw, INIT1_MAGIC, max_len)
    nciphers = raw[HEADER_LEN]
    if nciphers == 0:
        raise InitMessageError("Init1 offers no sym_cipher")
    n_a_start = HEADER_LEN + 1 + nciphers * _SYM_CIPHER.size
    pub_start = n_a_start + N_A_LEN
    pub_a = _pub_field(raw, tep, pub_start)
    sym_ciphers = struct.unpack_from(f">{nciphers}H", raw, HEADER_LEN + 1)
    return Init1(sym_ciphers, raw[n_a_start:pub_start], pub_a)


def encode_init2(sym_cipher: int, n_b: bytes, pub_b: bytes) -> bytes:
    """Encode Init2 with an empty ``ignored`` part (RFC 8548 §4.1)."""
    if len(n_b) != N_B_LEN:
        raise ValueError(f"N_B must be {N_B_LEN} bytes")
    message_len = HEADER_LEN + _SYM_CIPHER.size + N_B_LEN + len(pub_b)
    return b"".join((_HEADER.pack(INIT2_MAGIC, message_len), _SYM_CIPHER.pack(sym_cipher),
                     n_b, pub_b))


def parse_init2(raw: bytes | bytearray | memoryview, tep: int, *,
                max_len: int = DEFAULT_MAX_INIT_LEN) -> Init2:
    """Parse a whole Init2 (exactly ``message_len`` bytes) for TEP ``tep``."""
    raw = bytes(raw)
    _whole_message(raw, INIT2_MAGIC, max_len)
    (sym_cipher,) = _SYM_CIPHER.unpack_from(raw, HEADER_LEN)
    n_b_start = HEADER_LEN + _SYM_CIPHER.size
    pub_start = n_b_start + N_B_LEN
    pub_b = _pub_field(raw, tep, pub_start)
    return Init2(sym_cipher, raw[n_b_start:pub_start], pub_b)
