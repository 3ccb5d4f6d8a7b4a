"""``python -m bench --profile``'s sampling half: py-spy on both daemons during iperf3.

cProfile (:mod:`bench.profiling`) counts every Python call, which slows the daemon several
times and inflates Python's share; it also cannot see where a C call spends its time. A
sampling profiler reads the daemons' stacks from outside at a fixed rate while they run at
full speed, so the shares are those of the undisturbed daemon, including the time spent
inside the kernel on behalf of a Python line (NFQUEUE verdicts re-inject the packet: the
network stack's work for it runs inside that ``sendmsg``). py-spy (PyPI, a binary in its
wheel; ``make bench`` installs it) records ``--format raw`` (one line per distinct stack with
its sample count), aggregated here by the function on top of the stack.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

#: Samples per second and per daemon.
RATE = 250


@dataclass(frozen=True)
class SampledCost:
    function: str       # "file.py:function"
    share: float        # of the daemon's samples (on CPU or in a system call)


def own_time(raw: str, count: int = 3) -> tuple[int, list[SampledCost]]:
    """Total samples and the ``count`` functions most often on top of the stack.

    ``raw`` is py-spy's raw format: ``frame;frame;...;frame COUNT`` per line, each frame
    ``function (path/file.py:line)``, outermost first.
    """
    own: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, number = line.rstrip().rpartition(" ")
        if not stack or not number.isdigit():
            continue
        samples = int(number)
        total += samples
        leaf = stack.rsplit(";", 1)[-1]
        name, _, where = leaf.partition(" (")
        filename = Path(where.rstrip(")").rsplit(":", 1)[0]).name if where else ""
        own[f"{filename}:{name}" if filename else name] += samples
    return total, [SampledCost(name, samples / total) for name, samples in own.most_common(count)]


@dataclass(frozen=True)
class SampleResult:
    mbps: float
    seconds: float
    samples: dict[str, int]                 # daemon label -> samples taken
    top: dict[str, list[SampledCost]]       # daemon label -> functions most on top


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter or on PATH, or None."""
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy")


def sample(seconds: float, results_dir: Path) -> SampleResult:
    """iperf3 through both daemons at full speed, sampled by py-spy for ``seconds``."""
    from bench.bed import BenchBed
    from bench.runner import AES128
    from bench.workloads import iperf3

    spy = py_spy()
    if spy is None:
        raise RuntimeError("py-spy is not installed (make bench installs it)")
    raw: dict[str, str] = {}
    with BenchBed(AES128) as bed:
        pids = bed.daemon_pids()
        run: list = []
        transfer = threading.Thread(target=lambda: run.append(iperf3(bed, seconds + 2)))
        transfer.start()
        time.sleep(1.0)   # past the handshake and slow start

        def record(label: str, pid: int) -> None:
            out = bed.workdir / f"pyspy-{label}.raw"
            subprocess.run([spy, "record", "--pid", str(pid), "--duration", str(int(seconds)),
                            "--rate", str(RATE), "--format", "raw", "--output", str(out),
                            "--nonblocking"], capture_output=True, timeout=seconds + 60)
            raw[label] = out.read_text() if out.exists() else ""
        threads = [threading.Thread(target=record, args=item) for item in pids.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        transfer.join()
    totals, top = {}, {}
    for label, text in sorted(raw.items()):
        totals[label], listing = own_time(text, count=30)
        (results_dir / f"pyspy-{label}.txt").write_text(
            f"py-spy, {totals[label]} samples at {RATE}/s of daemon {label} during iperf3 "
            f"(AES-128-GCM); share of samples with the function on top of the stack\n"
            + "".join(f"{cost.share * 100:6.1f}%  {cost.function}\n" for cost in listing))
        top[label] = listing[:3]
    return SampleResult(run[0].mbps if run else 0.0, seconds, totals, top)
