"""Super-packets through the engine (RFC 8548 §4.1: frames span any number of wire segments).

The simulation with the kernel's offloads around the queue (sim/offload.py): the stacks
hand over GSO super-packets of up to 64 KB, which the engine frames whole and the "kernel"
cuts into the stack's segment size after the verdict; the receiver's GRO merges in-order
segments at random counts, so merged packets and frames meet at arbitrary boundaries. Every
invariant of the plain simulation is checked (streams intact, no plaintext on the wire, one
seal per wire offset), with loss, duplication, reordering and resegmentation of the parts.
"""

from __future__ import annotations

import pytest
from sim.harness import Scenario, run_and_check
from sim.offload import gso_merge, gso_segment, gro_merge
from sim.stack import StackConfig
from sim.wire import Impairments

from tcpcryptd.engine import Direction, Engine, EngineConfig
from tcpcryptd.packet.tcp import ACK, FIN, PSH, TCPPacket, build

GSO = 65000
BULK = 600_000


CLEAN = Impairments()


def _scenario(name: str, seed: int, version: int, *, gso: int = GSO, gro: bool = True,
              impairments: Impairments = CLEAN, **more) -> Scenario:
    return Scenario(name=f"{name}-v{version}-s{seed}", seed=seed, version=version, gso=gso,
                    gro=gro, impairments=impairments, c2s_bytes=BULK, s2c_bytes=BULK // 3,
                    client_stack=StackConfig(initial_cwnd_segments=60),
                    server_stack=StackConfig(initial_cwnd_segments=60), **more)


class _Recording(Engine):
    """The engine, noting the sizes of the packets it is handed and returns, per direction."""

    def __init__(self) -> None:
        super().__init__(EngineConfig())
        self.sizes: dict[Direction, list[int]] = {Direction.OUTBOUND: [], Direction.INBOUND: []}
        self.out_sizes: list[int] = []

    def handle_packet(self, packet_id, data, direction, now):
        self.sizes[direction].append(len(data))
        result = super().handle_packet(packet_id, data, direction, now)
        if direction is Direction.OUTBOUND and result.data is not None:
            self.out_sizes.append(len(result.data))
        return result


def test_a_super_packet_becomes_one_frame_spanning_dozens_of_wire_segments() -> None:
    """64 KB segments reach the engine and leave it as one packet each (one frame, the
    kernel cuts it into dozens of wire segments); GRO hands the receiver merged segments."""
    engines: list[_Recording] = []

    def factory() -> _Recording:
        engines.append(_Recording())
        return engines[-1]

    scenario = _scenario("bulk", 1, 4)
    run_and_check(scenario, factory)   # among them: no packet above the MTU on the wire
    client, server = engines
    assert max(client.sizes[Direction.OUTBOUND]) > 30 * 1448
    assert max(client.out_sizes) > 30 * 1448          # framed whole, not split
    assert max(server.sizes[Direction.INBOUND]) > 2 * 1500   # merged by GRO


@pytest.mark.parametrize("version", (4, 6))
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("gso,gro", [(GSO, True), (GSO, False), (0, True), (20_000, True)],
                         ids=("gso-gro", "gso", "gro", "gso20k-gro"))
def test_super_packets_clean(version: int, seed: int, gso: int, gro: bool) -> None:
    run_and_check(_scenario("clean", seed, version, gso=gso, gro=gro))


@pytest.mark.parametrize("version", (4, 6))
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("loss", (0.01, 0.05))
def test_super_packets_lost_reordered_duplicated_parts(version: int, seed: int,
                                                       loss: float) -> None:
    """Loss, duplication, jitter (reordering) and resegmentation of the wire segments a
    super-packet was cut into; retransmissions replay the stored frames."""
    impairments = Impairments(loss=loss, duplicate=0.03, jitter=0.003, resegment=0.2)
    run_and_check(_scenario(f"impaired{round(loss * 100)}", seed, version,
                             impairments=impairments, urgent=seed % 3 == 0,
                             slow_reader=seed % 3 == 1))


@pytest.mark.parametrize("version", (4, 6))
def test_super_packets_with_small_mtu_and_several_connections(version: int) -> None:
    run_and_check(_scenario("mtu1280-conns3", 7, version, mtu=1280, connections=3,
                             impairments=Impairments(loss=0.01, jitter=0.002)))


def _segment(seq: int, payload: bytes, flags: int = ACK) -> bytes:
    return build(4, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 1000, 443, seq, 7, flags,
                 100, b"", payload)


def test_offload_model_round_trip() -> None:
    """The model itself: GSO merges a run and cuts it back into the same segments; GRO
    merges only what continues the first packet."""
    parts = [_segment(1 + 1000 * k, bytes([k]) * 1000) for k in range(5)]
    parts[-1] = _segment(4001, bytes([4]) * 1000, ACK | PSH)
    ((merged, gso),) = gso_merge(parts, GSO)
    assert gso == 1000 and len(TCPPacket.parse(merged).payload) == 5000
    assert gso_segment(merged, gso) == parts
    fin = _segment(5001, b"x", ACK | FIN)
    assert [g for _, g in gso_merge([*parts, fin], 2500)] == [1000, 1000, 0, 0]

    class Everything:
        @staticmethod
        def randint(lo: int, hi: int) -> int:
            return hi

    packet, taken = gro_merge(parts[0], [parts[1], parts[3]], Everything())
    assert taken == 1 and TCPPacket.parse(packet).payload == bytes(1000) + bytes([1]) * 1000
