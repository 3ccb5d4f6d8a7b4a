"""Session cache and resumption suboption data (RFC 8548 §3.5)."""

from __future__ import annotations

import pytest

from tcpcryptd.core.constants import TEP, AEADId
from tcpcryptd.core.keys import next_session_secret, resumption_id
from tcpcryptd.core.resumption import (
    CacheEntry,
    SessionCache,
    new_resumption_nonce,
    own_half,
    peer_half,
    resumption_data,
)
from tcpcryptd.core.session import InitiatorHandshake, ResponderHandshake, Session

RESUME_ID = bytes(range(18))
PEER_A, PEER_B = ("10.0.0.1", 80), ("10.0.0.2", 40000)


def fresh_sessions(aead: int = AEADId.CHACHA20_POLY1305) -> tuple[Session, Session]:
    a = InitiatorHandshake(TEP.ECDHE_CURVE448, b"transcript")
    b = ResponderHandshake(TEP.ECDHE_CURVE448, b"transcript", (aead,))
    init2, session_b = b.receive_init1(a.init1)
    return a.receive_init2(init2), session_b


def test_halves() -> None:
    assert own_half(RESUME_ID, True) == RESUME_ID[:9] == peer_half(RESUME_ID, False)
    assert own_half(RESUME_ID, False) == RESUME_ID[9:] == peer_half(RESUME_ID, True)


def test_resumption_data_and_nonce() -> None:
    assert resumption_data(RESUME_ID[:9], b"\x01\x02") == RESUME_ID[:9] + b"\x01\x02"
    assert resumption_data(RESUME_ID[9:], b"") == RESUME_ID[9:]
    with pytest.raises(ValueError):
        resumption_data(RESUME_ID[:8], b"")
    with pytest.raises(ValueError):
        resumption_data(RESUME_ID[:9], bytes(9))
    assert len(new_resumption_nonce()) == 8 and len(new_resumption_nonce(0)) == 0
    assert new_resumption_nonce() != new_resumption_nonce()
    for bad in (-1, 9):
        with pytest.raises(ValueError):
            new_resumption_nonce(bad)


def test_store_lookup_take() -> None:
    cache = SessionCache()
    ss = b"s" * 32
    entry = cache.store(PEER_B, 0xA3, 0x0001, ss, 1, sends_with_k_ab=False, now=10.0)
    assert entry.tep == 0x23 and entry.resume_id == resumption_id(ss)
    assert entry.own_half == entry.resume_id[9:] and entry.peer_half == entry.resume_id[:9]
    assert cache.for_peer(PEER_B, now=11.0) is entry
    assert cache.for_peer(PEER_A, now=11.0) is None
    assert cache.by_peer_half(entry.peer_half, 0x23, now=11.0) is entry
    assert cache.by_peer_half(entry.own_half, 0x23, now=11.0) is None
    assert cache.by_peer_half(entry.peer_half, 0x24, now=11.0) is None  # TEP must match
    assert len(cache) == 1
    assert cache.take(entry)
    assert not cache.take(entry)  # one ss[i], one connection
    assert len(cache) == 0 and cache.for_peer(PEER_B, 12.0) is None
    assert cache.by_peer_half(entry.peer_half, 0x23, 12.0) is None


def test_expiry() -> None:
    cache = SessionCache(lifetime=100.0)
    entry = cache.store(PEER_A, 0x23, 1, b"x" * 32, 1, True, now=0.0)
    assert cache.by_peer_half(entry.peer_half, 0x23, now=99.9) is entry
    assert cache.by_peer_half(entry.peer_half, 0x23, now=100.0) is None
    assert len(cache) == 0
    cache.store(PEER_A, 0x23, 1, b"y" * 32, 1, True, now=0.0)
    assert cache.for_peer(PEER_A, now=150.0) is None
    cache.store(PEER_A, 0x23, 1, b"z" * 32, 1, True, now=0.0)
    cache.store(PEER_B, 0x23, 1, b"w" * 32, 1, True, now=50.0)
    assert cache.expire(now=120.0) == 1 and len(cache) == 1


def test_several_entries_per_peer_newest_first() -> None:
    cache = SessionCache()
    old = cache.store(PEER_A, 0x23, 1, b"1" * 32, 1, True, now=0.0)
    new = cache.store(PEER_A, 0x23, 1, b"2" * 32, 1, True, now=1.0)
    assert cache.for_peer(PEER_A, 2.0) is new
    cache.take(new)
    assert cache.for_peer(PEER_A, 2.0) is old
    cache.store(PEER_A, 0x23, 1, b"1" * 32, 1, True, now=3.0)  # same secret replaces
    assert len(cache) == 1
    assert cache.discard_peer(PEER_A) == 1 and len(cache) == 0


