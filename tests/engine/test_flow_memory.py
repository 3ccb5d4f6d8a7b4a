"""Memory of established, idle flows (docs/ARCHITECTURE.md "Memory";
``python -m bench.flow_memory``).

* a bound on the Python bytes an idle encrypted flow keeps (tracemalloc), so a regression
  fails here rather than in the daemon bench, and the ``Flow`` instance within CPython's
  small-object limit (a larger one is a C heap chunk that keeps freed pages resident);
* what an idle flow drops: the ENO handshake state once keys exist, the AEAD objects
  (OpenSSL contexts, ~2.4 KB each: invisible to tracemalloc) after
  ``EngineConfig.aead_idle_release`` seconds without a packet -- and that the next packet
  rebuilds them and the flow goes on, rekeying included.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[2]))

from _hand import (  # noqa: E402
    ACK,
    ISN_A,
    ISN_B,
    PSH,
    EngineConfig,
    Pair,
    stack_bytes,
)

from bench.flow_memory import FlowPairs  # noqa: E402
from tcpcryptd.engine.flow import SMALL_OBJECT_LIMIT  # noqa: E402

#: tracemalloc bytes per idle encrypted flow, mean of both engines' flows: 2,812 B measured
#: by this test when the bound was set (7,5xx B before Flow had __slots__ and idle flows
#: dropped their ENO state, acknowledged frames and AEAD objects), plus 25%.  The AEAD
#: objects' OpenSSL contexts are invisible here: ``aead_built`` is asserted instead.
MAX_TRACED_BYTES_PER_FLOW = 3500


def _flow(host):
    (flow,) = host.engine._flows.values()
    return flow


def test_idle_encrypted_flow_python_memory_is_bounded():
    config = EngineConfig()
    warm = FlowPairs(config)
    warm.check(warm.open_many(10, first_port=60000))
    warm.idle(30.0)
    del warm
    pairs = FlowPairs(config)
    count = 400
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        ports = pairs.open_many(count, rate=155.0)
        pairs.check(ports)
        pairs.idle(30.0)
        gc.collect()
        per_flow = (tracemalloc.get_traced_memory()[0] - base) / (2 * count)
    finally:
        tracemalloc.stop()
    for engine in (pairs.a, pairs.b):
        for flow in engine._flows.values():
            assert flow.eno is None and flow.negotiated is None and flow.handshake is None
            assert not flow.session.aead_built
            # from CPython's small-object pools, not a C heap chunk that would pin the
            # pages of freed cipher contexts (getsizeof counts the GC header too)
            assert sys.getsizeof(flow) <= SMALL_OBJECT_LIMIT
    assert per_flow <= MAX_TRACED_BYTES_PER_FLOW, f"{per_flow:.0f} B per idle flow"


def _exchange(pair: Pair, sent: dict[str, int], a_data: bytes, b_data: bytes) -> None:
    """A's stack sends ``a_data``, B's stack answers ``b_data``, A's stack ACKs it."""
    a, b = pair.a, pair.b
    pair.send(a, a.seg(ISN_A + 1 + sent["a"], ISN_B + 1 + sent["b"], ACK | PSH, a_data))
    sent["a"] += len(a_data)
    pair.send(b, b.seg(ISN_B + 1 + sent["b"], ISN_A + 1 + sent["a"], ACK | PSH, b_data))
    sent["b"] += len(b_data)
    pair.send(a, a.seg(ISN_A + 1 + sent["a"], ISN_B + 1 + sent["b"], ACK))


def _idle(pair: Pair, until: float) -> None:
    """Run both engines' timers up to ``until`` (each due deadline in turn)."""
    for host in (pair.a, pair.b):
        while (deadline := host.engine.next_deadline()) is not None and deadline <= until:
            result = pair.timer(host, deadline)
            assert not result.transmit
    pair.now = until


def test_idle_flow_releases_its_aead_objects_and_the_next_packet_rebuilds_them():
    pair = Pair()
    pair.handshake()
    a, b = pair.a, pair.b
    sent = {"a": 0, "b": 0}
    _exchange(pair, sent, b"request 1", b"response 1")
    fa, fb = _flow(a), _flow(b)
    assert fa.session.aead_built and fb.session.aead_built
    release = EngineConfig().aead_idle_release
    assert 0 < release < EngineConfig().idle_timeout
    # not yet: the flows were active less than aead_idle_release ago
    _idle(pair, release - 0.5)
    assert fa.session.aead_built and fb.session.aead_built
    _idle(pair, release + 0.5)
    assert not fa.session.aead_built and not fb.session.aead_built
    assert fa.aead_idle_at is None and fb.aead_idle_at is None
    # status is unchanged by the release
    (status,) = a.engine.flows()
    assert status.state == "encrypted" and status.aead == "AES-128-GCM"
    assert status.tep == "ECDHE_CURVE25519" and len(status.session_id) == 66
    # a pure ACK needs no key: nothing is rebuilt
    pair.send(a, a.seg(ISN_A + 1 + sent["a"], ISN_B + 1 + sent["b"], ACK))
    assert not fa.session.aead_built
    # data both ways: keys rebuilt, the bytes arrive intact, the release timer is armed again
    pair.now = 20.0
    _exchange(pair, sent, b"request 2", b"response 2")
    assert stack_bytes(b, ISN_A) == b"request 1request 2"
    assert stack_bytes(a, ISN_B) == b"response 1response 2"
    assert fa.session.aead_built and fb.session.aead_built
    assert fa.aead_idle_at == fb.aead_idle_at == 20.0 + release
    assert a.engine.next_deadline() <= 20.0 + release
    # ... and released again once idle
    _idle(pair, 20.0 + release + 0.5)
    assert not fa.session.aead_built and not fb.session.aead_built
    assert a.engine.counters["aborts"] == b.engine.counters["aborts"] == 0


