"""Simulation scenarios of rekeying (RFC 8548 §3.8) and keep-alive (§3.9).

Both engines run with a small ``rekey_bytes``, data flows both ways at once over a wire that
loses, duplicates, reorders (jitter) and resegments: every scenario must pass the
simulation's checks (docs/daemon.md "What the tests check": intact streams, no plaintext,
no two bytes at one wire offset -- a re-encryption under a new key would show there) and
each direction's wire stream must carry rekey frames that the sender itself started (with
data) -- at least two per direction -- and the peer's immediate answers.  The engines'
``Rekeyed`` events must name the same generations and keys at both ends, and each engine
ends holding only the keys of its current generations.  The keep-alive scenario leaves a
connection idle long enough for both stacks' TCP keep-alives: each must become an
empty-frame rekey the peer answers, never a segment in the wire stream outside the frames.
"""

from __future__ import annotations

import random
import struct

import pytest
from sim.harness import Scenario, check, run
from sim.stack import StackConfig
from sim.wire import C2S, S2C, Impairments
from test_fast_path import _Recorder

from tcpcryptd.core.frame import CONTROL_REKEY, HEADER_LEN, MIN_CLEN
from tcpcryptd.engine import Direction, Engine, EngineConfig, Result
from tcpcryptd.engine.events import Rekeyed

REKEY_BYTES = 6000


class _Logging(Engine):
    """The real engine, keeping its ``Rekeyed`` events."""

    def __init__(self, config: EngineConfig) -> None:
        super().__init__(config)
        self.rekeyed: list[Rekeyed] = []

    def _keep(self, result: Result) -> Result:
        self.rekeyed += [e for e in result.events if isinstance(e, Rekeyed)]
        return result

    def handle_packet(self, packet_id: int, data: bytes, direction: Direction,
                      now: float) -> Result:
        return self._keep(super().handle_packet(packet_id, data, direction, now))

    def handle_timer(self, now: float) -> Result:
        return self._keep(super().handle_timer(now))


def _rekey_frames(rec) -> tuple[int, int]:
    """(rekey frames carrying data, empty rekey frames) in one direction's wire stream."""
    wire = rec.contiguous()
    pos = struct.unpack_from("!I", wire, 4)[0]   # after the Init message (message_len)
    with_data = empty = 0
    while pos + HEADER_LEN <= len(wire):
        clen = struct.unpack_from("!H", wire, pos + 1)[0]
        if wire[pos] & CONTROL_REKEY:
            if clen > MIN_CLEN:
                with_data += 1
            else:
                empty += 1
        pos += HEADER_LEN + clen
    return with_data, empty


def _scenario(seed: int, loss: float, version: int) -> Scenario:
    return Scenario(
        f"rekey-both-v{version}-loss{round(loss * 100)}-s{seed}", seed, version,
        c2s_bytes=60_000 + 7_000 * seed, s2c_bytes=50_000 + 9_000 * seed,
        impairments=Impairments(loss=loss, duplicate=0.02, jitter=0.01, resegment=0.2))


SCENARIOS = [_scenario(seed, loss, v) for v in (4, 6)
             for seed, loss in ((1, 0.0), (2, 0.02), (3, 0.05), (4, 0.1))]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_rekey_under_loss_and_reorder_both_directions(scenario: Scenario) -> None:
    engines: list[_Logging] = []
    config = EngineConfig(rekey_bytes=REKEY_BYTES)

    def factory() -> _Logging:
        engines.append(_Logging(config))
        return engines[-1]

    result = run(scenario, engine_factory=factory)
    assert not check(result)
    (conn,) = result.conns
    for direction in (C2S, S2C):
        initiated, answers = _rekey_frames(conn.log.records[direction])
        assert initiated >= 2, (direction, initiated, answers)
    client, server = engines
    # one event per generation at each end, the same keys: the key logs agree
    assert [e.generation for e in client.rekeyed] == list(range(1, len(client.rekeyed) + 1))
    assert ([(e.generation, e.k_ab, e.k_ba) for e in client.rekeyed]
            == [(e.generation, e.k_ab, e.k_ba) for e in server.rekeyed])
    assert len(client.rekeyed) >= 4
    for engine in engines:
        assert engine.counters["aborts"] == 0
        for flow in engine._flows.values():
            session = flow.session
            if session is not None:   # old generations are gone (§3.8)
                assert session.schedule.lowest_generation >= session.remote_generation - 1


def test_rekey_fast_path_gives_the_same_bytes() -> None:
    """Segments that start a generation leave the fast paths; the rest are byte for byte
    what the full paths give (tests/engine/test_fast_path.py, with rekeying)."""
    scenario = _scenario(2, 0.02, 4)
    logs = []
    for fast_path in (True, False):
        log: list = []
        config = EngineConfig(rekey_bytes=REKEY_BYTES, random=random.Random(1).randbytes)
        assert not check(run(scenario, engine_factory=lambda log=log, config=config, fast=fast_path:
                                 _Recorder(log, config, fast)))
        logs.append(log)
    assert len(logs[0]) == len(logs[1])
    for k, (fast, full) in enumerate(zip(*logs)):
        assert fast == full, f"call {k} differs"


@pytest.mark.parametrize("keepalive_byte", [False, True])
def test_keepalive_on_an_idle_encrypted_connection(keepalive_byte: bool) -> None:
    """Both stacks send TCP keep-alives while the connection idles: each becomes an
    authenticated empty-frame rekey (§3.9) the peer answers (§3.8); the connection lives."""
    stack = StackConfig(keepalive_byte=keepalive_byte)
    scenario = Scenario(f"keepalive-idle-byte{int(keepalive_byte)}", 3, 4, c2s_bytes=3000,
                        s2c_bytes=2000, keepalive=True, idle_before_close=4.0,
                        client_stack=stack, server_stack=stack,
                        impairments=Impairments(loss=0.02, jitter=0.002))
    engines: list[_Logging] = []

    def factory() -> _Logging:
        engines.append(_Logging(EngineConfig()))
        return engines[-1]

    result = run(scenario, engine_factory=factory)
    assert not check(result)
    assert result.client.stack.stats.keepalives_sent > 0
    assert result.server.stack.stats.keepalives_sent > 0
    client, server = engines
    assert client.counters["keepalive_rekeys"] > 0 and server.counters["keepalive_rekeys"] > 0
    assert client.counters["aborts"] == server.counters["aborts"] == 0
    (conn,) = result.conns
    for direction in (C2S, S2C):
        _, empty = _rekey_frames(conn.log.records[direction])
        assert empty > 0
    assert [e.generation for e in client.rekeyed] == [e.generation for e in server.rekeyed]
