"""Half-open ENO flows in the daemon under a SYN flood (run: python -m bench.syn_flood).

A direct A <-> B bed (:mod:`testbed`), ``tcpcryptd run`` in B only, a listener on
B's port 7002 (backlog 65535; past its SYN queue the kernel answers with SYN cookies, still
a SYN-ACK).  Namespace A sends ``--count`` ENO SYNs (RFC 8547 §4.1: the SYN-form option
offering the default TEPs, after Linux's MSS, SACK-permitted, timestamps and window scale)
from distinct source ports with a raw socket, at ``--rate`` per second.  A's kernel has no
socket for them and would answer B's SYN-ACKs with RSTs: an iptables rule in A drops A's
outgoing RSTs, so every flow stays half-open, as with a spoofed source.

Figures: B's daemon VmRSS after a warm-up of 200 SYNs (code paths and caches loaded) and
once the flood was handled (the daemon's CPU time stopped growing), the growth divided by
the half-open sessions status counts beyond the warm-up's; also the growth for the whole
flood and the ``plain_half-open-limit`` counter, which tell what the cap
(``limits.max_half_open``, set with ``--max-half-open``) bounds.  ``--daemon-cwd DIR`` runs
``python -m tcpcryptd`` from DIR instead (another checkout, for before/after figures).

``--idle-flows N`` measures the other figure of the same kind in the same daemons: N idle
encrypted connections A -> B (``bench.workloads.idle_flows``: both daemons, X25519 and
AES-128-GCM, RSS read 7 s after each checkpoint), per flow and daemon from 0 to N and
marginal from N/2 to N.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import subprocess
import sys
import time

from bench.bed import REPO_ROOT, read_cpu_seconds, read_vmrss
from tcpcryptd.daemon import control
from testbed import BedError, Daemon, TestBed

PORT = 7002
WARM_UP = 200
_LISTENER = ("import socket, time\n"
             "s = socket.socket()\n"
             "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
             f"s.bind(('', {PORT}))\n"
             "s.listen(65535)\n"
             "print('listening', flush=True)\n"
             "time.sleep(86400)\n")


def _eno_syn(src: bytes, dst: bytes, sport: int, isn: int, tsval: int) -> bytes:
    from tcpcryptd.engine import EngineConfig
    from tcpcryptd.engine.handshake import _active_syn_option
    from tcpcryptd.packet.tcp import SYN, build
    options = (struct.pack("!BBH", 2, 4, 1460) + b"\x04\x02"
               + struct.pack("!BBII", 8, 10, tsval, 0) + b"\x01\x03\x03\x07"
               + _active_syn_option(tuple(EngineConfig().teps)).raw)
    options += b"\x01" * (-len(options) % 4)
    return build(4, src, dst, sport, PORT, isn, 0, SYN, 64240, options)


def send(src: str, dst: str, first_port: int, count: int, rate: float) -> None:
    """In namespace A: ``count`` ENO SYNs from ports ``first_port``.. at ``rate`` per second."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    src_b, dst_b = socket.inet_aton(src), socket.inet_aton(dst)
    began = time.monotonic()
    for k in range(count):
        due = began + k / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        packet = _eno_syn(src_b, dst_b, first_port + k, (0x1000_0000 + 7919 * k) & 0xFFFFFFFF,
                          1 + k)
        raw.sendto(packet, (dst, 0))
    print(json.dumps({"sent": count, "seconds": time.monotonic() - began}), flush=True)


def _settle(pid: int, quiet: float = 1.5, timeout: float = 120.0) -> None:
    """Wait until the daemon's CPU time stops growing (its queue is drained)."""
    deadline = time.monotonic() + timeout
    last = read_cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = read_cpu_seconds(pid)
        if now - last < 0.01:
            return
        last = now
    raise BedError("the daemon kept working for {timeout} s")


def _summary(daemon: Daemon) -> tuple[dict, dict]:
    answer = control.request(str(daemon.control), {"command": "status", "summary": True},
                             timeout=120.0)
    return answer["summary"], answer["counters"]


