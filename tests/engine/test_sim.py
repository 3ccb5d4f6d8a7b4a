"""Deterministic two-engine simulation: seeded scenarios checked against the properties of
docs/daemon.md "What the tests check".

Every scenario is named by what it does and its seed (``rand-v6-loss5-s12``,
``drop-init2-v4-s1``...); rerun one alone with ``pytest tests/engine/test_sim.py -k NAME``.
``test_engine_scenario_many_seeds`` runs many more random seeds with ``--slow`` (``make test-slow``).

The stack model and the wire are first checked on their own (no engine): a simulation that
loses data without an engine could prove nothing about the engine.  Then the real
``tcpcryptd.engine.Engine`` runs at both ends, at one end only (fallback to plain TCP), behind a
middlebox that strips ENO from SYN-ACKs, under tampering, and with packets lost between an
engine and its own stack (``local_loss``: what the engine delivered can still be lost).
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from sim.harness import PLAINTEXT_MARKER, Scenario, SimulationStalled, check, run, run_and_check
from sim.invariants import StreamRecord, check_eno_wire, check_stream_delivered
from sim.stack import StackConfig
from sim.wire import C2S, S2C, ByteFlip, Impairments, TargetedDrop

from tcpcryptd.core.constants import INIT1_MAGIC
from tcpcryptd.engine import Direction, Engine, EngineConfig, Result, Verdict
from tcpcryptd.packet.tcp import TCPPacket

SIZES = (0, 1, 100, 1000, 1448, 5000, 20_000, 100_000)
LOSSES = (0.0, 0.01, 0.05, 0.2)
DEFAULT_SEEDS = 25
SLOW_SEEDS = 500


def _pct(loss: float) -> str:
    return f"{round(loss * 100)}"


def random_scenario(seed: int, loss: float, version: int, *, engines: bool = True) -> Scenario:
    """A scenario whose sizes, impairments and stack options all follow from its name."""
    rng = random.Random(f"{seed}/{loss}/{version}/{engines}")
    mtu = rng.choice((1500, 1500, 1280) if version == 6 else (1500, 1500, 1280, 576))

    def stack() -> StackConfig:
        return StackConfig(
            sack=rng.random() < 0.8,
            timestamps=rng.random() < 0.8,
            window_scale=rng.choice((7, 7, 2, None)),
            delayed_ack=rng.random() < 0.7,
            keepalive_byte=rng.random() < 0.5,
        )

    return Scenario(
        name=f"{'rand' if engines else 'plainstack'}-v{version}-loss{_pct(loss)}-s{seed}",
        seed=seed,
        version=version,
        client_engine=engines,
        server_engine=engines,
        impairments=Impairments(
            loss=loss,
            duplicate=rng.choice((0.0, 0.02, 0.05, 0.1)),
            jitter=rng.choice((0.0, 0.002, 0.02, 0.05)),
            resegment=rng.choice((0.0, 0.1, 0.3, 0.5)),
            local_loss=rng.choice((0.0, 0.0, 0.0, 0.01, 0.05)) if engines else 0.0,
        ),
        c2s_bytes=rng.choice(SIZES[:-1] if loss >= 0.2 else SIZES),
        s2c_bytes=rng.choice(SIZES[:-1] if loss >= 0.2 else SIZES),
        server_first=rng.random() < 0.15,
        simultaneous_close=rng.random() < 0.15,
        slow_reader=rng.random() < 0.15,
        keepalive=rng.random() < 0.15,
        idle_before_close=rng.choice((0.0, 0.0, 0.0, 1.0)),
        mtu=mtu,
        client_stack=stack(),
        server_stack=stack(),
        client_iss=rng.choice((None, None, (1 << 32) - 1 - rng.randrange(3000))),
        connections=rng.choice((1, 1, 1, 1, 2, 3)),
        urgent=rng.random() < 0.15,
    )


# ---------------------------------------------------------------------- the model alone
@pytest.mark.parametrize(
    "scenario",
    [random_scenario(seed, loss, v, engines=False) for seed in range(4) for loss in LOSSES for v in (4, 6)],
    ids=lambda s: s.name,
)
def test_stack_model_without_engine(scenario: Scenario) -> None:
    """stack <-> impaired wire <-> stack keeps both streams intact: the model is sound."""
    run_and_check(scenario)


def test_stack_model_resegments_retransmissions() -> None:
    """Retransmissions after loss do not all repeat the original boundaries."""
    sc = Scenario("reseg-probe", 3, client_engine=False, server_engine=False,
                  impairments=Impairments(loss=0.1), c2s_bytes=200_000, s2c_bytes=0)
    result = run(sc, trace=True)
    assert not check(result)
    sent: dict[int, set[int]] = {}
    for line in result.trace or []:
        if " client stack->" in line and " len=0 " not in line:
            fields = dict(f.split("=") for f in line.split() if "=" in f and f.split("=")[0] in ("seq", "len"))
            sent.setdefault(int(fields["seq"]), set()).add(int(fields["len"]))
    assert result.client.stack.stats.retransmits_timeout + result.client.stack.stats.retransmits_fast > 0
    assert any(len(lengths) > 1 for lengths in sent.values()), "no retransmission changed a segment's length"


def test_stack_model_zero_window() -> None:
    """A slow reader drives the window to zero; the sender sends zero-window probes."""
    sc = Scenario("zwin-probe", 5, client_engine=False, server_engine=False, c2s_bytes=60_000,
                  s2c_bytes=10, slow_reader=True)
    result = run(sc)
    assert not check(result)
    assert result.client.stack.stats.window_probes_sent > 0


def test_stack_model_keepalive() -> None:
    """An idle flow sends keep-alives (seq = SND.NXT - 1, with one old byte here)."""
    sc = Scenario("keepalive-probe", 5, client_engine=False, server_engine=False, c2s_bytes=5000,
                  s2c_bytes=10, keepalive=True, idle_before_close=2.0,
                  client_stack=StackConfig(keepalive_byte=True), server_stack=StackConfig(keepalive_byte=True))
    result = run(sc)
    assert not check(result)
    assert result.client.stack.stats.keepalives_sent > 0
    assert result.server.stack.stats.keepalives_sent > 0


# ---------------------------------------------------------------------- the checks can fail
class _PassThrough:
    """An 'engine' that accepts everything unchanged: it must fail every ENO check."""

    def handle_packet(self, packet_id: int, data: bytes, direction: Direction, now: float) -> Result:
        return Result(Verdict.ACCEPT)

    def handle_timer(self, now: float) -> Result:
        return Result(None)

    def next_deadline(self) -> None:
        return None


def test_checks_catch_corruption_without_engine() -> None:
    """A flipped byte on a plain flow with no engine is delivered (TCP cannot tell); with the
    checks' eyes open the stream comparison reports it: the invariant can fail."""
    sc = Scenario("plain-flip", 2, client_engine=False, server_engine=False, c2s_bytes=5000,
                  s2c_bytes=0, flip=ByteFlip(C2S, 1, 7))
    result = run(sc)
    assert any("not a prefix" in v or "did not abort" in v for v in check(result))


