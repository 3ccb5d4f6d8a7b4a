"""Ephemeral key pairs made ahead of need (engine/keypool.py, ``Engine.prepare``).

Each pair serves one connection, a pair past its lifetime is never used, only TEPs that
connections use and the configuration lists get pairs, and a handshake with a pair made
ahead is byte for byte the handshake it would have been without the pool.
"""

from __future__ import annotations

import dataclasses
import random as random_module

import pytest

from tcpcryptd.core.constants import TEP
from tcpcryptd.core.messages import parse_init1, parse_init2
from tcpcryptd.core.session import InitiatorHandshake, ResponderHandshake
from tcpcryptd.core.tep import key_agreement
from tcpcryptd.engine import EngineConfig
from tcpcryptd.engine.keypool import POOL_LIFETIME, POOL_SIZE, KeyPool
from tcpcryptd.packet.tcp import TCPPacket

from _hand import Pair

X25519, X448, P256 = TEP.ECDHE_CURVE25519, TEP.ECDHE_CURVE448, TEP.ECDHE_P256


def seeded(seed: int):
    """A deterministic ``random(n)``: one seeded stream per length, so the bytes a key pair
    (56 bytes for X448) gets do not depend on when nonces (32 bytes) are drawn."""
    streams: dict[int, random_module.Random] = {}

    def draw(n: int) -> bytes:
        return streams.setdefault(n, random_module.Random(seed * 1000 + n)).randbytes(n)
    return draw


def fill(pool: KeyPool, teps, random, now: float) -> int:
    """Call prepare until it stops asking; returns how many calls it took."""
    calls = 1
    while pool.prepare(teps, random, now) == now:
        calls += 1
    return calls


# ---- the pool alone


def test_only_used_teps_of_the_configuration_get_pairs_one_per_call():
    pool = KeyPool()
    assert pool.prepare((X25519, X448), seeded(1), 0.0) is None     # nothing used yet
    assert len(pool) == 0
    assert pool.take(X25519, 0.0) is None and pool.take(P256, 0.0) is None
    assert pool.prepare((X25519, X448), seeded(1), 1.0) == 1.0      # one made, more wanted
    assert len(pool) == 1
    assert pool.prepare((X25519, X448), seeded(1), 2.0) == 1.0 + POOL_LIFETIME  # full
    assert len(pool) == POOL_SIZE == 2                            # P-256 not configured
    assert pool.prepare((X25519, X448), seeded(1), 3.0) == 1.0 + POOL_LIFETIME
    assert len(pool) == 2


def test_each_pair_is_handed_out_once_then_the_pool_is_empty():
    pool = KeyPool()
    pool.take(X25519 | 0x80, 0.0)               # a TEP byte with the v bit names the TEP
    fill(pool, (X25519,), seeded(2), 0.0)
    keys = [pool.take(X25519, 1.0) for _ in range(POOL_SIZE + 1)]
    assert keys[-1] is None and len(pool) == 0
    assert len({key.pub for key in keys[:-1]}) == POOL_SIZE
    assert all(key.scheme is key_agreement(X25519) for key in keys[:-1])


def test_expired_pairs_are_never_handed_out_and_are_replaced():
    pool = KeyPool()
    pool.take(X25519, 0.0)
    fill(pool, (X25519,), seeded(3), 0.0)
    old = {pool._pairs[X25519][k][1].pub for k in range(POOL_SIZE)}
    assert pool.take(X25519, POOL_LIFETIME) is None   # both expired: dropped, none given
    assert len(pool) == 0
    fill(pool, (X25519,), seeded(4), POOL_LIFETIME)
    assert len(pool) == POOL_SIZE
    # prepare itself drops what expired, then makes new pairs
    assert pool.prepare((X25519,), seeded(5), 2 * POOL_LIFETIME) == 2 * POOL_LIFETIME
    assert len(pool) == 1
    fresh = pool.take(X25519, 2 * POOL_LIFETIME)
    assert fresh is not None and fresh.pub not in old


def test_due_says_when_prepare_has_work_and_a_failure_is_not_retried_at_once():
    pool = KeyPool()
    assert pool.due is None
    pool.take(X25519, 5.0)
    assert pool.due == 5.0
    fill(pool, (X25519,), seeded(8), 6.0)
    assert pool.due == 6.0 + POOL_LIFETIME
    pool.take(X25519, 7.0)
    assert pool.due == 7.0

    def broken(n: int) -> bytes:
        raise OSError("no entropy")
    with pytest.raises(OSError):
        pool.prepare((X25519,), broken, 8.0)
    assert pool.due is None


def test_pairs_of_teps_no_longer_configured_are_dropped():
    pool = KeyPool()
    pool.take(X448, 0.0)
    fill(pool, (X448,), seeded(6), 0.0)
    assert pool.prepare((X25519,), seeded(6), 1.0) is None
    assert len(pool) == 0 and pool.take(X448, 1.0) is None


def test_same_random_gives_the_same_pairs():
    pools = [KeyPool(), KeyPool()]
    for pool in pools:
        pool.take(X25519, 0.0)
        pool.take(P256, 0.0)
        fill(pool, (X25519, P256), seeded(7), 0.0)
    pubs = [[pair[1].pub for pairs in pool._pairs.values() for pair in pairs] for pool in pools]
    assert pubs[0] == pubs[1] and len(pubs[0]) == 2 * POOL_SIZE


