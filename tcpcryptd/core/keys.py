"""tcpcrypt key schedule (RFC 8548 §3.3, §3.4, §3.5, §5), all with Hash = SHA-256.

::

    Extract(salt, IKM) = HMAC-SHA256(salt, IKM)                 (HKDF-Extract, RFC 5869)
    CPRF(K, CONST, L)  = HKDF-Expand-SHA256(K, CONST, L)
    PRK           = Extract(N_A, eno_transcript | Init1 | Init2 | ES)
    ss[0]         = PRK
    ss[i]         = CPRF(ss[i-1], CONST_NEXTK, K_LEN)
    mk[0]         = CPRF(ss[i], CONST_REKEY | sn[i], K_LEN)
    mk[j]         = CPRF(mk[j-1], CONST_REKEY, K_LEN)
    k_ab[j]       = CPRF(mk[j], CONST_KEY_A, ae_key_len + ae_nonce_len)
    k_ba[j]       = CPRF(mk[j], CONST_KEY_B, ae_key_len + ae_nonce_len)
    session_id[i] = TEP-byte | CPRF(ss[i], CONST_SESSID | sn[i], K_LEN)
    resume[i]     = CPRF(ss[i], CONST_RESUME, 18)

Every value here is secret except the session ID: nothing in this module logs or prints.

Cost: every derivation is one or two HMAC-SHA256 computations, and a connection makes at
least five of them on each host (session ID, mk[0], k_ab[0], k_ba[0], and ss[i+1] |
resume[i+1] for the cache), all on its critical path.  :class:`PRF` keys HMAC once (RFC
2104: the hash states after ``K XOR ipad`` and ``K XOR opad``) and copies those states per
message, so the values derived from one key (``ss[i]``: session ID, ``mk[0]``, ``ss[i+1]``;
``mk[j]``: ``k_ab[j]``, ``k_ba[j]``) share one keying.
"""

from __future__ import annotations

import hashlib

from tcpcryptd.core.constants import (
    CONST_KEY_A,
    CONST_KEY_B,
    CONST_NEXTK,
    CONST_REKEY,
    CONST_RESUME,
    CONST_SESSID,
    K_LEN,
    RESUME_ID_LEN,
)


_SHA256 = hashlib.sha256
#: SHA-256 block size B of RFC 2104 §2
_BLOCK = 64
#: ``bytes.translate`` tables for ``K XOR ipad`` and ``K XOR opad`` (RFC 2104 §2)
_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))
#: Longest HKDF-Expand output (RFC 5869 §2.3: L <= 255 * HashLen)
_MAX_EXPAND = 255 * 32


class PRF:
    """HMAC-SHA256 with one key (RFC 2104), keyed once: :meth:`mac` and :meth:`expand`
    copy the inner and outer hash states instead of hashing the padded key again.

    Holds key-derived state: never logged, not part of ``repr``.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = _SHA256(key).digest()
        key = bytes(key).ljust(_BLOCK, b"\0")
        self._inner = _SHA256(key.translate(_IPAD))
        self._outer = _SHA256(key.translate(_OPAD))

    def mac(self, message: bytes) -> bytes:
        """``HMAC-SHA256(K, message)`` (RFC 2104 §2)."""
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def expand(self, info: bytes, length: int) -> bytes:
        """``HKDF-Expand-SHA256(PRK=K, info, L=length)`` (RFC 5869 §2.3):
        ``T(n) = HMAC(K, T(n-1) | info | n)``, the first ``length`` bytes of T(1) | T(2) ..."""
        if not 0 < length <= _MAX_EXPAND:
            raise ValueError(f"HKDF-Expand length {length} outside 1..{_MAX_EXPAND}")
        block = self.mac(info + b"\x01")
        if length <= 32:
            return block[:length]
        out = [block]
        for counter in range(2, (length + 31) // 32 + 1):
            block = self.mac(block + info + bytes((counter,)))
            out.append(block)
        return b"".join(out)[:length]

    def __repr__(self) -> str:
        return "PRF(HMAC-SHA256)"


#: A key to derive from: its bytes, or a :class:`PRF` already keyed with it.
Key = bytes | PRF


def _keyed(key: Key) -> PRF:
    return key if type(key) is PRF else PRF(key)   # type: ignore[arg-type]


def extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract with SHA-256: ``HMAC-SHA256(key=salt, msg=ikm)`` (RFC 5869 §2.2)."""
    return PRF(salt).mac(ikm)


def cprf(key: Key, info: bytes, length: int) -> bytes:
    """The CPRF of every RFC 8548 TEP: HKDF-Expand-SHA256(PRK=key, info, L) (RFC 8548 §5)."""
    return _keyed(key).expand(info, length)


