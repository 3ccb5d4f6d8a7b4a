"""Engine time per packet of one connection, step by step (a profiling aid for bench.engine).

Runs the connections of ``bench.engine``'s handshake figures between two in-process engines
and prints, for every packet of a connection (index, host, direction, TCP flags, payload
length), the best batch average in microseconds: the same "best batch" rule as
``python -m bench.engine``, so a busy machine shows less.  With ``--profile STEP`` a cProfile
of that packet alone follows (the cyclic garbage collector off, so no collection is charged
to whatever function runs then; that step's own figure then includes the profiler's
overhead).  Before each connection both engines run their idle work untimed (the key pairs
the connection takes are made ahead, ``Engine.prepare``), as the daemon does between packets.

    PYTHONPATH=. python tools/handshake_steps.py fresh
    PYTHONPATH=. python tools/handshake_steps.py resumed --profile 5 --sort tottime
    PYTHONPATH=. python tools/handshake_steps.py resumed --time tcpcryptd.core.keys:PRF.mac \
        tcpcryptd.core.keys:PRF.__init__ tcpcryptd.engine.handshake.promote

``--time`` wraps the named functions (``module.function``, replaced wherever a tcpcryptd
module imported it, or ``module:Class.method``) with a clock and a call counter, and prints
for each the calls and the microseconds per connection (both hosts), best batch: where a
step's time goes without the profiler's per-call overhead on everything else.  A function
that calls another timed one includes its time (and the wrapper's, a few tenths of a
microsecond per call).

Kinds: ``fresh`` (resumption off, the Init exchange), ``resumed`` (every timed connection
resumed), ``plain-a`` (host A's SYN with ENO answered without ENO), ``plain-b`` (host B
receiving a SYN without ENO).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import gc
import importlib
import pstats
import sys
import time
from collections.abc import Callable

from bench.engine import _Connections
from tcpcryptd.engine import Direction, Engine, EngineConfig
from tcpcryptd.packet.tcp import ACK, FIN, PSH, RST, SYN, TCPPacket

_FLAGS = (("S", SYN), ("A", ACK), ("F", FIN), ("R", RST), ("P", PSH))


class _Steps(_Connections):
    """:class:`bench.engine._Connections` that charges each packet's time to its step."""

    def __init__(self, kind: str, profile: int | None) -> None:
        super().__init__(EngineConfig(resumption_enabled=kind == "resumed"))
        self.kind = kind
        self.step = 0
        self.spent_by_step: dict[tuple, float] = {}
        self.profile_step = profile
        self.profiler = cProfile.Profile()
        self.profiling = False

    def _handle(self, engine: Engine, data: bytes, direction: Direction):
        on = self.profiling and self.step == self.profile_step
        if on:
            self.profiler.enable()
        began = time.perf_counter()
        result = engine.handle_packet(0, data, direction, self.now)
        spent = time.perf_counter() - began
        if on:
            self.profiler.disable()
        self.spent[engine] += spent
        pkt = TCPPacket.parse(data)
        key = (self.step, "A" if engine is self.a else "B",
               "out" if direction is Direction.OUTBOUND else "in",
               "".join(name for name, bit in _FLAGS if pkt.flags & bit), len(pkt.payload))
        self.spent_by_step[key] = self.spent_by_step.get(key, 0.0) + spent
        self.step += 1
        return result

    def run(self, port: int) -> None:
        self.step = 0
        if self.kind == "plain-a":
            self.plain_connection(port, self.a)
        elif self.kind == "plain-b":
            self.plain_connection(port, self.b)
        else:
            self.connection(port)


class _FunctionClock:
    """Time and call count of named functions, wrapped in place (``--time``) until
    :meth:`restore`."""

    def __init__(self, names: list[str]) -> None:
        self.spent = dict.fromkeys(names, 0.0)
        self.calls = dict.fromkeys(names, 0)
        self._replaced: list[tuple[object, str, object]] = []   # (owner, attribute, original)
        for name in names:
            self._wrap(name)

    def _clocked(self, name: str, function: Callable) -> Callable:
        spent, calls, clock = self.spent, self.calls, time.perf_counter

        @functools.wraps(function)
        def clocked(*args, **kwargs):
            began = clock()
            try:
                return function(*args, **kwargs)
            finally:
                spent[name] += clock() - began
                calls[name] += 1
        return clocked

    def _replace(self, owner: object, attribute: str, new: object) -> None:
        self._replaced.append((owner, attribute, vars(owner)[attribute]))
        setattr(owner, attribute, new)

    def _wrap(self, name: str) -> None:
        if ":" in name:
            module, _, qualified = name.partition(":")
            owner_name, _, attribute = qualified.rpartition(".")
            owner = getattr(importlib.import_module(module), owner_name)
            function = vars(owner)[attribute]
            if isinstance(function, classmethod):
                self._replace(owner, attribute,
                              classmethod(self._clocked(name, function.__func__)))
            else:
                self._replace(owner, attribute, self._clocked(name, function))
            return
        module, _, attribute = name.rpartition(".")
        function = getattr(importlib.import_module(module), attribute)
        clocked = self._clocked(name, function)
        for loaded in list(sys.modules.values()):
            if (getattr(loaded, "__name__", "").startswith("tcpcryptd")
                    and getattr(loaded, attribute, None) is function):
                self._replace(loaded, attribute, clocked)

    def reset(self) -> None:
        for name in self.spent:
            self.spent[name], self.calls[name] = 0.0, 0

    def restore(self) -> None:
        """Put every wrapped function back."""
        for owner, attribute, original in reversed(self._replaced):
            setattr(owner, attribute, original)
        self._replaced.clear()


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Print the figures; returns the calls per connection of each ``--time`` function."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("fresh", "resumed", "plain-a", "plain-b"))
    parser.add_argument("-n", "--connections", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=50, help="connections per timed batch")
    parser.add_argument("--profile", type=int, metavar="STEP", help="cProfile this step")
    parser.add_argument("--sort", default="cumtime", help="pstats sort key")
    parser.add_argument("--time", nargs="+", metavar="FUNCTION", default=[],
                        help="time these functions (module.function or module:Class.method)")
    args = parser.parse_args(argv)
    bed = _Steps(args.kind, args.profile)
    for port in range(300):   # warm-up; the resumed kind leaves the secrets it resumes
        bed.run(20000 + port)
    functions = _FunctionClock(args.time)
    if args.profile is not None:
        gc.disable()
    bed.profiling = True
    best: dict[tuple, float] = {}
    best_function: dict[str, float] = {}
    try:
        for first in range(0, args.connections, args.batch):
            bed.spent_by_step.clear()
            functions.reset()
            for port in range(first, first + args.batch):
                bed.run(30000 + port)
            for key, seconds in bed.spent_by_step.items():
                best[key] = min(best.get(key, seconds), seconds / args.batch)
            for name, seconds in functions.spent.items():
                best_function[name] = min(best_function.get(name, seconds),
                                          seconds / args.batch)
    finally:
        functions.restore()
        gc.enable()
    for key, seconds in sorted(best.items()):
        print(f"{str(key):40s} {seconds * 1e6:7.1f} us")
    print(f"{'total (sum of the steps)':40s} {sum(best.values()) * 1e6:7.1f} us")
    calls = {name: count / args.batch for name, count in functions.calls.items()}
    for name, seconds in best_function.items():
        print(f"{calls[name]:5.1f} calls {seconds * 1e6:7.1f} us per connection: {name}")
    if args.profile is not None:
        pstats.Stats(bed.profiler).sort_stats(args.sort).print_stats(40)
    return calls

if __name__ == "__main__":
    main()
