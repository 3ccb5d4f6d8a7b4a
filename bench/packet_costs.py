"""Per-operation cost of the packet codec (layer 2), in microseconds.

Run: ``.venv/bin/python -m bench.packet_costs [--number N]``. Prints the best of several
timeit repeats (CPU time) per operation for a 1448-byte payload (a full-MSS segment on a 1500-byte
MTU path), IPv4 and IPv6. The budget (docs/benchmarks.md, "What is measured", item 5): ACK
translation <= 3 µs, a full checksum ~4 µs with the one-call sum.
"""

from __future__ import annotations

import argparse
import os
import time
import timeit
from collections.abc import Callable

from tcpcryptd.packet import checksum, options
from tcpcryptd.packet.tcp import ACK, PSH, TCPPacket, build

PAYLOAD_LEN = 1448
_TS_OPTIONS = b"\x01\x01\x08\x0a" + bytes(range(8))
_SACK_OPTIONS = _TS_OPTIONS + b"\x01\x01\x05\x0a" + bytes(range(8, 16))


def _best_us(operation: Callable[[], object], number: int, repeat: int = 5) -> float:
    """Best of ``repeat`` runs of ``number`` calls, in CPU microseconds per call.

    Process CPU time rather than wall time, so other work on the machine inflates the
    numbers less (it still costs cache).
    """
    timer = timeit.Timer(operation, timer=time.process_time)
    return min(timer.repeat(number=number, repeat=repeat)) / number * 1e6


def _operations(version: int) -> dict[str, Callable[[], object]]:
    """The measured operations for one IP version, each a closure over its own packet."""
    address_len = 4 if version == 4 else 16
    src, dst = os.urandom(address_len), os.urandom(address_len)
    payload = os.urandom(PAYLOAD_LEN)
    data = build(version, src, dst, 40000, 443, 1000, 2000, ACK | PSH, 502, _TS_OPTIONS, payload)
    ack_only = build(version, src, dst, 40000, 443, 1000, 2000, ACK, 502, _SACK_OPTIONS)
    segment = build(version, src, dst, 40000, 443, 1000, 2000, ACK, 502, b"", payload)[
        20 if version == 4 else 40 :
    ]
    with_new_payload = TCPPacket.parse(data)
    with_new_payload.payload = os.urandom(PAYLOAD_LEN)
    with_new_ack = TCPPacket.parse(data)

    def rewrite_seq_ack() -> bytes:
        with_new_ack.seq = 123456789
        with_new_ack.ack = 987654321
        return with_new_ack.to_bytes_incremental()

    def parse_and_rewrite_seq_ack() -> bytes:
        pkt = TCPPacket.parse(data)
        pkt.seq = 123456789
        pkt.ack = 987654321
        return pkt.to_bytes_incremental()

    def translate_ack_and_sack() -> bytes:
        pkt = TCPPacket.parse(ack_only)
        pkt.ack = 987654321
        blocks = options.sack_blocks(pkt.options)
        pkt.options = options.replace_sack(pkt.options, [(l + 7, r + 7) for l, r in blocks])
        return pkt.to_bytes_incremental()

    tag = f"IPv{version}"
    return {
        f"parse, {PAYLOAD_LEN}-byte payload ({tag})": lambda: TCPPacket.parse(data),
        f"to_bytes after a payload change, full checksum ({tag})": with_new_payload.to_bytes,
        f"seq/ack rewrite, incremental checksum ({tag})": rewrite_seq_ack,
        f"parse + seq/ack rewrite ({tag})": parse_and_rewrite_seq_ack,
        f"parse + ack + 1 SACK block translation ({tag})": translate_ack_and_sack,
        f"tcp_checksum of {len(segment)} bytes ({tag})": lambda: checksum.tcp_checksum(
            src, dst, segment
        ),
    }


def main() -> None:
    """Print one line per operation: microseconds per call."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20000, help="calls per timing run")
    args = parser.parse_args()
    for version in (4, 6):
        for name, operation in _operations(version).items():
            print(f"{_best_us(operation, args.number):7.2f} us  {name}")


if __name__ == "__main__":
    main()
