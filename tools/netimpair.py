#!/usr/bin/env python3
"""netimpair -- a seeded impairment middlebox for a router namespace (no netem on this kernel).

Runs in the middle namespace of a test bed and takes forwarded TCP from an NFQUEUE on the
FORWARD chain (the caller installs ``-j NFQUEUE --queue-num N`` for IPv4 and IPv6). For each
packet, with the given probabilities:

  --drop P        drop it
  --reorder P     hold it (deferred verdict) for --delay-ms, so later packets overtake it
  --dup P         forward it and send a copy through a raw socket
  --resegment P   split its TCP payload at a random point into two segments (seq, flags and
                  options kept, checksums recomputed), sent through a raw socket, the original
                  dropped; with probability 1/2 the second half is sent first
  --tamper N      flip one bit of the last payload byte of the Nth payload-carrying non-SYN
                  segment (once), checksum fixed so that only the receiver's AEAD can notice;
                  on a tcpcrypt flow that byte is inside a frame's tag or ciphertext

Copies and halves leave through a raw socket (IPPROTO_RAW: header included), i.e. through
the router's OUTPUT path, so they are never queued again. The RNG is seeded (--seed): a run is
reproducible up to the kernel's timing. Prints "netimpair: ready" once bound, and on SIGTERM or
SIGINT releases held packets and prints "netimpair: stats {json}".
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import random
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

from netfilterqueue import NetfilterQueue, Packet

from tcpcryptd.packet.tcp import FIN, PSH, SYN, PacketError, TCPPacket



def parse_segment(packet: bytes) -> TCPPacket | None:
    """The TCP segment in ``packet``; None for anything else (fragments, IPv6 extension
    headers, garbage), which passes unimpaired."""
    try:
        segment = TCPPacket.parse(packet)
    except PacketError:
        return None
    return None if segment.ext_headers else segment


def with_payload(segment: TCPPacket, payload: bytes, seq: int, flags: int) -> bytes:
    """``segment`` carrying ``payload`` at ``seq``, lengths and checksums fixed."""
    segment.payload, segment.seq, segment.flags = payload, seq & 0xFFFFFFFF, flags
    return segment.to_bytes()


@dataclass
class Impairments:
    drop: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    resegment: float = 0.0
    delay_ms: float = 20.0
    tamper: int = 0


@dataclass
class Middlebox:
    """The queue callback and the held-packet schedule; counters end up in the stats line."""

    impair: Impairments
    rng: random.Random
    raw4: socket.socket
    raw6: socket.socket
    held: list[tuple[float, int, Packet]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("packets", "passed", "dropped", "duplicated", "reordered", "resegmented", "tampered",
         "not_tcp"), 0))
    _data_segments: int = 0
    _tie: itertools.count = field(default_factory=itertools.count)

    def send_raw(self, segment: TCPPacket, packet: bytes) -> None:
        family, sock = ((socket.AF_INET, self.raw4) if segment.version == 4
                        else (socket.AF_INET6, self.raw6))
        sock.sendto(packet, (socket.inet_ntop(family, segment.dst), 0))

    def on_packet(self, pkt: Packet) -> None:
        self.counters["packets"] += 1
        raw = pkt.get_payload()
        segment = parse_segment(raw)
        if segment is None:
            self.counters["not_tcp"] += 1
            pkt.accept()
            return
        if segment.payload and not segment.flags & SYN:
            self._data_segments += 1
            if self._data_segments == self.impair.tamper:
                self._tamper(pkt, segment)
                return
        roll = self.rng.random
        if roll() < self.impair.drop:
            self.counters["dropped"] += 1
            pkt.drop()
            return
        if len(segment.payload) >= 2 and roll() < self.impair.resegment:
            self._resegment(pkt, segment)
            return
        if roll() < self.impair.reorder:
            self.counters["reordered"] += 1
            pkt.retain()
            release_at = time.monotonic() + self.impair.delay_ms / 1000.0
            heapq.heappush(self.held, (release_at, next(self._tie), pkt))
            return
        self.counters["passed"] += 1
        pkt.accept()
        if roll() < self.impair.dup:
            self.counters["duplicated"] += 1
            self.send_raw(segment, raw)

    def _resegment(self, pkt: Packet, segment: TCPPacket) -> None:
        payload, seq, flags = bytes(segment.payload), segment.seq, segment.flags
        split = self.rng.randrange(1, len(payload))
        first = with_payload(segment, payload[:split], seq, flags & ~(FIN | PSH))
        second = with_payload(segment, payload[split:], seq + split, flags)
        pkt.drop()
        halves = [first, second] if self.rng.random() < 0.5 else [second, first]
        for half in halves:
            self.send_raw(segment, half)
        self.counters["resegmented"] += 1

    def _tamper(self, pkt: Packet, segment: TCPPacket) -> None:
        payload = bytearray(segment.payload)
        payload[-1] ^= 0x01
        pkt.set_payload(with_payload(segment, bytes(payload), segment.seq, segment.flags))
        pkt.accept()
        self.counters["tampered"] += 1

    def release_due(self, now: float, everything: bool = False) -> None:
        while self.held and (everything or self.held[0][0] <= now):
            _, _, pkt = heapq.heappop(self.held)
            pkt.accept()

    def timeout(self, now: float) -> float | None:
        return max(0.0, self.held[0][0] - now) if self.held else None


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queue", type=int, required=True, help="NFQUEUE number to bind")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--drop", type=float, default=0.0, metavar="P")
    parser.add_argument("--dup", type=float, default=0.0, metavar="P")
    parser.add_argument("--reorder", type=float, default=0.0, metavar="P")
    parser.add_argument("--resegment", type=float, default=0.0, metavar="P")
    parser.add_argument("--delay-ms", type=float, default=20.0,
                        help="how long a reordered packet is held (default 20)")
    parser.add_argument("--tamper", type=int, default=0, metavar="N",
                        help="flip a byte of the Nth payload-carrying segment (0: never)")
    args = parser.parse_args(argv)
    for name in ("drop", "dup", "reorder", "resegment"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            parser.error(f"--{name} must be a probability in [0, 1]")
    if args.delay_ms < 0 or args.tamper < 0:
        parser.error("--delay-ms and --tamper must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    box = Middlebox(
        Impairments(args.drop, args.dup, args.reorder, args.resegment, args.delay_ms, args.tamper),
        random.Random(args.seed),
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW),
        socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW),
    )
    stopping = False

    def request_stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    queue = NetfilterQueue()
    queue.bind(args.queue, box.on_packet, max_len=8192)
    fd = queue.get_fd()
    print(f"netimpair: ready queue={args.queue}", flush=True)
    try:
        while not stopping:
            wait = box.timeout(time.monotonic())
            readable, _, _ = select.select([fd], [], [], 0.5 if wait is None else wait)
            if readable:
                queue.run(block=False)
            box.release_due(time.monotonic())
    finally:
        box.release_due(time.monotonic(), everything=True)
        queue.unbind()
        print(f"netimpair: stats {json.dumps(box.counters)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