def compute_prk(n_a: bytes, transcript: bytes, init1: bytes, init2: bytes, es: bytes) -> bytes:
    """``PRK = Extract(N_A, eno_transcript | Init1 | Init2 | ES)`` (RFC 8548 §3.3).

    ``init1``/``init2`` are the transmitted encodings, all ``message_len`` bytes.
    """
    return extract(n_a, b"".join((transcript, init1, init2, es)))


def next_session_secret(ss: Key) -> bytes:
    """``ss[i+1] = CPRF(ss[i], CONST_NEXTK, K_LEN)`` (RFC 8548 §3.3)."""
    return cprf(ss, CONST_NEXTK, K_LEN)


def session_id(tep_byte: int, ss: Key, sn: bytes) -> bytes:
    """``session_id[i] = TEP-byte | CPRF(ss[i], CONST_SESSID | sn[i], K_LEN)`` (§3.4), 33 bytes.

    ``tep_byte`` is the suboption byte host B sent, v bit included.
    """
    return bytes((tep_byte,)) + cprf(ss, CONST_SESSID + sn, K_LEN)


def resumption_id(ss: Key) -> bytes:
    """``resume[i] = CPRF(ss[i], CONST_RESUME, 18)`` (RFC 8548 §3.5)."""
    return cprf(ss, CONST_RESUME, RESUME_ID_LEN)


def first_master_key(ss: Key, sn: bytes) -> bytes:
    """``mk[0] = CPRF(ss[i], CONST_REKEY | sn[i], K_LEN)`` (RFC 8548 §3.3)."""
    return cprf(ss, CONST_REKEY + sn, K_LEN)


def next_master_key(mk: bytes) -> bytes:
    """``mk[j] = CPRF(mk[j-1], CONST_REKEY, K_LEN)`` (RFC 8548 §3.3)."""
    return cprf(mk, CONST_REKEY, K_LEN)


def traffic_keys(mk: Key, traffic_key_len: int) -> tuple[bytes, bytes]:
    """``(k_ab[j], k_ba[j])`` from ``mk[j]``; length ae_key_len + ae_nonce_len (§3.3)."""
    prf = _keyed(mk)
    return prf.expand(CONST_KEY_A, traffic_key_len), prf.expand(CONST_KEY_B, traffic_key_len)


class KeySchedule:
    """Walks ``mk[j]`` forward from one session secret and keeps ``(k_ab[j], k_ba[j])``.

    Only the newest master key is held (older ones are not needed to go forward); traffic
    keys of old generations stay until :meth:`discard_below` drops them (RFC 8548 §3.8:
    "SHOULD delete older-generation keys ... once they are no longer needed").
    """

    __slots__ = ("traffic_key_len", "_mk", "_mk_generation", "_keys", "_lowest")

    def __init__(self, ss: Key, sn: bytes, traffic_key_len: int) -> None:
        self.traffic_key_len = traffic_key_len
        self._mk = first_master_key(ss, sn)
        self._mk_generation = 0
        #: ``k_ab[j] | k_ba[j]`` of generations ``_lowest`` .. ``_mk_generation``, in order: one
        #: bytes object each, in a list (an idle connection's schedule holds one entry, and
        #: memory per connection matters)
        self._keys: list[bytes] = [b"".join(traffic_keys(self._mk, traffic_key_len))]
        self._lowest = 0

    @property
    def newest_generation(self) -> int:
        """Highest generation derived so far."""
        return self._mk_generation

    @property
    def lowest_generation(self) -> int:
        """Lowest generation whose keys are still held."""
        return self._lowest

    def keys(self, generation: int) -> tuple[bytes, bytes]:
        """``(k_ab[j], k_ba[j])`` for generation ``j``, deriving forward as needed.

        ``KeyError`` for a generation already discarded (or negative).
        """
        if generation < self._lowest:
            raise KeyError(f"keys of generation {generation} were discarded")
        while self._mk_generation < generation:
            self._mk = next_master_key(self._mk)
            self._mk_generation += 1
            self._keys.append(b"".join(traffic_keys(self._mk, self.traffic_key_len)))
        both = self._keys[generation - self._lowest]
        n = self.traffic_key_len
        return both[:n], both[n:]

    def discard_below(self, generation: int) -> None:
        """Forget the traffic keys of every generation lower than ``generation``.

        The newest derived generation is always kept: later ones are derived from it.
        """
        drop = min(generation, self._mk_generation) - self._lowest
        if drop > 0:
            del self._keys[:drop]
            self._lowest += drop

    def __repr__(self) -> str:
        return f"KeySchedule(generations {self._lowest}..{self._mk_generation})"
