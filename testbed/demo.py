"""``make demo``: what a user sees -- two namespaces, tcpcryptd in each, an encrypted download.

Steps: create namespaces A and B joined by a veth pair; start ``tcpcryptd run`` in each (as a
user would, with its own control socket) and wait until ``tcpcryptd status`` answers; B serves
a file with ``python -m http.server``; A downloads it with curl while tcpdump records A's
interface; both daemons' ``tcpcryptd status`` tables are shown during the transfer; the
capture is checked for the ENO option (kind 69, RFC 8547 §4.1) in SYN and SYN-ACK and for a
plaintext marker embedded in the file; sha256 is compared at both ends. Everything is torn
down at the end, also on Ctrl-C or failure. Runs in well under a minute.

    python -m testbed.demo [--size MB] [--ipv6]
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType

from testbed import (
    BedError,
    TestBed,
    environment_problem,
    make_payload,
    sha256_file,
    tcpcryptd_command,
)

HTTP_PORT = 8080
#: curl's rate limit keeps the connection open for a few seconds, long enough for the status
#: tables to show it live.
RATE_LIMIT = "8M"


def _say(text: str = "") -> None:
    print(text, flush=True)


def _step(number: int, total: int, text: str) -> None:
    _say(f"[{number}/{total}] {text}")


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.rstrip().splitlines())


def _interrupted(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_demo(size_mb: int, family: int) -> int:
    """The demo proper; returns the process exit status (0: encrypted and intact)."""
    steps = 6
    with TestBed(router=False) as bed:
        a_addr, b_addr = bed.addr("A", family), bed.addr("B", family)
        _step(1, steps, f"namespaces {bed.a.name} (A, {a_addr}) and {bed.b.name} "
                        f"(B, {b_addr}), joined by a veth pair")

        _step(2, steps, f"starting `{' '.join(['tcpcryptd', 'run', '--control', 'SOCKET'])}` "
                        "in A and B")
        daemons = {label: bed.daemon(label) for label in ("A", "B")}
        for label, daemon in daemons.items():
            _say(f"    {label}: tcpcryptd running (pid {daemon.proc.pid}), control socket "
                 f"{daemon.control}")

        marker = f"TCPCRYPTD-DEMO-PLAINTEXT-{bed.run_id}".encode()
        www = bed.workdir / "www"
        www.mkdir()
        source = www / "demo.bin"
        source.write_bytes(make_payload(size_mb * 1_000_000, marker, seed=size_mb))
        bed.b.popen([sys.executable, "-m", "http.server", "--bind", "::", "--directory",
                     str(www), str(HTTP_PORT)])
        bed.b.wait_listening(HTTP_PORT)
        capture = bed.capture("demo")
        url = f"http://{bed.url_host(b_addr)}:{HTTP_PORT}/demo.bin"
        _step(3, steps, f"B serves a {size_mb} MB file (plaintext marker {marker.decode()!r} "
                        f"every 4 KiB); A runs: curl {url}")
        received = bed.workdir / "received.bin"
        started = time.monotonic()
        curl = bed.a.popen(["curl", "--silent", "--show-error", "--limit-rate", RATE_LIMIT,
                            "--max-time", "50", "--output", str(received), url])
        _wait_for_bytes(received, curl)

        _step(4, steps, "`tcpcryptd status` while the download runs:")
        for label, daemon in daemons.items():
            _say(f"  --- {label} ---")
            _say(_indent(daemon.cli("status").stdout.decode(errors="replace")))

        status = curl.wait(timeout=60)
        seconds = time.monotonic() - started
        capture.stop()
        sent_sha, received_sha = sha256_file(source), sha256_file(received)
        _step(5, steps, f"curl exit {status}: {received.stat().st_size / 1e6:.1f} MB in "
                        f"{seconds:.1f} s (rate-limited to {RATE_LIMIT}/s); sha256 sent "
                        f"{sent_sha[:16]}... received {received_sha[:16]}... "
                        f"{'MATCH' if sent_sha == received_sha else 'MISMATCH'}")

        report = capture.analyze(marker)
        encrypted = (report.syn_with_eno >= 1 and report.synack_with_eno >= 1
                     and report.marker_hits == 0)
        _step(6, steps, report.summary())
        ok = status == 0 and sent_sha == received_sha and encrypted
        _say(f"    => {'encrypted on the wire and intact' if ok else 'NOT as expected'}")
        _say("teardown: stopping daemons, removing namespaces")
    _say("done")
    return 0 if ok else 1


def _wait_for_bytes(path, curl, timeout: float = 30.0) -> None:
    """Until the download has started (or curl ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and curl.poll() is None:
        if path.exists() and path.stat().st_size > 0:
            return
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.demo",
                                     description="tcpcryptd between two network namespaces")
    parser.add_argument("--size", type=int, default=20, metavar="MB",
                        help="size of the downloaded file in MB (default 20)")
    parser.add_argument("--ipv6", action="store_true", help="use IPv6 addresses")
    args = parser.parse_args(argv)
    if not 1 <= args.size <= 200:
        parser.error("--size must be between 1 and 200 MB")
    problem = environment_problem()
    if problem:
        print(f"demo: cannot run here: {problem}", file=sys.stderr)
        return 2
    _say(f"tcpcryptd demo -- {' '.join(tcpcryptd_command())}")
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupted)
    try:
        return run_demo(args.size, 6 if args.ipv6 else 4)
    except KeyboardInterrupt:
        print("demo: interrupted; everything was torn down", file=sys.stderr)
        return 130
    except BedError as exc:
        print(f"demo: failed: {exc}\n(everything was torn down)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