class _NonceReusingEngine(Engine):
    """The real engine, except that a retransmitted frame comes out with one byte changed:
    what re-encrypting different plaintext at a used offset would look like on the wire."""

    def __init__(self) -> None:
        super().__init__(EngineConfig())
        self._seen: set[int] = set()

    def handle_packet(self, packet_id: int, data: bytes, direction: Direction, now: float) -> Result:
        result = super().handle_packet(packet_id, data, direction, now)
        if direction == Direction.OUTBOUND and result.verdict == Verdict.ACCEPT and result.data:
            pkt = TCPPacket.parse(result.data)
            if len(pkt.payload) > 40 and pkt.seq in self._seen:
                pkt.payload = bytes(pkt.payload[:-1]) + bytes([pkt.payload[-1] ^ 1])
                result.data = pkt.to_bytes()
            if len(pkt.payload):
                self._seen.add(pkt.seq)
        return result


def test_checks_catch_nonce_reuse() -> None:
    sc = Scenario("nonce-reuse", 3, c2s_bytes=100_000, s2c_bytes=0, impairments=Impairments(loss=0.05))
    try:
        violations = check(run(sc, engine_factory=_NonceReusingEngine))
    except SimulationStalled as stalled:  # the peer may also abort on the bad frame: fine
        violations = [str(stalled)]
    assert any("wire byte" in v for v in violations)


def test_checks_catch_a_plaintext_engine() -> None:
    sc = Scenario("passthrough", 1, c2s_bytes=3000, s2c_bytes=3000)
    violations = check(run(sc, engine_factory=_PassThrough))
    assert any("client engine did not put ENO" in v for v in violations)
    assert any("plaintext" in v for v in violations)
    assert any("Init magic" in v for v in violations)


