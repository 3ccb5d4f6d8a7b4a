"""Kernel CPU the daemon's firewall rules add to each packet of an offloaded plain connection.

    .venv/bin/python -m bench.firewall_cost [--rounds 3] [--seconds 4] [--send] [--floor]

Needs root, iperf3 and perf. One direct A <-> B bed; A gets exactly the rules ``tcpcryptd
run`` installs with the default configuration (:mod:`tcpcryptd.daemon.firewall`, which also
installs the nftables table) but no daemon: B's SYNs carry no ENO, so the table leaves every
connection B opens plain by itself, and its packets take the offloaded path, the same as a
plain connection the daemon handed to the kernel. Rounds alternate "no rules" and "rules"
(the order swaps every round); each runs iperf3 from B to A (``--send``: from A to B, B
still connecting, ``iperf3 -R``) for ``seconds + 2`` s while ``perf record -a -g`` samples
the middle ``seconds``. Counted, per GB transferred, among the samples of the iperf3
processes (over veth, the receive path runs in the sender's softirq; samples of idle or
softirq context would also catch other namespaces' traffic): every busy sample, those whose
call chain passes through ``nf_hook_slow``, the kernel's loop over the netfilter hooks
(conntrack, the iptables chains, the nftables chains), split by hook caller: ``ip_rcv``
(prerouting: conntrack), ``ip_local_deliver`` (input: the inbound chains) and
``__ip_local_out`` (output), and among them ``table``, those in the
nftables table's chains (the bed's only ``inet`` table). Throughput on a shared machine is
too noisy for a few percent; these counts are CPU time, which is much less so.

``--floor`` adds a third configuration, "empty chains": one empty base chain (policy accept,
no rule) at every IPv4 hook and priority where the rules register one (the nftables table's
chains and iptables-nft's), so the hook samples split into what the number of base chains
costs and what evaluating the rules in them costs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from statistics import median

from bench.bed import PLAIN, BenchBed
from bench.workloads import iperf3
from testbed import BedError

#: the processes whose samples are counted: the bed's senders and receivers
COMMANDS = ("iperf3",)
HOOK = "nf_hook_slow"
#: the hook function of an ``inet`` nftables chain: the daemon's table is the bed's only one
TABLE_HOOK = "nft_do_chain_inet"
#: hook caller -> direction
CALLERS = {"ip_rcv": "prerouting", "ip_local_deliver": "input", "__ip_local_out": "output"}
_RULES = ("from tcpcryptd.daemon.config import Config\n"
          "from tcpcryptd.daemon.firewall import Firewall, detect_backend\n"
          "from tcpcryptd.daemon.runner import rule_spec\n"
          "config = Config()\n"
          "firewall = Firewall(detect_backend('auto'))\n")


def count_stacks(script: str) -> Counter:
    """``perf script -F comm,ip,sym`` text -> sample counts: ``busy`` (not the idle loop),
    ``hooks`` (through :data:`HOOK`), ``table`` (those in the nftables table's chains,
    :data:`TABLE_HOOK`) and one per :data:`CALLERS` direction."""
    counts: Counter = Counter()
    for block in script.split("\n\n"):
        lines = block.strip().splitlines()
        if not lines or not lines[0].split() or not lines[0].split()[0].startswith(COMMANDS):
            continue
        frames = [line.split()[-1] for line in lines[1:] if line.strip()]
        if not frames or "idle" in frames[0] or "halt" in frames[0]:
            continue
        counts["busy"] += 1
        if HOOK in frames:
            counts["hooks"] += 1
            at = frames.index(HOOK)
            if at and frames[at - 1] == TABLE_HOOK:
                counts["table"] += 1
            direction = next((CALLERS[frame] for frame in frames[at + 1:at + 3]
                              if frame in CALLERS), None)
            if direction:
                counts[direction] += 1
    return counts


#: the table of ``--floor``'s empty base chains
FLOOR_TABLE = "tcpcryptd_floor"


def _rules(bed: BenchBed, install: bool) -> None:
    action = ("firewall.install(rule_spec(config))" if install
              else "firewall.remove(config.marks.encrypted)")
    bed.a.run(sys.executable, "-c", _RULES + action, timeout=60)


def base_chains(listing: str) -> set[tuple[str, str, str, int]]:
    """``nft -j list chains`` text -> the base chains as (table family, table, hook,
    priority)."""
    return {(item["chain"]["family"], item["chain"]["table"], item["chain"]["hook"],
             item["chain"]["prio"])
            for item in json.loads(listing)["nftables"]
            if "chain" in item and "hook" in item["chain"]}


def floor_table(chains: set[tuple[str, str, str, int]]) -> str:
    """``nft -f`` input: one empty base chain per IPv4 hook and priority of ``chains``."""
    hooks = sorted({(hook, prio) for family, _, hook, prio in chains if family in ("ip", "inet")})
    lines = [f"table ip {FLOOR_TABLE} {{"]
    lines += [f"chain c{n} {{ type filter hook {hook} priority {prio}; policy accept; }}"
              for n, (hook, prio) in enumerate(hooks)]
    return "\n".join(lines + ["}"]) + "\n"


def _chains(bed: BenchBed) -> set[tuple[str, str, str, int]]:
    return base_chains(bed.a.run("nft", "-j", "list", "chains").stdout.decode())


def _configure(bed: BenchBed, name: str, floor: str) -> None:
    """Put A in configuration ``name``: "no rules", "rules" or "empty chains"."""
    bed.a.run("nft", "delete", "table", "ip", FLOOR_TABLE, check=False)
    _rules(bed, name == "rules")
    if name == "empty chains":
        bed.a.run("nft", "-f", "-", input=floor.encode())


def _measure(bed: BenchBed, seconds: float, data: Path, send: bool = False
             ) -> dict[str, float]:
    """One iperf3 run of ``seconds + 2`` s, B -> A (A sends with ``send``; B connects
    either way), sampled during its middle ``seconds``."""
    sampler = subprocess.Popen(["sh", "-c", f"sleep 1; exec perf record -q -a -g -o {data} "
                                f"sleep {seconds}"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        mbps = iperf3(bed, seconds + 2, 1, client="B", reverse=send).mbps
    finally:
        _, err = sampler.communicate(timeout=seconds + 60)
    if sampler.returncode != 0:
        raise BedError(f"perf record failed: {err.decode(errors='replace').strip()}")
    script = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,ip,sym"],
                            capture_output=True, text=True, check=True).stdout
    gigabytes = mbps * seconds / 8000
    counts = count_stacks(script)
    return {"mbps": mbps, **{key: counts[key] / gigabytes
                             for key in ("busy", "hooks", "table", *CALLERS.values())}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.firewall_cost",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--send", action="store_true",
                        help="A sends (iperf3 -R) instead of receiving")
    parser.add_argument("--floor", action="store_true",
                        help="also measure empty base chains at the rules' hooks")
    args = parser.parse_args(argv)
    names = ("no rules", "rules") + (("empty chains",) if args.floor else ())
    figures: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="tcpcryptd-fwcost-") as tmp, BenchBed(PLAIN) as bed:
        floor = ""
        if args.floor:
            before = _chains(bed)
            _rules(bed, True)
            floor = floor_table(_chains(bed) - before)
        for rep in range(args.rounds):
            for name in (names if rep % 2 == 0 else names[::-1]):
                _configure(bed, name, floor)
                figures[name].append(_measure(bed, args.seconds, Path(tmp) / "perf.data",
                                              args.send))
                row = figures[name][-1]
                print(f"round {rep + 1} {name:12s} " + " ".join(
                    f"{key} {value:.0f}" for key, value in row.items()), flush=True)
    print(f"medians over {args.rounds} rounds (samples per GB {'sent' if args.send else 'received'}"
          f" by A; mbps noisy):")
    for name, rows in figures.items():
        print(f"  {name:12s} " + " ".join(
            f"{key} {median(row[key] for row in rows):.0f} "
            f"[{min(row[key] for row in rows):.0f}-{max(row[key] for row in rows):.0f}]"
            for key in rows[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
