"""The nfnetlink_queue binding without a kernel: packet messages in, verdict messages out.

A datagram socket pair stands in for the netlink socket: the test writes packet messages as
the kernel lays them out (linux/netfilter/nfnetlink_queue.h) and reads back the verdicts
one ``sendmsg`` carried.
"""

from __future__ import annotations

import socket
import struct

import pytest

from tcpcryptd.daemon.nfqueue import (
    MAX_COPY,
    NF_ACCEPT,
    NF_DROP,
    NF_INET_LOCAL_IN,
    NFQA_SKB_CSUMNOTREADY,
    NFQA_SKB_GSO,
    NFQNL_MSG_PACKET,
    NFQNL_MSG_VERDICT,
    NFQNL_MSG_VERDICT_BATCH,
    PacketQueue,
)

QUEUE = 3


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * (-len(value) % 4)


def packet_message(packet_id: int, payload: bytes, *, hook: int = 3, mark: int | None = None,
                   skb_info: int | None = None) -> bytes:
    attrs = _attr(1, struct.pack(">IHB", packet_id, 0x0800, hook))
    if mark is not None:
        attrs += _attr(3, struct.pack(">I", mark))
    if skb_info is not None:
        attrs += _attr(14, struct.pack(">I", skb_info))
    attrs += _attr(10, payload)
    body = struct.pack("=BBH", socket.AF_INET, 0, socket.htons(QUEUE)) + attrs
    return struct.pack("=IHHII", 16 + len(body), NFQNL_MSG_PACKET, 0, 0, 0) + body


def parse_verdicts(data: bytes) -> list[tuple[int, int, int, int | None, bytes | None]]:
    """(message type, verdict, id, mark, payload) of each message in ``data``."""
    out = []
    pos = 0
    while pos < len(data):
        length, kind = struct.unpack_from("=IH", data, pos)
        family, version, res_id = struct.unpack_from("=BBH", data, pos + 16)
        assert socket.ntohs(res_id) == QUEUE
        verdict = packet_id = None
        mark = payload = None
        at = pos + 20
        while at < pos + length:
            alen, akind = struct.unpack_from("=HH", data, at)
            value = data[at + 4:at + alen]
            if akind == 2:
                verdict, packet_id = struct.unpack(">II", value)
            elif akind == 3:
                mark = struct.unpack(">I", value)[0]
            elif akind == 10:
                payload = value
            at += (alen + 3) & ~3
        out.append((kind, verdict, packet_id, mark, payload))
        pos += length
    return out


@pytest.fixture
def bed():
    kernel, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    seen = []
    held: set[int] = set()
    queue = PacketQueue(QUEUE, 1024, seen.append, held=lambda: held, sock=ours)
    kernel.settimeout(2)
    yield kernel, queue, seen, held
    kernel.close()
    ours.close()


def sent(kernel: socket.socket):
    return parse_verdicts(kernel.recv(1 << 20))


def test_a_packet_message_and_its_verdict_with_mark_and_payload(bed):
    kernel, queue, seen, _ = bed
    kernel.send(packet_message(7, b"E" + bytes(39), hook=NF_INET_LOCAL_IN, mark=0x5,
                               skb_info=NFQA_SKB_GSO | NFQA_SKB_CSUMNOTREADY))
    queue.process()   # no verdict yet: nothing sent
    (packet,) = seen
    assert (packet.id, packet.hook, packet.mark) == (7, NF_INET_LOCAL_IN, 5)
    assert packet.payload == b"E" + bytes(39) and packet.gso and packet.csum_not_ready
    packet.accept(0x25, b"new bytes")
    with pytest.raises(RuntimeError):
        packet.drop()
    queue.flush()
    assert sent(kernel) == [(NFQNL_MSG_VERDICT, NF_ACCEPT, 7, 0x25, b"new bytes")]


def test_the_first_verdict_leaves_at_once_the_rest_of_the_round_in_one_send(bed):
    kernel, queue, seen, _ = bed
    for packet_id in (9, 10, 11, 12, 13, 20):
        kernel.send(packet_message(packet_id, b"x" * 40))
    reads = []

    def callback(packet):
        # what the kernel has received when the packet is handled
        kernel.setblocking(False)
        try:
            reads.append((packet.id, sent(kernel)))
        except BlockingIOError:
            pass
        kernel.setblocking(True)
        packet.drop() if packet.id == 20 else packet.accept(1)
    queue.callback = callback
    queue.process()
    # the first packet's verdict was sent before the second packet was read
    assert reads == [(10, [(NFQNL_MSG_VERDICT, NF_ACCEPT, 9, 1, None)])]
    # the others' in one send, the run of accepts as one batch verdict
    assert sent(kernel) == [(NFQNL_MSG_VERDICT_BATCH, NF_ACCEPT, 13, 1, None),
                            (NFQNL_MSG_VERDICT, NF_DROP, 20, None, None)]
    assert queue.counters["daemon_verdict_batches"] == 1


def test_no_batch_over_a_held_packet(bed):
    kernel, queue, seen, held = bed
    held.add(4)
    for packet_id in (5, 6, 7):
        kernel.send(packet_message(packet_id, b"x" * 40))
    queue.callback = lambda p: p.accept()
    queue.process()
    assert sent(kernel) == [(NFQNL_MSG_VERDICT, NF_ACCEPT, 5, None, None)]
    assert sent(kernel) == [(NFQNL_MSG_VERDICT, NF_ACCEPT, 6, None, None),
                            (NFQNL_MSG_VERDICT, NF_ACCEPT, 7, None, None)]


def test_a_payload_too_long_for_a_verdict_drops_the_packet(bed):
    kernel, queue, seen, _ = bed
    kernel.send(packet_message(1, b"x" * 40))
    queue.process()
    seen[0].accept(None, bytes(MAX_COPY + 1))
    queue.flush()
    assert sent(kernel) == [(NFQNL_MSG_VERDICT, NF_DROP, 1, None, None)]
    assert queue.counters["daemon_verdict_too_long"] == 1


@pytest.mark.parametrize("garbage", [
    b"\x01\x02",                                                  # shorter than a header
    struct.pack("=IHHII", 200, NFQNL_MSG_PACKET, 0, 0, 0),        # longer than received
    struct.pack("=IHHII", 24, NFQNL_MSG_PACKET, 0, 0, 0) + bytes(8),   # no packet header
    struct.pack("=IHHII", 28, NFQNL_MSG_PACKET, 0, 0, 0) + bytes(4)
    + struct.pack("=HH", 400, 1) + bytes(4),                      # attribute past the end
])
def test_bad_netlink_input_is_counted_never_raised(bed, garbage):
    kernel, queue, seen, _ = bed
    kernel.send(garbage)
    kernel.send(packet_message(9, b"x" * 40))
    queue.process()
    assert [p.id for p in seen] == [9]
    assert queue.counters["daemon_netlink_bad"] == (1 if len(garbage) >= 16 else 0)


def test_error_answers_are_counted(bed):
    kernel, queue, _, _ = bed
    kernel.send(struct.pack("=IHHII", 36, 2, 0, 0, 0) + struct.pack("=i", -2) + bytes(16))
    queue.process()
    assert queue.counters["daemon_netlink_errors"] == 1
