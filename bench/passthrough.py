"""The NFQUEUE pass-through baseline: the daemon's queue rules, a consumer that accepts all.

Run in each namespace (root): ``python -m bench.passthrough [--queue N]``. It binds the
queue, installs the rules ``tcpcryptd run`` installs (tcpcryptd.daemon.firewall with the
default configuration's marks) with every SYN and SYN-ACK queued (:func:`passthrough_spec`),
prints ``passthrough: ready`` and then accepts every
packet unchanged until SIGTERM/SIGINT, when it removes the rules and prints
``passthrough: accepted N``. The difference between this and plain TCP is the cost of the
queue itself (two kernel/user crossings per packet); the difference between this and
tcpcryptd is the cost of the daemon's work.

``--binding own`` reads the queue through the daemon's own binding
(:mod:`tcpcryptd.daemon.nfqueue`) instead of NetfilterQueue, the MTU-sized baseline of the
issue; ``--gso`` adds ``NFQA_CFG_F_GSO`` to it (super-packets accepted whole).

``--syn-only`` queues only the segments with SYN set (SYN and SYN-ACK, both directions, not
loopback; IPv4) with two plain iptables rules instead of the daemon's: what a plain
connection costs when its SYN phase alone crosses userspace and the consumer does nothing,
the floor of any design that queues the SYN phase (bench: plain TCP with the daemon on one
end).
"""

from __future__ import annotations

import argparse
import dataclasses
import selectors
import signal
import subprocess
import sys
from types import FrameType

from typing import Any

from tcpcryptd.daemon.config import Config
from tcpcryptd.daemon.firewall import Firewall, RuleSpec, detect_backend
from tcpcryptd.daemon.nftables import require_selectors
from tcpcryptd.daemon.runner import rule_spec
from tcpcryptd.engine.policy import Mode


class _Stop(Exception):
    """Raised by the SIGTERM/SIGINT handler to leave the loop."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


class AcceptAll:
    """The queue callback: every packet accepted unchanged (counted)."""

    def __init__(self) -> None:
        self.accepted = 0

    def __call__(self, packet: Any) -> None:
        packet.accept()
        self.accepted += 1


def syn_rules(queue: int) -> list[list[str]]:
    """iptables arguments (without -I/-D) queueing every non-loopback segment with SYN set:
    outbound in raw OUTPUT, inbound in mangle INPUT, where the daemon queues."""
    target = ["-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"]
    syn = ["-p", "tcp", "--tcp-flags", "SYN", "SYN"]
    return [["-t", "raw", "OUTPUT", "!", "-o", "lo", *syn, *target],
            ["-t", "mangle", "INPUT", "!", "-i", "lo", *syn, *target]]


def _syn_rules(queue: int, action: str) -> None:
    for table, name, chain, *rule in syn_rules(queue):
        subprocess.run(["iptables", table, name, action, chain, *rule], check=action == "-I",
                       capture_output=True, timeout=30)


def passthrough_spec(config: Config, queue: int) -> RuleSpec:
    """The daemon's rules for ``queue``, with every SYN and SYN-ACK sent to the queue as
    under policy ``require`` everywhere: the kernel then never decides a connection plain by
    itself (a peer's SYN or SYN-ACK without ENO, which this consumer never adds), and the
    consumer never marks one plain, so every packet of every connection is queued."""
    spec = rule_spec(config)
    offload = dataclasses.replace(spec.offload, queued_syns=require_selectors((), Mode.REQUIRE))
    return dataclasses.replace(spec, queue_num=queue, workers=1, offload=offload)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", type=int, default=Config().queue.number)
    parser.add_argument("--binding", choices=("netfilterqueue", "own"), default="netfilterqueue")
    parser.add_argument("--gso", action="store_true", help="own binding: NFQA_CFG_F_GSO")
    parser.add_argument("--syn-only", action="store_true",
                        help="queue only segments with SYN set (own rules, IPv4)")
    args = parser.parse_args(argv)
    config = Config()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    consumer = AcceptAll()
    if args.binding == "own":
        from tcpcryptd.daemon.nfqueue import PacketQueue

        own = PacketQueue(args.queue, config.queue.max_len, consumer, gso=args.gso)
        fd, drain, unbind = own.fileno(), own.process, own.close
    else:
        from netfilterqueue import NetfilterQueue

        queue = NetfilterQueue()
        queue.bind(args.queue, consumer, max_len=config.queue.max_len)
        fd, drain, unbind = queue.get_fd(), lambda: queue.run(block=False), queue.unbind
    firewall = Firewall(detect_backend(config.firewall.backend), ipv6=config.firewall.ipv6)
    selector = selectors.DefaultSelector()
    selector.register(fd, selectors.EVENT_READ)
    try:
        if args.syn_only:
            _syn_rules(args.queue, "-I")
        else:
            firewall.install(passthrough_spec(config, args.queue))
        print("passthrough: ready", flush=True)
        while True:
            # The same I/O pattern as the daemon's loop: wait, then drain without blocking.
            selector.select()
            drain()
    except _Stop:
        pass
    finally:
        if args.syn_only:
            _syn_rules(args.queue, "-D")
        else:
            firewall.remove(config.marks.encrypted)
        unbind()
    print(f"passthrough: accepted {consumer.accepted}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
