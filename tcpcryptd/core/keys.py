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
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

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


def extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract with SHA-256: ``HMAC-SHA256(key=salt, msg=ikm)`` (RFC 5869 §2.2)."""
    return hmac.digest(salt, ikm, hashlib.sha256)


def cprf(key: bytes, info: bytes, length: int) -> bytes:
    """The CPRF of every RFC 8548 TEP: HKDF-Expand-SHA256(PRK=key, info, L) (RFC 8548 §5)."""
    return HKDFExpand(SHA256(), length, info).derive(key)


def compute_prk(n_a: bytes, transcript: bytes, init1: bytes, init2: bytes, es: bytes) -> bytes:
    """``PRK = Extract(N_A, eno_transcript | Init1 | Init2 | ES)`` (RFC 8548 §3.3).

    ``init1``/``init2`` are the transmitted encodings, all ``message_len`` bytes.
    """
    return extract(n_a, b"".join((transcript, init1, init2, es)))


def next_session_secret(ss: bytes) -> bytes:
    """``ss[i+1] = CPRF(ss[i], CONST_NEXTK, K_LEN)`` (RFC 8548 §3.3)."""
    return cprf(ss, CONST_NEXTK, K_LEN)


def session_id(tep_byte: int, ss: bytes, sn: bytes) -> bytes:
    """``session_id[i] = TEP-byte | CPRF(ss[i], CONST_SESSID | sn[i], K_LEN)`` (§3.4), 33 bytes.

    ``tep_byte`` is the suboption byte host B sent, v bit included.
    """
    return bytes((tep_byte,)) + cprf(ss, CONST_SESSID + sn, K_LEN)


def resumption_id(ss: bytes) -> bytes:
    """``resume[i] = CPRF(ss[i], CONST_RESUME, 18)`` (RFC 8548 §3.5)."""
    return cprf(ss, CONST_RESUME, RESUME_ID_LEN)


def first_master_key(ss: bytes, sn: bytes) -> bytes:
    """``mk[0] = CPRF(ss[i], CONST_REKEY | sn[i], K_LEN)`` (RFC 8548 §3.3)."""
    return cprf(ss, CONST_REKEY + sn, K_LEN)


def next_master_key(mk: bytes) -> bytes:
    """``mk[j] = CPRF(mk[j-1], CONST_REKEY, K_LEN)`` (RFC 8548 §3.3)."""
    return cprf(mk, CONST_REKEY, K_LEN)


def traffic_keys(mk: bytes, traffic_key_len: int) -> tuple[bytes, bytes]:
    """``(k_ab[j], k_ba[j])`` from ``mk[j]``; length ae_key_len + ae_nonce_len (§3.3)."""
    return cprf(mk, CONST_KEY_A, traffic_key_len), cprf(mk, CONST_KEY_B, traffic_key_len)


class KeySchedule:
    """Walks ``mk[j]`` forward from one session secret and keeps ``(k_ab[j], k_ba[j])``.

    Only the newest master key is held (older ones are not needed to go forward); traffic
    keys of old generations stay until :meth:`discard_below` drops them (RFC 8548 §3.8:
    "SHOULD delete older-generation keys ... once they are no longer needed").
    """

    __slots__ = ("traffic_key_len", "_mk", "_mk_generation", "_keys", "_lowest")

    def __init__(self, ss: bytes, sn: bytes, traffic_key_len: int) -> None:
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
