"""Session resumption: the cache of session secrets and the suboption data (RFC 8548 §3.5).

After a session on ``ss[i]`` is set up, a host caches ``ss[i+1]`` (and forgets ``ss[i]``);
the entry is named by ``resume[i+1] = CPRF(ss[i+1], CONST_RESUME, 18)``.  A host that was A in
the original ss[0] session names it with ``resume[i]{0..8}``, one that was B with
``resume[i]{9..17}``, each followed by a 0..8 byte nonce (Figures 2 and 3).

:class:`SessionCache` is bounded (LRU over ``max_entries``), takes ``now`` as an argument
(entries expire ``lifetime`` seconds after they were stored) and hands each secret out at most
once (:meth:`SessionCache.take`): one ``ss[i]`` secures at most one connection.

Reading: resumption has no Init messages, so no sym_cipher is negotiated; a resumed session
keeps the AEAD of the session it derives from, which the cache entry records.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from tcpcryptd.core.aead import aead_algorithm
from tcpcryptd.core.constants import MAX_RESUME_NONCE_LEN, RESUME_HALF_LEN, RESUME_ID_LEN
from tcpcryptd.core.keys import next_session_secret, resumption_id
from tcpcryptd.core.session import Session
from tcpcryptd.core.tep import TEP_ID_MASK

#: Default number of cached secrets.
DEFAULT_MAX_ENTRIES = 1024
#: Default lifetime of a cached secret, in seconds.
DEFAULT_LIFETIME = 3600.0


def own_half(resume_id: bytes, sends_with_k_ab: bool) -> bytes:
    """The half of ``resume[i]`` this host sends: {0..8} if it was A originally, else {9..17}."""
    return resume_id[:RESUME_HALF_LEN] if sends_with_k_ab else resume_id[RESUME_HALF_LEN:]


def peer_half(resume_id: bytes, sends_with_k_ab: bool) -> bytes:
    """The half of ``resume[i]`` the peer sends (the other one)."""
    return own_half(resume_id, not sends_with_k_ab)


def new_resumption_nonce(length: int = MAX_RESUME_NONCE_LEN,
                         random: Callable[[int], bytes] = os.urandom) -> bytes:
    """A random resumption nonce (``random(n)``: n random bytes); 8 bytes by default, as
    RFC 8548 §3.5 requires by default."""
    if not 0 <= length <= MAX_RESUME_NONCE_LEN:
        raise ValueError(f"resumption nonce length must be 0..{MAX_RESUME_NONCE_LEN}")
    return random(length)


def resumption_data(half: bytes, nonce: bytes) -> bytes:
    """Data of a resumption suboption: identifier half (9 bytes) | nonce (0..8 bytes)."""
    if len(half) != RESUME_HALF_LEN:
        raise ValueError(f"identifier half must be {RESUME_HALF_LEN} bytes")
    if len(nonce) > MAX_RESUME_NONCE_LEN:
        raise ValueError(f"resumption nonce longer than {MAX_RESUME_NONCE_LEN} bytes")
    return half + nonce


@dataclass(slots=True)
class CacheEntry:
    """One cached session secret ``ss[i]`` (secret fields are left out of ``repr``)."""

    peer: Hashable
    tep: int
    aead: int
    index: int
    sends_with_k_ab: bool
    created: float
    ss: bytes = field(repr=False)
    resume_id: bytes = field(repr=False)

    @property
    def own_half(self) -> bytes:
        """The identifier half this host puts in its resumption suboption."""
        return own_half(self.resume_id, self.sends_with_k_ab)

    @property
    def peer_half(self) -> bytes:
        """The identifier half the peer puts in its resumption suboption."""
        return peer_half(self.resume_id, self.sends_with_k_ab)

    def successor(self, now: float) -> CacheEntry:
        """The entry for ``ss[i+1]``, e.g. after a resumption attempt with ``ss[i]`` failed
        (the active opener MUST move on to the lowest unused i, RFC 8548 §3.5)."""
        ss_next = next_session_secret(self.ss)
        return CacheEntry(self.peer, self.tep, self.aead, self.index + 1, self.sends_with_k_ab,
                          now, ss_next, resumption_id(ss_next))

    def resume_session(self, role: str, local_nonce: bytes, peer_nonce: bytes) -> Session:
        """The resumed session on this secret (RFC 8548 §3.5), keys in the original direction."""
        return Session.resume(role, self.tep, aead_algorithm(self.aead), self.ss,
                              sends_with_k_ab=self.sends_with_k_ab, local_nonce=local_nonce,
                              peer_nonce=peer_nonce)


class SessionCache:
    """Bounded LRU cache of session secrets, indexed by peer and by the peer's identifier half.

    Several entries per peer are allowed (parallel connections each leave one); lookups
    return the most recently stored live one.  Expired entries are dropped when met.
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES,
                 lifetime: float = DEFAULT_LIFETIME) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.lifetime = lifetime
        self._entries: OrderedDict[bytes, CacheEntry] = OrderedDict()   # resume_id -> entry
        self._by_half: dict[bytes, bytes] = {}                           # peer half -> resume_id
        self._by_peer: dict[Hashable, dict[bytes, None]] = {}            # peer -> resume_ids

    def __len__(self) -> int:
        return len(self._entries)

    def store(self, peer: Hashable, tep: int, aead: int, ss: bytes, index: int,
              sends_with_k_ab: bool, now: float) -> CacheEntry:
        """Cache ``ss[index]`` for ``peer``; evicts the least recently used entry when full."""
        entry = CacheEntry(peer, tep & TEP_ID_MASK, aead, index, sends_with_k_ab, now,
                           bytes(ss), resumption_id(ss))
        self.put(entry)
        return entry

    def store_session(self, peer: Hashable, session: Session, index: int,
                      now: float) -> CacheEntry:
        """Cache ``ss[index+1]`` of ``session`` (which runs on ``ss[index]``), §3.5."""
        ss_next, resume_id = session.resumption_secret()
        entry = CacheEntry(peer, session.tep_byte & TEP_ID_MASK, session.aead.id, index + 1,
                           session.sends_with_k_ab, now, ss_next, resume_id)
        self.put(entry)
        return entry

    def put(self, entry: CacheEntry) -> None:
        """Insert an entry (e.g. a :meth:`CacheEntry.successor`)."""
        if len(entry.resume_id) != RESUME_ID_LEN:
            raise ValueError(f"resume_id must be {RESUME_ID_LEN} bytes")
        self._remove(entry.resume_id)
        while len(self._entries) >= self.max_entries:
            self._remove(next(iter(self._entries)))
        self._entries[entry.resume_id] = entry
        self._by_half[entry.peer_half] = entry.resume_id
        self._by_peer.setdefault(entry.peer, {})[entry.resume_id] = None

    def _remove(self, resume_id: bytes) -> CacheEntry | None:
        entry = self._entries.pop(resume_id, None)
        if entry is None:
            return None
        if self._by_half.get(entry.peer_half) == resume_id:
            del self._by_half[entry.peer_half]
        ids = self._by_peer[entry.peer]
        del ids[resume_id]
        if not ids:
            del self._by_peer[entry.peer]
        return entry

    def _live(self, resume_id: bytes, now: float) -> CacheEntry | None:
        entry = self._entries[resume_id]
        if now >= entry.created + self.lifetime:
            self._remove(resume_id)
            return None
        self._entries.move_to_end(resume_id)
        return entry

    def for_peer(self, peer: Hashable, now: float) -> CacheEntry | None:
        """The newest live entry for ``peer`` (what an active opener offers), not removed."""
        for resume_id in reversed(list(self._by_peer.get(peer, ()))):
            entry = self._live(resume_id, now)
            if entry is not None:
                return entry
        return None

    def by_peer_half(self, half: bytes, tep: int, now: float) -> CacheEntry | None:
        """The live entry the peer named with ``half`` under TEP ``tep`` (passive opener).

        ``None`` unless both the half and the TEP match (RFC 8548 §3.5: otherwise it MUST NOT
        resume).  The entry is not removed: :meth:`take` it when resuming.
        """
        resume_id = self._by_half.get(bytes(half))
        if resume_id is None:
            return None
        entry = self._live(resume_id, now)
        if entry is None or entry.tep != tep & TEP_ID_MASK:
            return None
        return entry

    def take(self, entry: CacheEntry) -> bool:
        """Remove ``entry`` before its secret is used; False if it was no longer cached.

        A secret is handed out once: an entry already taken (or evicted) cannot be resumed.
        """
        if self._entries.get(entry.resume_id) is not entry:
            return False
        self._remove(entry.resume_id)
        return True

    def discard_peer(self, peer: Hashable) -> int:
        """Flush every entry of ``peer`` (TCP_CRYPT_CACHE_FLUSH); returns how many."""
        ids = list(self._by_peer.get(peer, ()))
        for resume_id in ids:
            self._remove(resume_id)
        return len(ids)

    def expire(self, now: float) -> int:
        """Drop every expired entry; returns how many."""
        expired = [rid for rid, e in self._entries.items() if now >= e.created + self.lifetime]
        for resume_id in expired:
            self._remove(resume_id)
        return len(expired)

    def flush(self) -> None:
        """Forget every cached secret."""
        self._entries.clear()
        self._by_half.clear()
        self._by_peer.clear()