def test_wire_log_reports_two_bytes_at_one_offset() -> None:
    rec = StreamRecord(isn=1000)
    rec.add(1001, b"abcd")
    rec.add(1003, b"cX")
    assert rec.conflicts and "offset 3" in rec.conflicts[0]


def test_plaintext_window_check() -> None:
    written = bytes(range(64)) + PLAINTEXT_MARKER
    rec = StreamRecord(isn=0)
    rec.add(1, INIT1_MAGIC.to_bytes(4, "big") + (8).to_bytes(4, "big") + written[10:40])
    assert any("plaintext" in v for v in check_eno_wire("c2s", rec, written, INIT1_MAGIC, complete=False))
    assert check_stream_delivered("c2s", written, written[:-1], True)


# ---------------------------------------------------------------------- the engine
def _matrix() -> list[Scenario]:
    out = [random_scenario(seed, loss, v) for seed in range(DEFAULT_SEEDS) for loss in LOSSES for v in (4, 6)]
    for v in (4, 6):
        for seed in (1, 2):
            base = dict(seed=seed, version=v, c2s_bytes=8000, s2c_bytes=6000,
                        impairments=Impairments(jitter=0.002, duplicate=0.02))
            for direction, kind in ((C2S, "syn"), (S2C, "synack"), (C2S, "third_ack"), (C2S, "init1"),
                                    (S2C, "init2"), (C2S, "data"), (S2C, "data"), (C2S, "fin"), (S2C, "fin")):
                count = 2 if seed == 2 else 1
                out.append(Scenario(name=f"drop-{direction}-{kind}x{count}-v{v}-s{seed}",
                                    targeted=(TargetedDrop(direction, kind, 1, count),), **base))
    for v in (4, 6):
        for seed, loss in ((1, 0.0), (2, 0.05), (3, 0.2)):
            imp = Impairments(loss=loss, duplicate=0.02, jitter=0.005, resegment=0.1)
            sizes = dict(c2s_bytes=12_000, s2c_bytes=30_000)
            tag = f"v{v}-loss{_pct(loss)}-s{seed}"
            out += [
                Scenario(f"plainpeer-server-{tag}", seed, v, server_engine=False, impairments=imp, **sizes),
                Scenario(f"plainpeer-client-{tag}", seed, v, client_engine=False, impairments=imp, **sizes),
                Scenario(f"strip-synack-eno-{tag}", seed, v, strip_synack_eno=True, impairments=imp, **sizes),
                Scenario(f"server-first-{tag}", seed, v, server_first=True, impairments=imp,
                         c2s_bytes=300, s2c_bytes=20_000),
                Scenario(f"simultaneous-close-{tag}", seed, v, simultaneous_close=True, impairments=imp, **sizes),
                Scenario(f"zero-window-{tag}", seed, v, slow_reader=True, impairments=imp,
                         c2s_bytes=40_000, s2c_bytes=25_000),
                Scenario(f"keepalive-{tag}", seed, v, keepalive=True, idle_before_close=1.5, impairments=imp,
                         client_stack=StackConfig(keepalive_byte=seed % 2 == 1), **sizes),
            ]
    for direction in (C2S, S2C):
        for nth, seed in ((1, 1), (2, 2), (4, 3), (9, 4), (17, 5), (25, 6)):
            out.append(Scenario(f"tamper-{direction}-pkt{nth}-s{seed}", seed, 4 + 2 * (seed % 2),
                                c2s_bytes=40_000, s2c_bytes=40_000, flip=ByteFlip(direction, nth, seed)))
        for seed in (1, 2, 3, 4):
            out.append(Scenario(f"tamper-{direction}-init-s{seed}", seed, 4 + 2 * (seed % 2),
                                c2s_bytes=3000, s2c_bytes=3000, flip=ByteFlip(direction, 1, seed, in_init=True)))
    for seed in range(36):
        for loss in (0.0, 0.05):
            base = random_scenario(seed, loss, 4)
            out.append(replace(base, name=f"localloss20-v4-loss{_pct(loss)}-s{seed}",
                               impairments=replace(base.impairments, local_loss=0.2)))
    for v in (4, 6):
        for seed, loss in ((1, 0.0), (2, 0.05), (3, 0.2)):
            out.append(Scenario(f"urgent-v{v}-loss{_pct(loss)}-s{seed}", seed, v, urgent=True, c2s_bytes=30_000,
                                s2c_bytes=3000, impairments=Impairments(loss=loss, jitter=0.005, resegment=0.2)))
    for v in (4, 6):
        for seed, loss in ((1, 0.0), (2, 0.01), (3, 0.05), (4, 0.2)):
            out.append(Scenario(f"multi8-v{v}-loss{_pct(loss)}-s{seed}", seed, v, connections=8,
                                c2s_bytes=3000 * seed, s2c_bytes=20_000 // seed,
                                impairments=Impairments(loss=loss, duplicate=0.02, jitter=0.01, resegment=0.2)))
    out.append(Scenario("bulk-1MB-v4-loss0-s1", 1, 4, c2s_bytes=1 << 20, s2c_bytes=1000))
    out.append(Scenario("bulk-1MB-v6-loss1-s2", 2, 6, c2s_bytes=2000, s2c_bytes=1 << 20,
                        impairments=Impairments(loss=0.01, jitter=0.002, resegment=0.05)))
    out += reuse_scenarios()
    out += resumption_scenarios()
    out += simultaneous_open_scenarios()
    out.append(Scenario("isn-wrap-v4-s1", 1, 4, c2s_bytes=50_000, s2c_bytes=50_000, client_iss=(1 << 32) - 5000,
                        impairments=Impairments(loss=0.02, jitter=0.005)))
    return out