@pytest.mark.parametrize("handshake", [InitiatorHandshake, ResponderHandshake])
def test_a_handshake_refuses_a_pair_of_another_tep_or_with_a_private_key(handshake):
    key = key_agreement(X448).generate()
    with pytest.raises(ValueError, match="not ECDHE-Curve25519"):
        handshake(X25519, b"t", ephemeral=key)
    with pytest.raises(ValueError, match="not both"):
        handshake(X448, b"t", ephemeral=key, private_key=key.private_bytes())


# ---- the engine


def connect(pair: Pair, port: int) -> tuple[bytes, bytes]:
    """A new connection from A's ``port`` (SYN, SYN-ACK, third ACK, Init1, Init2); returns
    Pub_A of its Init1 and Pub_B of its Init2."""
    pair.a.port = pair.b.peer_port = port
    start = len(pair.wire)
    pair.handshake()
    payloads = [bytes(TCPPacket.parse(raw).payload) for raw in pair.wire[start:]]
    init1, init2 = (p for p in payloads if p)
    (flow,) = [f for f in pair.a.engine.flows() if f.local.endswith(f":{port}")]
    assert flow.state == "encrypted"
    tep = TEP[flow.tep]
    return parse_init1(init1, tep).pub_a, parse_init2(init2, tep).pub_b


def fresh_pair() -> Pair:
    """Two engines that never resume (every connection runs the Init exchange)."""
    config = EngineConfig(resumption_enabled=False)
    return Pair(config, config)


def prepared(pair: Pair, now: float) -> list[list[bytes]]:
    """Both engines' pools filled at ``now``; the Pubs ready in A's and in B's pool."""
    for host in (pair.a, pair.b):
        calls = 1
        while host.engine.prepare(now) == now:
            calls += 1
        assert calls <= POOL_SIZE + 1
    return [[key.pub for _, key in host.engine._ctx.keys._pairs[X25519]]
            for host in (pair.a, pair.b)]


def test_connections_use_each_prepared_pair_once_and_make_their_own_when_none_is_ready():
    pair = fresh_pair()
    assert pair.a.engine.prepare(0.0) is None       # no TEP used yet: nothing made
    assert pair.a.engine.prepare_due() is None
    pair.now = 1.0
    first = connect(pair, 40000)                    # makes its pairs, marks X25519 used
    assert pair.a.engine.prepare_due() == pair.b.engine.prepare_due() == 1.0
    ready_a, ready_b = prepared(pair, 1.0)
    assert len(ready_a) == len(ready_b) == POOL_SIZE
    seen = [first]
    for k in range(POOL_SIZE):
        pub_a, pub_b = connect(pair, 40001 + k)
        assert (pub_a, pub_b) == (ready_a[k], ready_b[k])
        seen.append((pub_a, pub_b))
    seen.append(connect(pair, 40100))               # pools empty: made in the handshake
    assert pair.a.engine.counters["key_pairs_ready"] == POOL_SIZE
    assert pair.b.engine.counters["key_pairs_ready"] == POOL_SIZE
    pubs = [pub for pubs in seen for pub in pubs]
    assert len(set(pubs)) == len(pubs)              # never a pair twice
    assert [f.session_id for f in pair.a.engine.flows()] == \
        [f.session_id for f in pair.b.engine.flows()]


def test_a_pair_past_its_lifetime_is_never_used():
    pair = fresh_pair()
    connect(pair, 40000)
    ready_a, ready_b = prepared(pair, 0.0)
    pair.now = POOL_LIFETIME
    pub_a, pub_b = connect(pair, 40001)
    assert pub_a not in ready_a and pub_b not in ready_b
    assert "key_pairs_ready" not in pair.a.engine.counters
    for host in (pair.a, pair.b):
        assert host.engine.prepare(pair.now) == pair.now   # expired ones gone, refilling


def test_disabled_engine_drops_its_pairs():
    pair = fresh_pair()
    connect(pair, 40000)
    prepared(pair, 0.0)
    engine = pair.a.engine
    engine.config = dataclasses.replace(engine.config, enabled=False)
    assert engine.prepare(1.0) is None and len(engine._ctx.keys) == 0


def test_a_prepared_pair_gives_the_same_handshake_bytes_as_one_made_on_the_spot():
    """Same seeded randomness, with and without prepare: every packet of the second
    connection on the wire is identical (the pool changes when a pair is made, not what)."""
    def run(prepare: bool) -> list[bytes]:
        config = EngineConfig(teps=(X448,), resumption_enabled=False)
        pair = Pair(dataclasses.replace(config, random=seeded(10)),
                    dataclasses.replace(config, random=seeded(11)))
        connect(pair, 40000)
        if prepare:
            prepared_pubs = [[key.pub for _, key in host.engine._ctx.keys._pairs.get(X448, ())]
                             for host in (pair.a, pair.b)]
            assert prepared_pubs == [[], []]
            for host in (pair.a, pair.b):
                while host.engine.prepare(0.0) == 0.0:
                    pass
                assert len(host.engine._ctx.keys) == POOL_SIZE
        start = len(pair.wire)
        connect(pair, 40001)
        if prepare:
            assert all(len(host.engine._ctx.keys) == POOL_SIZE - 1 for host in (pair.a, pair.b))
        return pair.wire[start:]

    assert run(prepare=True) == run(prepare=False)
