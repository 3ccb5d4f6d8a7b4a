"""The NetfilterQueue binding and verdicts, including deferred ones for held packets.

NetfilterQueue 1.1.0 calls our callback from ``run(block=False)`` for every queued packet
(IPv4 and IPv6 share one queue number); a packet that must wait for keys is kept with
``retain()`` (copies its payload) and given ``accept()``/``drop()`` later, in any order.
``set_payload`` replaces the packet's bytes and ``set_mark`` its nfmark for the verdict.
At most 4016 bytes of a packet are copied to userspace (NetfilterQueue's 4096-byte buffer
less metadata), so links with an MTU above that (jumbo frames) are not supported;
:func:`truncated` detects such packets.
"""

from __future__ import annotations

import logging
import struct
import warnings
from collections.abc import Callable
from typing import Protocol

from tcpcryptd.daemon.errors import QueueError
from tcpcryptd.engine.actions import Direction

log = logging.getLogger(__name__)

#: Netfilter hook numbers (linux/netfilter.h) of the two hooks our rules queue from.
NF_INET_PRE_ROUTING = 0
NF_INET_LOCAL_OUT = 3
#: Largest packet NetfilterQueue copies whole (4096-byte buffer less 80 bytes of metadata).
MAX_COPY = 4016


class QueuedPacket(Protocol):
    """What the daemon uses of ``netfilterqueue.Packet`` (test doubles implement the same)."""

    id: int
    hook: int
    mark: int

    def get_payload(self) -> bytes: ...
    def set_payload(self, payload: bytes) -> None: ...
    def set_mark(self, mark: int) -> None: ...
    def retain(self) -> None: ...
    def accept(self) -> None: ...
    def drop(self) -> None: ...


def direction(packet: QueuedPacket) -> Direction:
    """Which way a queued packet travels, from the hook it was queued at."""
    return Direction.INBOUND if packet.hook == NF_INET_PRE_ROUTING else Direction.OUTBOUND


def truncated(data: bytes) -> bool:
    """True when the IP header announces more bytes than NetfilterQueue copied to us.

    Only a packet of at least :data:`MAX_COPY` bytes can have been cut, so shorter ones cost
    one comparison; garbage is left to the engine's parser.
    """
    if len(data) < MAX_COPY:
        return False
    if data[0] >> 4 == 4:
        return struct.unpack_from("!H", data, 2)[0] > len(data)
    if data[0] >> 4 == 6:
        return 40 + struct.unpack_from("!H", data, 4)[0] > len(data)
    return False


class Verdicts:
    """Gives verdicts and keeps the held packets (packet id -> packet) until released.

    The marks a verdict adds to a packet's nfmark tell the nftables table
    (:mod:`tcpcryptd.daemon.nftables`) what the daemon decided: ``seen_mark`` on every
    packet accepted for the engine's flows (the guard resets or drops packets of encrypted
    connections that lack it); ``encrypted_mark`` on the packet with which a connection
    started its key exchange (recorded in its connmark); ``plain_mark`` on packets of
    connections the daemon leaves plain (the kernel stops queueing them).
    """

    def __init__(self, seen_mark: int, encrypted_mark: int, plain_mark: int) -> None:
        self.seen_mark = seen_mark
        self.encrypted_mark = encrypted_mark
        self.plain_mark = plain_mark
        self.held: dict[int, QueuedPacket] = {}

    def accept(self, packet: QueuedPacket, data: bytes | None = None,
               encrypted: bool = False) -> None:
        if data is not None:
            packet.set_payload(data)
        packet.set_mark(packet.mark | self.seen_mark | (self.encrypted_mark if encrypted else 0))
        packet.accept()

    def accept_plain(self, packet: QueuedPacket, data: bytes | None = None) -> None:
        """Accept a packet of a plain connection: not seen, and the connection offloaded."""
        if data is not None:
            packet.set_payload(data)
        packet.set_mark(packet.mark | self.plain_mark)
        packet.accept()

    def accept_unseen(self, packet: QueuedPacket) -> None:
        """Accept unchanged and unmarked, as if the queue had been bypassed."""
        packet.accept()

    def drop(self, packet: QueuedPacket) -> None:
        packet.drop()

    def hold(self, packet: QueuedPacket) -> None:
        """Deferred verdict; must be called inside the queue callback (payload copy)."""
        packet.retain()
        self.held[packet.id] = packet

    def release(self, packet_id: int, data: bytes | None, accept: bool) -> bool:
        """Verdict for a held packet; False when no such packet is held."""
        packet = self.held.pop(packet_id, None)
        if packet is None:
            return False
        if accept:
            self.accept(packet, data)
        else:
            packet.drop()
        return True

    def drop_all_held(self) -> int:
        """Drop every held packet (shutdown: never let held plaintext out unencrypted)."""
        count = len(self.held)
        for packet in self.held.values():
            packet.drop()
        self.held.clear()
        return count


class PacketQueue:
    """One bound NFQUEUE: ``fileno()`` for the event loop, ``process()`` when readable."""

    def __init__(self, queue_num: int, max_len: int,
                 callback: Callable[[QueuedPacket], None]) -> None:
        from netfilterqueue import NetfilterQueue  # C extension: imported only when binding

        try:
            self._nfq = NetfilterQueue()
        except OSError as exc:
            raise QueueError(f"cannot open NFQUEUE: {exc} (needs CAP_NET_ADMIN)") from exc
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                self._nfq.bind(queue_num, callback, max_len=max_len)
            except OSError as exc:
                raise QueueError(
                    f"cannot bind NFQUEUE {queue_num}: {exc} (is another program bound to "
                    f"queue {queue_num}? does the kernel have nfnetlink_queue?)") from exc
        for warning in caught:
            log.info("NFQUEUE %d: %s (raise net.core.rmem_max for bursts)", queue_num,
                     warning.message)
        self.queue_num = queue_num

    def fileno(self) -> int:
        return self._nfq.get_fd()

    def process(self) -> None:
        """Handle every packet waiting on the queue socket, without blocking."""
        self._nfq.run(block=False)

    def close(self) -> None:
        """Unbind; the kernel drops packets still waiting for a verdict."""
        self._nfq.unbind()
