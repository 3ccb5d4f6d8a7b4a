"""Connection setup never waits for a timer: timing pinned on the simulated clock.

The connection benchmark (``bench.conntool rr``: connect, 1-byte request, 1-byte response,
close) is slow under tcpcryptd. The obvious suspects were packets held until some timer
fired: the engine's redelivery timer (``local_rto``), the retransmission timer of injected
bytes (Init1/Init2, empty FINp frames), the local stack's delayed ACK around the
engine-made ACK of Init2, or the FINp close. These tests replay that exchange in the
deterministic simulation (fixed one-way latency, no loss) and compare it with the same
exchange without engines. The expected cost is exactly one round trip: host A's
request waits for Init2 (RFC 8548 §3.3, no data before the keys exist), so Init1 -> Init2
is one extra round trip. Any timer wait on the way shows up as a later time on the
simulated clock. Nothing here measures the CPU clock, so these tests cannot fail on timing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from sim.harness import Scenario, Simulation
from sim.stack import StackConfig
from sim.wire import Impairments

from tcpcryptd.engine import Engine, Result
from tcpcryptd.packet.tcp import FIN, TCPPacket

LATENCY = Impairments().latency


@dataclass
class _Timeline:
    """Simulated times at which packets reached each local stack."""

    first_response_byte: float | None = None
    response_fin: float | None = None
    arrivals: list[tuple[float, str, int, bool]] = field(default_factory=list)


class _RequestResponse(Simulation):
    """One connection as conntool rr makes it: the server answers only after the request."""

    def __init__(self, scenario: Scenario, engine_factory=None) -> None:
        super().__init__(scenario, engine_factory)
        self.timeline = _Timeline()
        for conn in self.conns:
            conn.server.app.wait_for = scenario.c2s_bytes

    def _to_stack(self, side, data: bytes) -> None:
        pkt = TCPPacket.parse(data)
        fin = bool(pkt.flags & FIN)
        self.timeline.arrivals.append((self.now, side.name, len(pkt.payload), fin))
        if side.name == "client":
            if pkt.payload and self.timeline.first_response_byte is None:
                self.timeline.first_response_byte = self.now
            if fin and self.timeline.response_fin is None:
                self.timeline.response_fin = self.now
        super()._to_stack(side, data)


class _TimerWatch(Engine):
    """The real engine; remembers every timer run that made or released a packet."""

    fired: list[tuple[float, Result]]

    def __init__(self) -> None:
        super().__init__()
        self.fired = []

    def handle_timer(self, now: float) -> Result:
        result = super().handle_timer(now)
        if result.transmit or result.releases:
            self.fired.append((now, result))
        return result


def _run(engines: bool, delayed_ack: bool, version: int) -> tuple[_RequestResponse, list]:
    stack = StackConfig(delayed_ack=delayed_ack)
    scenario = Scenario(f"rr-{'eno' if engines else 'plain'}-dack{int(delayed_ack)}-v{version}",
                        seed=11, version=version, client_engine=engines, server_engine=engines,
                        c2s_bytes=1, s2c_bytes=1, client_stack=stack, server_stack=stack)
    engines_made: list[_TimerWatch] = []

    def factory() -> _TimerWatch:
        engines_made.append(_TimerWatch())
        return engines_made[-1]

    sim = _RequestResponse(scenario, factory)
    sim.run()
    return sim, engines_made


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("delayed_ack", [True, False], ids=["delack", "quickack"])
def test_request_response_costs_one_round_trip_and_no_timer(delayed_ack: bool, version: int):
    plain, _ = _run(False, delayed_ack, version)
    eno, engines = _run(True, delayed_ack, version)
    assert eno.conns[0].client.stack.received == plain.conns[0].client.stack.received
    assert all(engine.counters["encrypted"] == 1 for engine in engines)
    rtt = 2 * LATENCY
    # Init1 -> Init2 is the one round trip tcpcrypt adds before A's first byte may leave
    assert eno.timeline.first_response_byte == pytest.approx(
        plain.timeline.first_response_byte + rtt), eno.timeline.arrivals
    # the close (FINp frames and their ACKs) adds no wait either
    assert eno.timeline.response_fin == pytest.approx(
        plain.timeline.response_fin + rtt), eno.timeline.arrivals
    # no packet of the exchange was sent or released by a timer (redelivery, RTO of Init
    # messages or FINp frames): everything happened in answer to a packet
    end = eno.timeline.arrivals[-1][0]
    assert [when for engine in engines for when, _ in engine.fired if when <= end] == []