def reuse_scenarios() -> list[Scenario]:
    """Issue 15: connections one after the other from one client port (RFC 9293 §3.10.7.4).

    ``tw-server``: the server closes first and is in TIME-WAIT when the next SYN comes (a
    higher ISN is taken at once; a lower one, without timestamps, is answered with a
    TIME-WAIT ACK the engine translates, which the client resets, and the SYN's
    retransmission gets in); ``tw-client``: the client closes first (its engine replaces the
    flow on its own SYN, the server's flow was closed); ``reset``: each connection ends with
    the client's RST; ``tombstone``: the next SYN comes 70 s later, both flows buried.
    """
    out = []
    notime = StackConfig(timestamps=False)
    for v in (4, 6):
        for seed, loss in ((1, 0.0), (2, 0.02)):
            imp = Impairments(loss=loss, duplicate=0.05, jitter=0.002)
            tag = f"v{v}-loss{_pct(loss)}-s{seed}"
            out += [
                Scenario(f"reuse-tw-server-higher-{tag}", seed, v, impairments=imp, reuse=3,
                         c2s_bytes=20_000, s2c_bytes=2000),
                Scenario(f"reuse-tw-server-lower-{tag}", seed, v, impairments=imp, reuse=3,
                         reuse_isn="lower", c2s_bytes=20_000, s2c_bytes=2000,
                         client_stack=notime, server_stack=notime),
                Scenario(f"reuse-tw-client-{tag}", seed, v, impairments=imp, reuse=3,
                         reuse_isn="lower", c2s_bytes=2000, s2c_bytes=20_000),
                Scenario(f"reuse-reset-{tag}", seed, v, impairments=imp, reuse=3,
                         reuse_abort=True, c2s_bytes=5000, s2c_bytes=5000),
                Scenario(f"reuse-tombstone-{tag}", seed, v, impairments=imp, reuse=2,
                         reuse_gap=70.0, reuse_isn="lower", c2s_bytes=5000, s2c_bytes=5000),
            ]
    return out


def resumption_scenarios() -> list[Scenario]:
    """Session resumption (RFC 8548 §3.5): connections one after the other between the two
    hosts; the first is fresh and leaves the next secret in both caches, each later one
    resumes the previous one's (no Init messages, frames from offset 0).  The resumption SYN
    or SYN-ACK lost (the retransmission carries the identical offer or answer); a cache miss
    at the server (its secrets expire before the next connection: the offer is answered
    fresh) or at the client (nothing to offer).  Both ends racing: tests/engine/
    test_resumption.py."""
    out = []
    short = EngineConfig(resumption_lifetime=0.3)
    for v in (4, 6):
        for seed, loss in ((1, 0.0), (2, 0.02)):
            imp = Impairments(loss=loss, duplicate=0.05, jitter=0.002)
            tag = f"v{v}-loss{_pct(loss)}-s{seed}"
            base = dict(seed=seed, version=v, impairments=imp, c2s_bytes=6000, s2c_bytes=9000,
                        reuse_gap=1.0)
            out += [
                Scenario(f"resume-{tag}", reuse=2, expect_resumed=(False, True, True), **base),
                Scenario(f"resume-miss-server-{tag}", reuse=2, server_config=short,
                         expect_resumed=(False, False, False), **base),
                Scenario(f"resume-miss-client-{tag}", reuse=2, client_config=short,
                         expect_resumed=(False, False, False), **base),
            ]
        for direction, kind in ((C2S, "syn"), (S2C, "synack")):
            for count in (1, 2):
                out.append(Scenario(
                    f"resume-drop-{direction}-{kind}x{count}-v{v}", seed=count, version=v,
                    reuse=1, c2s_bytes=6000, s2c_bytes=9000, expect_resumed=(False, True),
                    targeted=(TargetedDrop(direction, kind, 2, count),),
                    impairments=Impairments(jitter=0.002)))
    return out


