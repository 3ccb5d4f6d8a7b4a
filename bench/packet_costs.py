"""Per-operation cost of the packet codec (layer 2), in microseconds.

Run: ``.venv/bin/python -m bench.packet_costs [--number N]``. Prints the best of several
timeit repeats per operation for a 1448-byte payload (a full-MSS segment on a 1500-byte
MTU path), IPv4 and IPv6. DESIGN.md §5 / TESTBED.md give the budget: ACK translation
<= 3 µs, a full checksum ~4 µs with the naive one-call sum.
"""

from __future__ import annotations

import argparse
import os
import timeit
from collections.abc import Callable

from tcpcryptd.packet import checksum, options
from tcpcryptd.packet.tcp import ACK, PSH, TCPPacket, build

PAYLOAD_LEN = 1448
_TS_OPTIONS = b"\x01\x01\x08\x0a" + bytes(range(8))
_SACK_OPTIONS = _TS_OPTIONS + b"\x01\x01\x05\x0a" + bytes(range(8, 16))


def _best_us(operation: Callable[[], object], number: int, repeat: int = 5) -> float:
    """Best of ``repeat`` runs of ``number`` calls, in microseconds per call."""
    return min(timeit.repeat(operation, number=number, repeat=repeat)) / number * 1e6


def _operations(version: int) -> dict[str, Callable[[], object]]:
    """The measured operations for one IP version, each a closure over its own packet."""
    address_len = 4 if version == 4 else 16
    src, dst = os.urandom(address_len), os.urandom(address_len)
    payload = os.urandom(PAYLOAD_LEN)
    data = build(version, src, dst, 40000, 443, 1000, 2000, ACK | PSH, 502, _TS_OPTIONS, payload)
    ack_only = build(version, src, dst, 40000, 443, 1000, 2000, ACK, 502, _SACK_OPTIONS)
    segment = data[20 if version == 4 else 40 :]
    new_payload = os.urandom(PAYLOAD_LEN)

    def to_bytes_new_payload() -> bytes:
        pkt = TCPPacket.parse(data)
        pkt.payload = new_payload
        return pkt.to_bytes()

    def rewrite_seq_ack() -> bytes:
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

    return {
        f"parse (IPv{version}, {PAYLOAD_LEN}-byte payload)": lambda: TCPPacket.parse(data),
        f"parse + to_bytes, new payload, full checksum (IPv{version})": to_bytes_new_payload,
        f"parse + seq/ack rewrite, incremental checksum (IPv{version})": rewrite_seq_ack,
        f"parse + ack + SACK translation, incremental (IPv{version})": translate_ack_and_sack,
        f"tcp_checksum of {len(segment)} bytes (IPv{version})": lambda: checksum.tcp_checksum(
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
