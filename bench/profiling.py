"""``python -m bench --profile``: both daemons under cProfile during an AES-128-GCM iperf3.

cProfile (standard library, no extra package) runs with a CPU-time clock
(``time.process_time``), so the daemon's idle waits in select() cost nothing and the shares
are shares of CPU. It is deterministic and slows the daemon down (fewer packets per second
than without it), but the split between functions is what we want. The full stats go to
bench/results/profile-A.txt and profile-B.txt; the three biggest own-time costs of each
daemon are returned.

As a program (what :class:`bench.bed.ProfiledDaemon` starts in a namespace):
``python -m bench.profiling --out FILE TCPCRYPTD-ARGS...`` runs the ``tcpcryptd`` CLI under
the profiler and writes the stats to FILE when it exits (SIGTERM included).
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Cost:
    function: str
    calls: int
    tottime: float
    cumtime: float
    share: float        # of the daemon's total profiled own time


def top_costs(stats: pstats.Stats, count: int = 3) -> list[Cost]:
    """The ``count`` functions with the most own time."""
    total = stats.total_tt or 1.0
    rows = []
    for (filename, line, name), (_, calls, tottime, cumtime, _) in stats.stats.items():
        where = f"{Path(filename).name}:{line}({name})" if line else name
        rows.append(Cost(where, calls, tottime, cumtime, tottime / total))
    rows.sort(key=lambda cost: cost.tottime, reverse=True)
    return rows[:count]


@dataclass(frozen=True)
class ProfileResult:
    mbps: float                     # iperf3 throughput under the profiler
    seconds: float                  # length of the iperf3 run
    cpu_s: dict[str, float]         # daemon label -> profiled CPU seconds (whole life)
    top: dict[str, list[Cost]]      # daemon label -> biggest own-time costs


def profile(seconds: float, results_dir: Path) -> ProfileResult:
    """Run the profiled iperf3 and read both daemons' stats."""
    from bench.bed import BenchBed
    from bench.runner import AES128
    from bench.workloads import iperf3

    with tempfile.TemporaryDirectory(prefix="tcpcryptd-profile-") as tmp:
        profile_dir = Path(tmp)
        with BenchBed(AES128, profile_dir=profile_dir) as bed:
            run = iperf3(bed, seconds)
            bed.stop_daemons()
        top, cpu_s = {}, {}
        for label in ("A", "B"):
            path = str(profile_dir / f"{label}.prof")
            text = io.StringIO()
            pstats.Stats(path, stream=text).sort_stats("tottime").print_stats(40)
            (results_dir / f"profile-{label}.txt").write_text(text.getvalue())
            stats = pstats.Stats(path)
            top[label] = top_costs(stats)
            cpu_s[label] = stats.total_tt
    return ProfileResult(run.mbps, seconds, cpu_s, top)


def run_profiled(out: str, args: list[str]) -> int:
    """The tcpcryptd CLI with ``args`` under cProfile (CPU clock); stats to ``out``."""
    from tcpcryptd.cli import main

    profiler = cProfile.Profile(time.process_time)
    code = 0
    try:
        profiler.runcall(main, args=args, prog_name="tcpcryptd")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        profiler.dump_stats(out)
    return code


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "--out":
        sys.exit("usage: python -m bench.profiling --out FILE TCPCRYPTD-ARGS...")
    sys.exit(run_profiled(sys.argv[2], sys.argv[3:]))