def simultaneous_open_scenarios() -> list[Scenario]:
    """Simultaneous open (RFC 8547 §4.5, §4.6): both ends connect at once.  The server's
    engine sets b = 1 on its port (``passive_role_ports``), so it is host B and the
    connection is encrypted (its Init1 sent by the client's engine itself, an Init1 ahead of
    the SYN-ACK dropped and resent); without that, both b = 0: plain, as RFC 8547 requires."""
    out = []
    b_role = EngineConfig(passive_role_ports=frozenset({443}))
    for v in (4, 6):
        for seed, loss in ((1, 0.0), (2, 0.02), (3, 0.05)):
            imp = Impairments(loss=loss, duplicate=0.02, jitter=0.002)
            tag = f"v{v}-loss{_pct(loss)}-s{seed}"
            out.append(Scenario(f"simultaneous-open-{tag}", seed, v, impairments=imp,
                                simultaneous_open=True, server_config=b_role,
                                c2s_bytes=8000, s2c_bytes=6000))
    out.append(Scenario("simultaneous-open-plain-v4-s1", 1, 4, simultaneous_open=True,
                        c2s_bytes=8000, s2c_bytes=6000))
    return out


SCENARIOS = _matrix()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_engine_scenario(scenario: Scenario) -> None:
    run_and_check(scenario)


SLOW_SCENARIOS = [
    random_scenario(seed, loss, v)
    for seed in range(DEFAULT_SEEDS, DEFAULT_SEEDS + SLOW_SEEDS)
    for loss in LOSSES
    for v in (4, 6)
]


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SLOW_SCENARIOS, ids=lambda s: s.name)
def test_engine_scenario_many_seeds(scenario: Scenario) -> None:
    """SLOW_SEEDS more random seeds per (version, loss), each its own test id."""
    run_and_check(scenario)


@pytest.mark.parametrize("scenario", resumption_scenarios(), ids=lambda s: s.name)
def test_resumption_scenarios_do_what_they_name(scenario: Scenario) -> None:
    """The drops hit the resumption SYN/SYN-ACK, a miss is a miss where the scenario puts it
    (the server answers the client's offer fresh, or the client has nothing to offer), and
    the engines count what the wire shows."""
    result = run(scenario)
    assert not check(result)
    client, server = (side.engine.counters for side in result.sides)
    resumed = sum(scenario.expect_resumed)
    assert client["resumed"] == server["resumed"] == resumed
    assert client["encrypted"] == server["encrypted"] == len(scenario.expect_resumed)
    if scenario.targeted:
        assert len(result.wire.stats.targeted_drops) == scenario.targeted[0].count
    if scenario.server_config is not None:
        assert server["resume_miss"] == client["resume_declined"] == scenario.reuse
    if scenario.client_config is not None:
        assert server["resume_miss"] == client["resume_declined"] == 0


@pytest.mark.parametrize("scenario", simultaneous_open_scenarios(), ids=lambda s: s.name)
def test_simultaneous_open_scenarios_are_what_they_name(scenario: Scenario) -> None:
    """Both stacks went through SYN-RECEIVED (each sent a SYN and a SYN-ACK); the engines
    count one encrypted connection each, or, without b = 1, one simultaneous-open fallback."""
    result = run(scenario)
    assert not check(result)
    for record in result.conns[0].log.records.values():
        assert record.syn_acked
    for side in result.sides:
        counters = side.engine.counters
        if scenario.expect_encrypted:
            assert counters["encrypted"] == 1 and not counters["fallback"]
        else:
            assert counters["fallback_simultaneous-open"] == 1 and not counters["encrypted"]
