"""Ephemeral key pairs made ahead of need, while the daemon is idle (RFC 8548 §3.3, §8).

Making a key pair is a scalar multiplication (X25519: ~20 us), paid by host A when its
Init1 leaves and by host B when Init1 arrives, while the peer and the applications wait.
:class:`KeyPool` moves that work out of the connection: the daemon calls
:meth:`~tcpcryptd.engine.engine.Engine.prepare` when its queue is drained, and each call
makes at most one pair; the key exchange takes a ready pair when there is one and makes
its own otherwise, exactly as without the pool.

RFC 8548 §8 asks for short-lived ephemeral keys and limited reuse.  Here a pair serves
exactly one connection (it leaves the pool when taken, and the handshake drops it once the
session exists, :func:`~tcpcryptd.engine.keying.consume_init`); none is ever reused.  A
pair not taken within :data:`POOL_LIFETIME` of its making is discarded unused (it is never
handed out after that, and the next :meth:`KeyPool.prepare` drops it and makes a new one),
so a private key waits at most that long before its connection.  Only TEPs a connection
has actually used (and the configuration still lists) get pairs: the pool of a host whose
peers always pick X25519 holds no X448 or P-256 keys.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection

from tcpcryptd.core.tep import TEP_ID_MASK, EphemeralKey, key_agreement

#: Pairs kept ready per TEP in use: one covers a connection at a time, two a short burst.
POOL_SIZE = 2
#: Seconds a pair may wait in the pool (counted from its making); then it is discarded
#: unused.  30 s: far longer than the idle gap between two connections of a busy host, far
#: shorter than a connection's own key lifetime, so a waiting private key adds little to
#: what memory could reveal (RFC 8548 §8).
POOL_LIFETIME = 30.0


class KeyPool:
    """Ready ephemeral key pairs per TEP identifier, each with the time it was made."""

    __slots__ = ("_pairs", "due")

    def __init__(self) -> None:
        #: TEP id -> ready pairs, oldest first; a TEP is a key once a connection asked for it
        self._pairs: dict[int, deque[tuple[float, EphemeralKey]]] = {}
        #: when :meth:`prepare` has work next (what it last returned, or the time of a
        #: :meth:`take` since); None: not before a connection asks for a pair
        self.due: float | None = None

    def take(self, tep: int, now: float) -> EphemeralKey | None:
        """A ready pair of ``tep`` (an id or a TEP byte), now out of the pool for good, or
        None (the caller makes one).  Either way the TEP counts as used from now on."""
        self.due = now
        pairs = self._pairs.get(tep & TEP_ID_MASK)
        if pairs is None:
            self._pairs[tep & TEP_ID_MASK] = deque()
            return None
        while pairs:
            made, key = pairs.popleft()
            if now - made < POOL_LIFETIME:
                return key
        return None

    def prepare(self, teps: Collection[int], random: Callable[[int], bytes],
                now: float) -> float | None:
        """Drop expired pairs and those of TEPs not in ``teps``, then make at most one pair
        (from ``random``) for a used TEP of ``teps`` that has fewer than :data:`POOL_SIZE`.

        Returns when to call again (also kept in :attr:`due`): ``now`` while pairs are
        still wanted, else the moment the oldest pair expires; None when the pool is empty
        and wants nothing.
        """
        self.due = None     # should making a pair fail, the daemon does not retry at once
        self.due = self._top_up(teps, random, now)
        return self.due

    def _top_up(self, teps: Collection[int], random: Callable[[int], bytes],
                now: float) -> float | None:
        due: float | None = None
        made = False
        for tep, pairs in self._pairs.items():
            while pairs and now - pairs[0][0] >= POOL_LIFETIME:
                pairs.popleft()
            if tep not in teps:
                pairs.clear()
                continue
            if len(pairs) < POOL_SIZE:
                if made:
                    return now
                pairs.append((now, key_agreement(tep).generate(random)))
                made = True
                if len(pairs) < POOL_SIZE:
                    return now
            expiry = pairs[0][0] + POOL_LIFETIME
            if due is None or expiry < due:
                due = expiry
        return due

    def __len__(self) -> int:
        return sum(len(pairs) for pairs in self._pairs.values())