def measure(count: int, rate: float, max_half_open: int | None,
            daemon_cwd: str | None) -> dict:
    with TestBed(router=False) as bed:
        config = bed.workdir / "B.toml"
        text = f'[control]\nsocket = "{bed.workdir / "B.sock"}"\n[log]\nlevel = "warning"\n'
        if max_half_open is not None:
            text += f"[limits]\nmax_half_open = {max_half_open}\n"
        config.write_text(text)
        command = [sys.executable, "-m", "tcpcryptd"] if daemon_cwd else None
        daemon = Daemon(bed.b, bed.workdir, ["--config", str(config)], command=command,
                        cwd=daemon_cwd)
        bed.daemons.append(daemon)
        daemon.start(timeout=30.0)
        assert daemon.proc is not None
        pid = daemon.proc.pid
        listener = bed.b.popen([sys.executable, "-c", _LISTENER], stdout=subprocess.PIPE)
        try:
            assert listener.stdout is not None
            listener.stdout.readline()
            bed.a.iptables("-A", "OUTPUT", "-p", "tcp", "--tcp-flags", "RST", "RST", "-j",
                           "DROP")
            src, dst = bed.addr("A", 4), bed.addr("B", 4)

            def flood(first: int, n: int) -> dict:
                done = bed.a.run(sys.executable, "-m", "bench.syn_flood", "--send", src, dst,
                                 str(first), str(n), str(rate), timeout=n / rate + 120)
                return json.loads(done.stdout)

            flood(1024, WARM_UP)
            _settle(pid)
            warm, _ = _summary(daemon)
            time.sleep(2.0)
            _settle(pid)
            base = read_vmrss(pid)
            sent = flood(1024 + WARM_UP, count)
            _settle(pid)
            grown = read_vmrss(pid) - base
            summary, counters = _summary(daemon)
        finally:
            listener.terminate()
            listener.wait(timeout=10)
        half_open = summary["states"].get("syn-received", 0)
        tracked = half_open - warm["states"].get("syn-received", 0)
        return {"syns": count, "rate": rate, "send_seconds": sent["seconds"],
                "max_half_open": max_half_open, "half_open": half_open, "tracked": tracked,
                "plain_half_open_limit": counters.get("plain_half-open-limit", 0),
                "rss_growth": grown,
                "rss_per_half_open": grown / tracked if tracked > 0 else None}


def measure_idle(count: int, timeout: float = 300.0) -> dict:
    """VmRSS per idle encrypted flow of both daemons (see the module docstring)."""
    from bench.bed import BenchBed, Mode
    from bench.workloads import idle_flows
    half = count // 2
    with BenchBed(Mode("tcpcryptd")) as bed:
        points = idle_flows(bed, [half, count], timeout)
    zero, middle, full = points[0], points[1], points[-1]
    result: dict = {"idle_flows": full.held, "failed": full.failed}
    for label in sorted(full.rss):
        result[f"{label}_rss_per_idle_flow"] = (full.rss[label] - zero.rss[label]) / full.held
        result[f"{label}_rss_marginal_per_idle_flow"] = (
            (full.rss[label] - middle.rss[label]) / max(full.held - middle.held, 1))
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=20000, help="SYNs in the flood")
    parser.add_argument("--rate", type=float, default=3000.0, help="SYNs per second")
    parser.add_argument("--max-half-open", type=int, default=None,
                        help="limits.max_half_open of the daemon (default: the daemon's)")
    parser.add_argument("--daemon-cwd", default=None,
                        help="run python -m tcpcryptd from this directory (another checkout)")
    parser.add_argument("--send", nargs=5, metavar=("SRC", "DST", "PORT", "N", "RATE"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--idle-flows", type=int, default=0, metavar="N",
                        help="measure N idle encrypted connections instead")
    args = parser.parse_args(argv)
    if args.idle_flows:
        idle = measure_idle(args.idle_flows)
        print(json.dumps(idle))
        return idle
    if args.send:
        src, dst, port, n, rate = args.send
        send(src, dst, int(port), int(n), float(rate))
        return {}
    result = measure(args.count, args.rate, args.max_half_open, args.daemon_cwd)
    print(json.dumps(result))
    per = result["rss_per_half_open"]
    print(f"{result['syns']} ENO SYNs at {result['rate']:g}/s into tcpcryptd run "
          f"(max_half_open {result['max_half_open'] or 'default'}): "
          f"{result['tracked']} tracked half-open, {result['plain_half_open_limit']} left plain; "
          f"VmRSS +{result['rss_growth'] / 1e6:.1f} MB"
          + (f", {per:.0f} B per half-open flow" if per is not None else ""))
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    main()