def test_lru_bound() -> None:
    cache = SessionCache(max_entries=3)
    entries = [cache.store(("h", i), 0x23, 1, bytes([i]) * 32, 1, True, now=0.0)
               for i in range(3)]
    assert cache.for_peer(("h", 0), 1.0) is entries[0]  # used: now most recent
    cache.store(("h", 3), 0x23, 1, b"\x03" * 32, 1, True, now=1.0)
    assert len(cache) == 3
    assert cache.for_peer(("h", 1), 1.0) is None  # least recently used went
    assert cache.for_peer(("h", 0), 1.0) is entries[0]
    cache.flush()
    assert len(cache) == 0 and cache.for_peer(("h", 0), 1.0) is None
    with pytest.raises(ValueError):
        SessionCache(max_entries=0)


def test_successor_and_put() -> None:
    cache = SessionCache()
    entry = cache.store(PEER_A, 0x23, 1, b"s" * 32, 4, True, now=0.0)
    assert cache.take(entry)
    nxt = entry.successor(now=5.0)
    assert nxt.index == 5 and nxt.ss == next_session_secret(entry.ss)
    assert nxt.resume_id == resumption_id(nxt.ss) and nxt.created == 5.0
    cache.put(nxt)
    assert cache.for_peer(PEER_A, 6.0) is nxt
    broken = CacheEntry(PEER_A, 0x23, 1, 0, True, 0.0, b"s" * 32, b"short")
    with pytest.raises(ValueError):
        cache.put(broken)


def test_entry_repr_hides_secrets() -> None:
    entry = SessionCache().store(PEER_A, 0x23, 1, b"s" * 32, 1, True, now=0.0)
    assert entry.ss.hex() not in repr(entry) and entry.resume_id.hex() not in repr(entry)
    assert "ss=" not in repr(entry)


def test_resume_end_to_end_both_directions() -> None:
    """Fresh session, then resume with the original roles, then with the roles swapped."""
    session_a, session_b = fresh_sessions()
    cache_a, cache_b = SessionCache(), SessionCache()  # host A's and host B's caches
    cache_a.store_session(PEER_B, session_a, 0, now=0.0)
    cache_b.store_session(PEER_A, session_b, 0, now=0.0)

    # Host A reconnects as active opener: offers its half, B finds it by that half.
    offer = cache_a.for_peer(PEER_B, now=1.0)
    assert offer is not None and offer.index == 1 and offer.aead == AEADId.CHACHA20_POLY1305
    nonce_a = new_resumption_nonce()
    found = cache_b.by_peer_half(offer.own_half, TEP.ECDHE_CURVE448, now=1.0)
    assert found is not None and cache_b.take(found) and cache_a.take(offer)
    nonce_b = new_resumption_nonce(5)
    assert found.own_half == offer.peer_half  # B's answer names the same secret
    r_a = offer.resume_session("A", nonce_a, nonce_b)
    r_b = found.resume_session("B", nonce_b, nonce_a)
    assert r_a.session_id == r_b.session_id and r_a.session_id[0] == 0xA4
    assert r_a.ss == next_session_secret(session_a.ss) and r_a.sn == nonce_a + nonce_b
    assert r_b.open(0, r_a.seal(0, b"resumed")).data == b"resumed"

    # Next time host B (originally B) connects to A: roles swap, key directions do not.
    cache_a.store_session(PEER_B, r_a, offer.index, now=2.0)
    cache_b.store_session(PEER_A, r_b, found.index, now=2.0)
    offer2 = cache_b.for_peer(PEER_A, now=3.0)
    assert offer2 is not None and offer2.index == 2
    found2 = cache_a.by_peer_half(offer2.own_half, TEP.ECDHE_CURVE448, now=3.0)
    assert found2 is not None and cache_a.take(found2) and cache_b.take(offer2)
    now_a = offer2.resume_session("A", b"n1", b"n2")       # host B, now role A
    now_b = found2.resume_session("B", b"n2", b"n1")       # host A, now role B
    assert now_a.sn == now_b.sn == b"n2n1"                  # nonce of the original A first
    assert now_a.session_id == now_b.session_id
    assert not now_a.sends_with_k_ab and now_b.sends_with_k_ab
    assert now_a.open(0, now_b.seal(0, b"x")).data == b"x"
    assert now_b.open(0, now_a.seal(0, b"y")).data == b"y"
