"""The engine's fast paths (``fast_outbound``/``fast_inbound``) against the full paths.

The fast paths read a packet's header with one ``struct`` call and handle the common
segments of an encrypted flow; they must give exactly what the full parse-and-rewrite paths
give. Each scenario of the deterministic simulation is run twice, once with
``Engine(fast_path=False)``, and every call's input and result (verdict, bytes, releases,
injected packets) is recorded: the two recordings must be identical, byte for byte. Key
generation is made deterministic for this (seeded ephemeral keys and nonces), so the
ciphertexts can be compared too: the engines draw them from a seeded generator
(``EngineConfig.random``). The runs also pass the simulation's own invariant checks.

The same comparison covers ``checksum_partial``: a run whose engines get every small TCP
packet as the local stack leaves it for the NIC (the checksum field holding only the
pseudo-header sum, ``CHECKSUM_PARTIAL``) must give the same bytes as one that gets complete
checksums.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from sim.harness import check, run
from sim.wire import Impairments
from test_sim import LOSSES, random_scenario

from tcpcryptd.engine import Direction, Engine, EngineConfig, Result
from tcpcryptd.packet.checksum import tcp_checksum
from tcpcryptd.packet.tcp import PacketError, TCPPacket

#: the daemon's limit for ``checksum_partial`` (larger packets never get it)
PARTIAL_MAX = 2048


def checksum_partial_form(data: bytes) -> bytes | None:
    """``data`` as a sending stack hands it over with ``CHECKSUM_PARTIAL`` (the TCP checksum
    field holds the folded pseudo-header sum), or None when it is not such a TCP packet."""
    try:
        pkt = TCPPacket.parse(data)
    except PacketError:
        return None
    start = len(data) - len(pkt.payload) - len(pkt.options) - 20
    if len(data) > PARTIAL_MAX or start != (20 if pkt.version == 4 else 40):
        return None
    pseudo = tcp_checksum(pkt.src, pkt.dst, bytes(len(data) - start))
    return data[:start + 16] + (~pseudo & 0xFFFF).to_bytes(2, "big") + data[start + 18:]


class _Recorder(Engine):
    """The real engine, writing down every call and what it returned."""

    def __init__(self, log: list, config: EngineConfig, fast_path: bool,
                 partial: bool = False) -> None:
        super().__init__(config, fast_path=fast_path)
        self.log = log
        self.fast_hits = 0
        #: hand small TCP packets over in their ``CHECKSUM_PARTIAL`` form
        self.partial = partial
        self.partial_calls = 0

    @staticmethod
    def _summary(result: Result) -> tuple:
        return (result.verdict, result.data, result.plain,
                [(r.packet_id, r.data, r.accept) for r in result.releases],
                [(t.data, t.direction) for t in result.transmit])

    def handle_packet(self, packet_id: int, data: bytes, direction: Direction,
                      now: float) -> Result:
        partial = checksum_partial_form(data) if self.partial else None
        if partial is None:
            result = super().handle_packet(packet_id, data, direction, now)
        else:
            self.partial_calls += 1
            result = super().handle_packet(packet_id, partial, direction, now,
                                           checksum_partial=True)
        self.log.append(("packet", packet_id, data, direction, now, self._summary(result)))
        return result

    def handle_timer(self, now: float) -> Result:
        result = super().handle_timer(now)
        self.log.append(("timer", now, self._summary(result)))
        return result

    def _fast(self, *args) -> Result | None:
        result = super()._fast(*args)
        self.fast_hits += result is not None
        return result


def _record(scenario, fast_path: bool, partial: bool = False):
    log: list = []
    engines: list[_Recorder] = []
    # keys and nonces from one seeded generator, drawn in call order: the same for both runs
    config = EngineConfig(random=random.Random(scenario.name).randbytes)

    def factory() -> _Recorder:
        engines.append(_Recorder(log, config, fast_path, partial))
        return engines[-1]

    result = run(scenario, engine_factory=factory)
    return (log, result, sum(e.fast_hits for e in engines),
            sum(e.partial_calls for e in engines))


SCENARIOS = [random_scenario(seed, loss, version) for seed in range(6) for loss in LOSSES
             for version in (4, 6)]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_fast_path_gives_the_same_bytes(scenario) -> None:
    fast_log, fast_result, hits, _ = _record(scenario, True)
    full_log, full_result, no_hits, _ = _record(scenario, False)
    assert no_hits == 0
    assert not check(fast_result) and not check(full_result)
    _same(fast_log, full_log)


@pytest.mark.parametrize("fast_path", (True, False), ids=("fast", "full"))
@pytest.mark.parametrize("scenario", SCENARIOS[::4], ids=lambda s: s.name)
def test_checksum_partial_gives_the_same_bytes(scenario, fast_path) -> None:
    log, result, _, _ = _record(scenario, fast_path)
    partial_log, partial_result, _, partial_calls = _record(scenario, fast_path, partial=True)
    assert partial_calls > 0.5 * sum(1 for entry in log if entry[0] == "packet")
    assert not check(result) and not check(partial_result)
    _same(log, partial_log)


def _same(log: list, other: list) -> None:
    assert len(log) == len(other)
    for k, (one, two) in enumerate(zip(log, other)):
        assert one == two, f"call {k} differs: {one!r}\nother {two!r}"


def test_fast_path_carries_a_bulk_transfer() -> None:
    """Most packets of a clean bulk transfer take the fast paths (both directions, both
    roles; what is left is the handshake and the close), so the comparison above exercises
    them."""
    scenario = replace(random_scenario(1, 0.0, 4), c2s_bytes=300_000, s2c_bytes=300_000,
                       connections=1, impairments=Impairments(), slow_reader=False,
                       keepalive=False, urgent=False)
    log, result, hits, _ = _record(scenario, True)
    assert not check(result)
    packets = sum(1 for entry in log if entry[0] == "packet")
    assert hits > 0.85 * packets, (hits, packets)