def test_busy_flow_keeps_its_aead_objects():
    pair = Pair()
    pair.handshake()
    sent = {"a": 0, "b": 0}
    release = EngineConfig().aead_idle_release
    fa = _flow(pair.a)
    for k in range(12):   # an exchange every release/2 seconds, timers run in between
        _exchange(pair, sent, b"ping %d" % k, b"pong %d" % k)
        _idle(pair, (k + 1) * release / 2)
        assert fa.session.aead_built   # never idle for aead_idle_release: never released
    assert stack_bytes(pair.a, ISN_B) == b"".join(b"pong %d" % k for k in range(12))


def test_rekeying_across_released_aead_objects():
    pair = Pair()
    pair.handshake()
    a, b = pair.a, pair.b
    sent = {"a": 0, "b": 0}
    _exchange(pair, sent, b"generation 0", b"generation 0 too")
    fa, fb = _flow(a), _flow(b)
    _idle(pair, 30.0)
    assert not fa.session.aead_built and not fb.session.aead_built
    # B starts generation 1 with released keys; A answers with its own rekey frame
    fb.session.initiate_rekey()
    pair.send(b, b.seg(ISN_B + 1 + sent["b"], ISN_A + 1 + sent["a"], ACK | PSH, b"new keys"))
    sent["b"] += len(b"new keys")
    pair.send(a, a.seg(ISN_A + 1 + sent["a"], ISN_B + 1 + sent["b"], ACK))
    assert stack_bytes(a, ISN_B).endswith(b"new keys")
    assert fa.session.local_generation == fa.session.send_generation == 1
    assert fb.session.remote_generation == 1
    _idle(pair, 60.0)
    assert not fa.session.aead_built and not fb.session.aead_built
    # generation 1 keys are rebuilt from the schedule after the release
    _exchange(pair, sent, b"gen 1 request", b"gen 1 response")
    assert stack_bytes(b, ISN_A) == b"generation 0gen 1 request"
    assert stack_bytes(a, ISN_B) == b"generation 0 toonew keysgen 1 response"
    for session in (fa.session, fb.session):
        assert (session.local_generation, session.remote_generation) == (1, 1)
    assert a.engine.counters["aborts"] == b.engine.counters["aborts"] == 0


def test_release_disabled_keeps_the_aead_objects():
    config = EngineConfig(aead_idle_release=0)
    pair = Pair(config, config)
    pair.handshake()
    _exchange(pair, {"a": 0, "b": 0}, b"x", b"y")
    _idle(pair, 600.0)
    assert _flow(pair.a).session.aead_built and _flow(pair.b).session.aead_built


def test_the_timer_heap_keeps_about_one_entry_per_flow():
    """Deadlines that move earlier push new heap entries; superseded ones are compacted away
    instead of staying until they come due (75 s for a handshake's)."""
    pairs = FlowPairs(EngineConfig())
    pairs.open_many(1500, rate=1000.0)
    pairs.idle(10.0)
    for engine in (pairs.a, pairs.b):
        assert len(engine._flows) == 1500
        assert len(engine._deadlines.heap) <= 3 * len(engine._flows) // 2 + 256
        live = [e for e in engine._deadlines.heap if e[2].scheduled == e[0]]
        assert len(live) == len(engine._flows)


#: tracemalloc bytes per half-open ENO flow (SYN in, the stack's SYN-ACK out, no third
#: segment): 723 B measured by ``python -m bench.flow_memory --half-open 20000`` when the bound
#: was set (2,542 B before passive flows were HalfOpen records), plus ~25%.
MAX_TRACED_BYTES_PER_HALF_OPEN = 900


def test_half_open_flow_python_memory_is_bounded():
    from bench.flow_memory import measure_half_open
    result = measure_half_open(4000, trace=True)
    assert result["half_open_trace_per_flow"] <= MAX_TRACED_BYTES_PER_HALF_OPEN, result
