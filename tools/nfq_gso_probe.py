"""Probe: NFQUEUE with ``NFQA_CFG_F_GSO`` -- super-packets to userspace, and back mangled.

NetfilterQueue 1.1 (the daemon's binding) copies at most 4016 bytes and sets no queue flags,
so the kernel segments GSO packets before queueing them (docs/daemon.md, "Limits and
notes", GRO/GSO): every MTU-sized
packet costs a verdict. This probe binds a queue through libnetfilter_queue directly
(ctypes), with ``NFQA_CFG_F_GSO`` and a 64 KiB copy range, in a namespace bed of its own,
and runs iperf3 through it, to measure what the kernel hands over and whether it takes a
super-packet back with a new payload:

    python tools/nfq_gso_probe.py [--direction outbound|inbound] [--rewrite] [--seconds 3]

``--rewrite`` gives every packet back as a new payload (the same bytes, TCP checksum
recomputed in full, as the daemon does after encrypting): the packet is mangled
(``CHECKSUM_NONE``) and must still be segmented and delivered. Prints iperf3's rate and
retransmits and a histogram of the lengths the queue saw. Root; only namespaces the bed
makes; everything is removed at the end. A research tool, not part of the daemon.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import select
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tcpcryptd.packet.tcp import TCPPacket  # noqa: E402
from testbed import TestBed  # noqa: E402

NF_ACCEPT = 1
NFQNL_COPY_PACKET = 2
NFQA_CFG_F_GSO = 1 << 2
QUEUE = 7
PORT = 5201


class _PacketHeader(ctypes.Structure):
    _fields_ = [("packet_id", ctypes.c_uint32), ("hw_protocol", ctypes.c_uint16),
                ("hook", ctypes.c_uint8)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                             ctypes.c_void_p)


def _library() -> ctypes.CDLL:
    lib = ctypes.CDLL("libnetfilter_queue.so.1")
    lib.nfq_open.restype = ctypes.c_void_p
    lib.nfq_bind_pf.argtypes = [ctypes.c_void_p, ctypes.c_uint16]
    lib.nfq_create_queue.restype = ctypes.c_void_p
    lib.nfq_create_queue.argtypes = [ctypes.c_void_p, ctypes.c_uint16, _CALLBACK, ctypes.c_void_p]
    lib.nfq_set_mode.argtypes = [ctypes.c_void_p, ctypes.c_uint8, ctypes.c_uint32]
    lib.nfq_set_queue_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32]
    lib.nfq_set_queue_maxlen.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.nfq_fd.argtypes = [ctypes.c_void_p]
    lib.nfq_handle_packet.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    lib.nfq_get_msg_packet_hdr.restype = ctypes.POINTER(_PacketHeader)
    lib.nfq_get_msg_packet_hdr.argtypes = [ctypes.c_void_p]
    lib.nfq_get_payload.argtypes = [ctypes.c_void_p,
                                    ctypes.POINTER(ctypes.POINTER(ctypes.c_ubyte))]
    lib.nfq_set_verdict.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32,
                                    ctypes.c_uint32, ctypes.c_char_p]
    return lib


def serve(rewrite: bool, seconds: float) -> None:
    """The queue consumer (runs inside the namespace): verdicts for ``seconds``."""
    lib = _library()
    lengths: Counter[int] = Counter()

    @_CALLBACK
    def on_packet(qh, _msg, nfad, _data):  # type: ignore[no-untyped-def]
        packet_id = socket.ntohl(lib.nfq_get_msg_packet_hdr(nfad).contents.packet_id)
        pointer = ctypes.POINTER(ctypes.c_ubyte)()
        length = lib.nfq_get_payload(nfad, ctypes.byref(pointer))
        lengths[length // 4096 * 4096] += 1
        if rewrite and length > 0:
            data = TCPPacket.parse(ctypes.string_at(pointer, length))
            data.payload = bytes(data.payload)          # a payload change: full checksum
            lib.nfq_set_verdict(qh, packet_id, NF_ACCEPT, length, data.to_bytes())
        else:
            lib.nfq_set_verdict(qh, packet_id, NF_ACCEPT, 0, None)
        return 0

    handle = lib.nfq_open()
    lib.nfq_bind_pf(handle, socket.AF_INET)
    queue = lib.nfq_create_queue(handle, QUEUE, on_packet, None)
    if lib.nfq_set_mode(queue, NFQNL_COPY_PACKET, 0xFFFF) < 0:
        raise SystemExit("nfq_set_mode failed")
    if lib.nfq_set_queue_flags(queue, NFQA_CFG_F_GSO, NFQA_CFG_F_GSO) < 0:
        raise SystemExit("the kernel refused NFQA_CFG_F_GSO")
    lib.nfq_set_queue_maxlen(queue, 4096)
    sock = socket.socket(fileno=lib.nfq_fd(handle))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    buffer = ctypes.create_string_buffer(256 * 1024)
    print("ready", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if select.select([sock], [], [], 0.2)[0]:
            received = sock.recv_into(buffer)
            lib.nfq_handle_packet(handle, buffer, received)
    sock.detach()
    print(json.dumps({str(k): v for k, v in sorted(lengths.items())}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--direction", choices=("outbound", "inbound"), default="outbound")
    parser.add_argument("--rewrite", action="store_true")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.rewrite, args.seconds + 3)
        return
    with TestBed(router=False) as bed:
        queued = bed.a if args.direction == "outbound" else bed.b
        hook = (("raw", "OUTPUT", "-o") if args.direction == "outbound"
                else ("mangle", "INPUT", "-i"))
        queued.iptables("-t", hook[0], "-A", hook[1], hook[2], "eth0", "-p", "tcp", "-j",
                        "NFQUEUE", "--queue-num", str(QUEUE), "--queue-bypass")
        consumer = queued.popen([sys.executable, __file__, "--serve", "--seconds",
                                 str(args.seconds)] + (["--rewrite"] if args.rewrite else []),
                                stdout=subprocess.PIPE)
        assert consumer.stdout is not None
        consumer.stdout.readline()
        bed.b.popen(["iperf3", "-s", "-1", "-p", str(PORT)])
        bed.b.wait_listening(PORT)
        out = bed.a.run("iperf3", "-c", bed.addr("B", 4), "-p", str(PORT), "-t",
                        str(args.seconds), "-J", timeout=args.seconds + 30).stdout
        report = json.loads(out)["end"]
        lengths = json.loads(consumer.communicate(timeout=args.seconds + 30)[0].splitlines()[-1])
    mbps = report["sum_received"]["bits_per_second"] / 1e6
    print(f"{args.direction}, {'rewrite' if args.rewrite else 'accept'}: {mbps:.0f} Mbit/s, "
          f"{report['sum_sent'].get('retransmits')} retransmits")
    total = sum(lengths.values())
    for start, count in lengths.items():
        print(f"  {int(start):6d}..{int(start) + 4095:6d} bytes: {count:7d} ({count / total:.1%})")


if __name__ == "__main__":
    main()
