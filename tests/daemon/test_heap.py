"""The heap trimmer: malloc_trim after enough AEAD contexts were released, rate limited."""

from __future__ import annotations

from tcpcryptd.daemon.heap import MIN_INTERVAL, MIN_RELEASES, HeapTrimmer, glibc_malloc_trim
from tcpcryptd.daemon.loop import PacketPath
from tcpcryptd.daemon.nfqueue import Verdicts
from tcpcryptd.engine.engine import Engine


def test_trims_only_after_enough_releases_and_not_too_often():
    calls = []
    trimmer = HeapTrimmer(lambda: calls.append(1))
    trimmer.after_timers(MIN_RELEASES - 1, 0.0)
    assert calls == []
    trimmer.after_timers(MIN_RELEASES, 0.0)
    assert calls == [1]
    trimmer.after_timers(3 * MIN_RELEASES, MIN_INTERVAL / 2)   # too soon
    assert calls == [1]
    trimmer.after_timers(3 * MIN_RELEASES, MIN_INTERVAL)
    assert calls == [1, 1] and trimmer.trims == 2


def test_a_trim_put_off_sets_a_deadline_for_the_loop():
    """The releases of a burst that ended within MIN_INTERVAL of the last trim are trimmed
    when the interval is over, not left until the next burst."""
    calls = []
    trimmer = HeapTrimmer(lambda: calls.append(1))
    trimmer.after_timers(MIN_RELEASES, 10.0)
    assert calls == [1] and trimmer.deadline is None
    trimmer.after_timers(2 * MIN_RELEASES, 10.5)
    assert calls == [1] and trimmer.deadline == 10.0 + MIN_INTERVAL
    trimmer.after_timers(2 * MIN_RELEASES, 10.0 + MIN_INTERVAL)
    assert calls == [1, 1] and trimmer.deadline is None


def test_without_malloc_trim_nothing_happens():
    HeapTrimmer(None).after_timers(10 * MIN_RELEASES, 100.0)


def test_glibc_malloc_trim_is_callable_here():
    trim = glibc_malloc_trim()
    assert trim is not None   # Debian: glibc
    trim()


class _Sender:
    def send(self, packet: bytes) -> None:
        raise AssertionError("nothing to send")


def test_the_packet_path_trims_after_the_engines_releases():
    engine = Engine()
    calls = []
    path = PacketPath(engine, _Sender(), Verdicts(0x2, 0x1, 0x8), clock=lambda: 50.0,
                      heap=HeapTrimmer(lambda: calls.append(1)))
    path.on_timer()
    assert calls == []
    engine.counters["aead_released"] = MIN_RELEASES
    path.on_timer()
    assert calls == [1]


def test_the_packet_paths_deadline_includes_a_put_off_trim():
    engine = Engine()
    now = [50.0]
    calls = []
    path = PacketPath(engine, _Sender(), Verdicts(0x2, 0x1, 0x8), clock=lambda: now[0],
                      heap=HeapTrimmer(lambda: calls.append(1)))
    assert path.next_deadline() is None   # no flows, nothing put off
    engine.counters["aead_released"] = MIN_RELEASES
    path.on_timer()
    engine.counters["aead_released"] = 2 * MIN_RELEASES
    now[0] = 51.0
    path.on_timer()
    assert calls == [1] and path.next_deadline() == 50.0 + MIN_INTERVAL
    now[0] = 50.0 + MIN_INTERVAL
    path.on_timer()
    assert calls == [1, 1] and path.next_deadline() is None
