"""``make bench``: tcpcryptd's speed, cost and scale against baselines measured in the same run.

    .venv/bin/python -m bench [--quick]      measure, print the table, write
                                             bench/results/latest.json, the PNG plots and
                                             the generated section of docs/benchmarks.md
    .venv/bin/python -m bench --profile      both daemons under cProfile during iperf3,
                                             then sampled by py-spy at full speed; prints
                                             the three biggest costs of each
    .venv/bin/python -m bench --render       redo the table, plots and docs section from
                                             the existing latest.json (no measuring)
    .venv/bin/python -m bench --offload-only measure again only plain TCP with the daemon on
                                             one end vs no daemon (both directions), and
                                             replace that section of latest.json

Needs root (network namespaces, iptables, NFQUEUE), iperf3 and nc. Method:
docs/benchmarks.md. Every namespace and process is removed at the end, on Ctrl-C and on
failure (each bed is a context manager; SIGTERM is turned into the same path as Ctrl-C).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
from importlib import metadata
from types import FrameType
from typing import Any

from bench.bed import REPO_ROOT
from bench.plan import FULL, QUICK
from bench.report import build_results, format_table, judge, merge_offload
from bench.runner import Runner
from testbed import environment_problem

RESULTS_DIR = REPO_ROOT / "bench" / "results"
DOC_PATH = REPO_ROOT / "docs" / "benchmarks.md"
#: A 1-minute load above this (half the cores of the 2-core test machine) is noted.
BUSY_LOAD = 1.0


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        mem_kb = int(meminfo.readline().split()[1])
    versions = {}
    for package in ("cryptography", "NetfilterQueue"):
        try:
            versions[package.lower()] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package.lower()] = None
    iperf = subprocess.run(["iperf3", "--version"], capture_output=True, text=True)
    iptables = subprocess.run(["iptables", "-V"], capture_output=True, text=True)
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version(), **versions,
            "iperf3": iperf.stdout.split("\n", 1)[0].strip(),
            "iptables": iptables.stdout.strip(), "link": "veth pair, MTU 1500, IPv4"}


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _preflight() -> str | None:
    problem = environment_problem()
    if problem:
        return problem
    for tool in ("iperf3", "nc", "ss"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make setup installs it)"
    return None


def write_outputs(results: dict[str, Any]) -> None:
    from bench.docs import update_doc
    from bench.plots import write_plots

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS_DIR / "latest.json.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(RESULTS_DIR / "latest.json")
    plots = write_plots(results, RESULTS_DIR)
    update_doc(DOC_PATH, results, [p.name for p in plots])


def print_targets(results: dict[str, Any]) -> None:
    for target in results["targets"]:
        print(f"target {target['verdict'].upper():>12}: {target['target']} ({target['detail']})")


def run_bench(quick: bool) -> int:
    settings = QUICK if quick else FULL
    load_at_start = os.getloadavg()[0]
    runner = Runner(settings)
    print(f"bench: {'quick' if quick else 'full'} run, {runner.progress.total} steps "
          f"(progress on stderr)", file=sys.stderr, flush=True)
    samples = runner.run()
    machine = machine_info()
    # Other work on the machine competes for the same cores: say how busy it was.
    load_at_end = os.getloadavg()[0]
    machine["load_1min_start_end"] = [round(load_at_start, 2), round(load_at_end, 2)]
    if max(load_at_start, load_at_end) > BUSY_LOAD:
        samples.note(f"other work competed for the CPU (1-min load {load_at_start:.2f} at the "
                     f"start, {load_at_end:.2f} at the end of the run): absolute numbers are "
                     f"low, ratios less reliable")
    results = build_results(
        samples, machine=machine,
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        settings=settings.as_json())
    write_outputs(results)
    print(format_table(results))
    print_targets(results)
    print(f"\nwritten: {RESULTS_DIR / 'latest.json'}, plots in {RESULTS_DIR}, {DOC_PATH}")
    return 0


def run_offload_only(quick: bool) -> int:
    """Re-measure the plain-TCP-with-one-daemon section into the existing latest.json."""
    try:
        previous = json.loads((RESULTS_DIR / "latest.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"bench --offload-only: no usable {RESULTS_DIR / 'latest.json'} to update: {exc}",
              file=sys.stderr)
        return 2
    settings = QUICK if quick else FULL
    load_at_start = os.getloadavg()[0]
    runner = Runner(settings)
    runner.progress.total = runner.offload_step_count()
    runner.offload()
    load_at_end = os.getloadavg()[0]
    runner.samples.note(f"plain TCP, daemon on one end: 1-min load {load_at_start:.2f} at the "
                        f"start, {load_at_end:.2f} at the end of the re-measurement")
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    results = merge_offload(previous, runner.samples, date)
    write_outputs(results)
    print(format_table(results))
    print_targets(results)
    return 0


def render() -> int:
    try:
        results = json.loads((RESULTS_DIR / "latest.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"bench --render: no usable {RESULTS_DIR / 'latest.json'}: {exc}", file=sys.stderr)
        return 2
    judge(results)    # the ratios and targets of this code, on the stored figures
    write_outputs(results)
    print(format_table(results))
    print_targets(results)
    return 0


def run_profile(quick: bool) -> int:
    from bench.profiling import profile

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    seconds = QUICK.seconds if quick else FULL.seconds
    print(f"bench --profile: both daemons under cProfile (CPU clock), iperf3 {seconds:g} s "
          f"AES-128-GCM", file=sys.stderr, flush=True)
    result = profile(seconds, RESULTS_DIR)
    print(f"throughput under the profiler: {result.mbps:.0f} Mbit/s (the profiler slows the "
          f"daemon)")
    for label, top in result.top.items():
        role = "sender side" if label == "A" else "receiver side"
        print(f"daemon {label} ({role}): {result.cpu_s[label]:.2f} CPU s profiled during a "
              f"{result.seconds:g} s transfer; biggest own-time costs:")
        for cost in top:
            print(f"  {cost.share * 100:5.1f}%  {cost.tottime:7.2f} s  {cost.calls:>9} calls  "
                  f"{cost.function}")
    print(f"full listings: {RESULTS_DIR}/profile-A.txt, profile-B.txt")
    from bench.sampling import py_spy, sample
    if py_spy() is None:
        print("py-spy is not installed: no sampling profile (make bench installs it)")
        return 0
    print(f"bench --profile: both daemons sampled by py-spy at full speed, iperf3 "
          f"{seconds:g} s AES-128-GCM", file=sys.stderr, flush=True)
    sampled = sample(seconds, RESULTS_DIR)
    print(f"throughput while sampled: {sampled.mbps:.0f} Mbit/s (py-spy reads the stacks "
          f"from outside: the daemons run at full speed)")
    for label, top in sampled.top.items():
        role = "sender side" if label == "A" else "receiver side"
        print(f"daemon {label} ({role}): {sampled.samples[label]} samples; functions most "
              f"often on top of the stack (system calls included):")
        for cost in top:
            print(f"  {cost.share * 100:5.1f}%  {cost.function}")
    print(f"full listings: {RESULTS_DIR}/pyspy-A.txt, pyspy-B.txt")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="~1 minute: 1 repetition, 3 s runs, 1%% loss only, 1000 idle flows")
    parser.add_argument("--profile", action="store_true",
                        help="profile both daemons (cProfile, then py-spy) under iperf3 instead")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite the plots and docs/benchmarks.md from latest.json")
    parser.add_argument("--offload-only", action="store_true",
                        help="measure again only plain TCP with the daemon on one end vs no "
                             "daemon, into the existing latest.json")
    args = parser.parse_args(argv)
    if args.render:
        return render()
    problem = _preflight()
    if problem:
        print(f"bench: cannot run: {problem}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if args.offload_only:
            return run_offload_only(args.quick)
        return run_profile(args.quick) if args.profile else run_bench(args.quick)
    except KeyboardInterrupt:
        print("bench: interrupted; namespaces and processes removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
