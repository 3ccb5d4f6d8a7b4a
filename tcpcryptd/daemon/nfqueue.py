"""The daemon's own NFQUEUE binding (nfnetlink_queue over a raw netlink socket) and verdicts.

The queue is bound with ``NFQA_CFG_F_GSO`` and the largest copy range (:data:`MAX_COPY`):
the kernel hands over the local stack's GSO super-packets and GRO-merged inbound packets
whole (up to ~64 KB) instead of segmenting them first, and takes them back with a new
payload (it segments a mangled super-packet itself on the way out). One readable event
reads every waiting packet message (:meth:`PacketQueue.process`, up to :data:`RECV_BUDGET`
per round); the first packet's verdict leaves at once, all the verdicts the others produced
leave together in one ``sendmsg`` of several netlink messages; a run of consecutive packet
ids accepted unchanged with the same mark becomes one ``NFQNL_MSG_VERDICT_BATCH`` when no
held packet has a lower id (a batch verdict covers every queued id up to its own). A packet that waits for keys is kept (its payload is already a
copy) and given its verdict later, in any order; a verdict carries the packet's new nfmark
(``NFQA_MARK``) and, when rewritten, its new bytes (``NFQA_PAYLOAD``). IPv4 and IPv6 share
the queue.

With ``NFQA_CFG_F_GSO`` the kernel no longer completes a checksum the local stack left to
the NIC (``NFQA_SKB_CSUMNOTREADY``, :attr:`Packet.csum_not_ready`: the TCP checksum field
holds only the pseudo-header sum); the daemon tells the engine, which completes it where it
edits a small packet in place with RFC 1624 updates (the engine's ``checksum_partial``);
larger ones only ever leave unchanged (the kernel completes the checksum) or with a new
payload and a full checksum.

The protocol (``linux/netfilter/nfnetlink_queue.h``): every message is a netlink header, a
``nfgenmsg`` (family, version 0, queue number big-endian) and attributes whose values are
big-endian. Malformed input from the socket is counted (:attr:`PacketQueue.counters`) and
skipped, never raised; a packet that is longer than :data:`MAX_COPY` arrives cut and is
recognised by :func:`truncated`.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections import Counter
from collections.abc import Callable, Collection
from socket import htonl
from typing import Protocol

from tcpcryptd.daemon.errors import QueueError
from tcpcryptd.daemon.netlink import (
    BE32,
    ERRNO,
    HEADERS,
    NLA,
    NLA_TYPE_MASK,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    NLMSG_LEN_KIND,
    NLMSGHDR,
    PADDING,
    attribute,
    open_socket,
    request,
    set_buffer,
)
from tcpcryptd.engine.actions import Direction

log = logging.getLogger(__name__)

#: Netfilter hook numbers (linux/netfilter.h) of the two hooks our rules queue from.
NF_INET_LOCAL_IN = 1
NF_INET_LOCAL_OUT = 3
#: The kernel's largest copy range (``NFQNL_MAX_COPY_RANGE``: an attribute length is 16 bits,
#: less its 4-byte header); also the largest payload a verdict can carry.
MAX_COPY = 0xFFFF - 4
#: Packet messages read per :meth:`PacketQueue.process` round before the verdicts are sent.
RECV_BUDGET = 256
#: Verdict bytes (or iovec entries) that make :meth:`PacketQueue.flush` send early.
SEND_FLUSH_BYTES = 1 << 20
SEND_FLUSH_IOVECS = 900
#: Socket buffers (``SO_RCVBUFFORCE``/``SO_SNDBUFFORCE`` as root, else the plain options).
RCVBUF = 32 << 20
SNDBUF = 8 << 20

NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = NFNL_SUBSYS_QUEUE << 8 | 0
NFQNL_MSG_VERDICT = NFNL_SUBSYS_QUEUE << 8 | 1
NFQNL_MSG_CONFIG = NFNL_SUBSYS_QUEUE << 8 | 2
NFQNL_MSG_VERDICT_BATCH = NFNL_SUBSYS_QUEUE << 8 | 3
# attributes of a packet message / a verdict
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_MARK = 3
NFQA_PAYLOAD = 10
NFQA_SKB_INFO = 14
NFQA_SKB_CSUMNOTREADY = 1 << 0
NFQA_SKB_GSO = 1 << 1
# attributes of a config message
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_PACKET = 2
NFQA_CFG_F_GSO = 1 << 2
NF_DROP = 0
NF_ACCEPT = 1

_PACKET_HDR = struct.Struct(">IHB")
#: nlmsghdr | nfgenmsg | NFQA_VERDICT_HDR (verdict, id) -- every verdict message starts so
_VERDICT = struct.Struct("=IHHII BBH HHII")
#: ... then NFQA_MARK
_MARK_ATTR = struct.Struct("=HHI")
#: a verdict with NFQA_MARK and the head of NFQA_PAYLOAD (the payload follows)
_VERDICT_MARK_PAYLOAD = struct.Struct("=IHHII BBH HHII HHI HH")
_PAYLOAD_ATTR = struct.Struct("=HH")


class QueuedPacket(Protocol):
    """What the daemon uses of a queued packet (:class:`Packet`; test doubles the same)."""

    id: int
    hook: int
    mark: int
    payload: bytes          #: the packet's bytes, from the IP header on
    csum_not_ready: bool    #: the TCP checksum holds only the pseudo-header sum

    def retain(self) -> None: ...
    def accept(self, mark: int | None = None, payload: bytes | None = None) -> None: ...
    def drop(self) -> None: ...


def direction(packet: QueuedPacket) -> Direction:
    """Which way a queued packet travels, from the hook it was queued at."""
    return Direction.OUTBOUND if packet.hook == NF_INET_LOCAL_OUT else Direction.INBOUND


def truncated(data: bytes) -> bool:
    """True when the IP header announces more bytes than the queue copied to us.

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


class Packet:
    """One queued packet: its metadata, a copy of its bytes, and its (single) verdict."""

    __slots__ = ("id", "hook", "mark", "payload", "skb_info", "csum_not_ready", "_queue")

    def __init__(self, queue: PacketQueue, packet_id: int, hook: int, mark: int,
                 payload: bytes, skb_info: int) -> None:
        self.id = packet_id
        self.hook = hook
        self.mark = mark
        self.payload = payload
        self.skb_info = skb_info
        self.csum_not_ready = skb_info & NFQA_SKB_CSUMNOTREADY != 0
        #: the queue the verdict goes to; None once it was given
        self._queue: PacketQueue | None = queue

    @property
    def gso(self) -> bool:
        """The kernel handed the packet over unsegmented (a GSO/GRO super-packet)."""
        return self.skb_info & NFQA_SKB_GSO != 0

    def retain(self) -> None:
        """Nothing to do: the payload is already a copy of the receive buffer."""

    def accept(self, mark: int | None = None, payload: bytes | None = None) -> None:
        """Accept, with ``mark`` as its new nfmark and ``payload`` as its new bytes when
        given (None: unchanged)."""
        self._give(NF_ACCEPT, mark, payload)

    def drop(self) -> None:
        self._give(NF_DROP, None, None)

    def _give(self, verdict: int, mark: int | None, payload: bytes | None) -> None:
        queue = self._queue
        if queue is None:
            raise RuntimeError("Verdict already given for this packet")
        self._queue = None
        queue.verdict(self.id, verdict, mark, payload)


class PacketQueue:
    """One bound NFQUEUE: ``fileno()`` for the event loop, ``process()`` when readable,
    ``flush()`` after verdicts given outside ``process`` (timers, shutdown)."""

    def __init__(self, queue_num: int, max_len: int, callback: Callable[[Packet], None],
                 *, gso: bool = True, held: Callable[[], Collection[int]] = tuple,
                 counters: Counter[str] | None = None,
                 sock: socket.socket | None = None) -> None:
        """``held`` returns the ids of packets kept for a later verdict (no batch verdict may
        cover them); ``counters`` receives the ``daemon_*`` counts of the binding; ``sock``
        replaces the netlink socket, already bound and configured (tests)."""
        self.queue_num = queue_num
        self.callback = callback
        self.held = held
        self.counters: Counter[str] = Counter() if counters is None else counters
        self._res_id = socket.htons(queue_num)
        self._iov: list[bytes] = []
        self._iov_bytes = 0
        # a run of consecutive ids accepted unchanged with one mark, not yet in _iov
        self._run_first = self._run_last = -1
        self._run_mark: int | None = None
        self._buffer = bytearray(MAX_COPY + 4096)
        self._view = memoryview(self._buffer)
        if sock is not None:
            self._sock = sock
            sock.setblocking(False)
            return
        self._sock = open_socket(f"NFQUEUE {queue_num}")
        try:
            if not (set_buffer(self._sock, True, RCVBUF) and set_buffer(self._sock, False, SNDBUF)):
                log.info("NFQUEUE %d: socket buffer limited by net.core.[rw]mem_max "
                         "(raise it for bursts)", queue_num)
            self._configure(max_len, gso)
        except (OSError, QueueError) as exc:
            self._sock.close()
            if isinstance(exc, QueueError):
                raise
            raise QueueError(f"cannot bind NFQUEUE {queue_num}: {exc}") from exc
        self._sock.setblocking(False)

    # ---- setup

    def _config(self, attributes: bytes) -> None:
        """Send one config message and wait for the kernel's acknowledgment."""
        request(self._sock, NFQNL_MSG_CONFIG, self.queue_num, attributes,
                f"NFQUEUE {self.queue_num}",
                "does the kernel have nfnetlink_queue with GSO queueing?")

    def _configure(self, max_len: int, gso: bool) -> None:
        self._config(attribute(NFQA_CFG_CMD, struct.pack(">BxH", NFQNL_CFG_CMD_BIND, 0)))
        self._config(attribute(NFQA_CFG_PARAMS, struct.pack(">IB", MAX_COPY, NFQNL_COPY_PACKET)))
        self._config(attribute(NFQA_CFG_QUEUE_MAXLEN, BE32.pack(max_len)))
        if gso:
            self._config(attribute(NFQA_CFG_MASK, BE32.pack(NFQA_CFG_F_GSO))
                         + attribute(NFQA_CFG_FLAGS, BE32.pack(NFQA_CFG_F_GSO)))

    def fileno(self) -> int:
        return self._sock.fileno()

    # ---- receiving

    def process(self) -> None:
        """Handle the packets waiting on the socket (up to :data:`RECV_BUDGET`) and send
        their verdicts: the first packet's at once, before the socket is read again, the
        others' together at the end.

        A lone packet (latency-bound traffic: a SYN, a request) so does not wait for the
        read that finds the socket empty; and the kernel goes on with that packet inside
        the ``sendmsg`` (over a veth pair the peer's answer may be queued before it
        returns, then the next read finds it without another ``epoll_wait``).
        """
        recv_into, buffer, view = self._sock.recv_into, self._buffer, self._view
        messages = self._messages
        first = True
        for _ in range(RECV_BUDGET):
            try:
                size = recv_into(buffer)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:   # the socket buffer overflowed: packets lost
                    self.counters["daemon_queue_overrun"] += 1
                    continue
                raise
            messages(view, size)
            if first:
                first = False
                self.flush()
        self.flush()

    def _messages(self, view: memoryview, size: int) -> None:
        """Every netlink message of one datagram (the kernel sends one packet message per
        datagram); the attributes of a packet message are read in the same pass."""
        pos = 0
        unpack_attribute, unpack_u32 = NLA.unpack_from, BE32.unpack_from
        while size - pos >= NLMSGHDR.size:
            length, kind = NLMSG_LEN_KIND.unpack_from(view, pos)
            end = pos + length
            if length < NLMSGHDR.size or end > size:
                self.counters["daemon_netlink_bad"] += 1
                return
            if kind == NFQNL_MSG_PACKET:
                header = None
                mark = skb_info = 0
                payload = b""
                at = pos + HEADERS
                while end - at >= 4:
                    attr_length, attr_kind = unpack_attribute(view, at)
                    attr_end = at + attr_length
                    if attr_length < 4 or attr_end > end:
                        break
                    attr_kind &= NLA_TYPE_MASK
                    if attr_kind == NFQA_PAYLOAD:
                        payload = view[at + 4:attr_end].tobytes()
                    elif attr_kind == NFQA_PACKET_HDR:
                        if attr_length >= 11:
                            header = _PACKET_HDR.unpack_from(view, at + 4)
                    elif attr_kind == NFQA_SKB_INFO:
                        if attr_length >= 8:
                            skb_info = unpack_u32(view, at + 4)[0]
                    elif attr_kind == NFQA_MARK:
                        if attr_length >= 8:
                            mark = unpack_u32(view, at + 4)[0]
                    at = (attr_end + 3) & ~3
                if header is None:   # no packet id: nothing to give a verdict to
                    self.counters["daemon_netlink_bad"] += 1
                else:
                    self.callback(Packet(self, header[0], header[2], mark, payload, skb_info))
            elif kind == NLMSG_ERROR and length >= NLMSGHDR.size + 4:
                if ERRNO.unpack_from(view, pos + NLMSGHDR.size)[0]:
                    self.counters["daemon_netlink_errors"] += 1   # e.g. a verdict's id unknown
            pos = (end + 3) & ~3

    # ---- verdicts

    def verdict(self, packet_id: int, verdict: int, mark: int | None,
                payload: bytes | None) -> None:
        """Queue one verdict message for the next :meth:`flush`.

        A payload too long for a verdict turns the verdict into a drop (counted): the packet
        must not go on with its old bytes.
        """
        if payload is None:
            if verdict == NF_ACCEPT:
                if self._run_first >= 0 and mark == self._run_mark and \
                        packet_id == (self._run_last + 1) & 0xFFFFFFFF:
                    self._run_last = packet_id
                    return
                self._end_run()
                self._run_first = self._run_last = packet_id
                self._run_mark = mark
                return
        elif len(payload) > MAX_COPY:
            self.counters["daemon_verdict_too_long"] += 1
            verdict, payload = NF_DROP, None
        if self._run_first >= 0:
            self._end_run()
        self._append(NFQNL_MSG_VERDICT, packet_id, verdict, mark, payload)

    def _append(self, kind: int, packet_id: int, verdict: int, mark: int | None,
                payload: bytes | None) -> None:
        iov = self._iov
        pad = b"" if payload is None else PADDING[len(payload) & 3]
        if payload is not None and mark is not None:
            # the common rewritten packet: the headers and both attribute heads in one pack
            length = _VERDICT_MARK_PAYLOAD.size + len(payload) + len(pad)
            iov.append(_VERDICT_MARK_PAYLOAD.pack(
                length, kind, NLM_F_REQUEST, 0, 0, socket.AF_UNSPEC, 0, self._res_id, 12,
                NFQA_VERDICT_HDR, htonl(verdict), htonl(packet_id), 8, NFQA_MARK, htonl(mark),
                4 + len(payload), NFQA_PAYLOAD))
        else:
            length = _VERDICT.size + (_MARK_ATTR.size if mark is not None else 0)
            if payload is not None:
                length += 4 + len(payload) + len(pad)
            iov.append(_VERDICT.pack(length, kind, NLM_F_REQUEST, 0, 0, socket.AF_UNSPEC, 0,
                                     self._res_id, 12, NFQA_VERDICT_HDR, htonl(verdict),
                                     htonl(packet_id)))
            if mark is not None:
                iov.append(_MARK_ATTR.pack(8, NFQA_MARK, htonl(mark)))
            if payload is not None:
                iov.append(_PAYLOAD_ATTR.pack(4 + len(payload), NFQA_PAYLOAD))
        if payload is not None:
            iov.append(payload)
            if pad:
                iov.append(pad)
        self._iov_bytes += length
        if self._iov_bytes >= SEND_FLUSH_BYTES or len(iov) >= SEND_FLUSH_IOVECS:
            self._send()

    def _end_run(self) -> None:
        first, last = self._run_first, self._run_last
        if first < 0:
            return
        self._run_first = self._run_last = -1
        mark = self._run_mark
        if first != last:
            held = self.held()
            # a batch verdict covers every queued id up to ``last``: only when none is held
            if not held or not any(_id_before(h, last) for h in held):
                self.counters["daemon_verdict_batches"] += 1
                self._append(NFQNL_MSG_VERDICT_BATCH, last, NF_ACCEPT, mark, None)
                return
        for packet_id in range(first, last + 1 if last >= first else last + 0x1_0000_0001):
            self._append(NFQNL_MSG_VERDICT, packet_id & 0xFFFFFFFF, NF_ACCEPT, mark, None)

    def flush(self) -> None:
        """Send every verdict given so far, in one ``sendmsg`` when they fit."""
        self._end_run()
        if self._iov:
            self._send()

    def _send(self) -> None:
        iov, self._iov, self._iov_bytes = self._iov, [], 0
        try:
            self._sock.sendmsg(iov)
        except OSError as exc:   # the kernel drops what gets no verdict when we unbind
            self.counters["daemon_verdict_send_errors"] += 1
            log.debug("sending %d verdict parts failed: %s", len(iov), exc)

    def close(self) -> None:
        """Unbind; the kernel drops packets still waiting for a verdict."""
        try:
            self.flush()
            self._sock.setblocking(True)
            self._config(attribute(NFQA_CFG_CMD, struct.pack(">BxH", NFQNL_CFG_CMD_UNBIND, 0)))
        except (OSError, QueueError) as exc:
            log.debug("unbinding NFQUEUE %d: %s", self.queue_num, exc)
        self._sock.close()


def _id_before(a: int, b: int) -> bool:
    """``a`` precedes ``b`` in the kernel's wrapping 32-bit packet id order."""
    return a != b and ((b - a) & 0xFFFFFFFF) < 0x80000000


class Verdicts:
    """Gives verdicts and keeps the held packets (packet id -> packet) until released.

    The marks a verdict adds to a packet's nfmark tell the nftables table
    (:mod:`tcpcryptd.daemon.nftables`) what the daemon decided: ``seen_mark`` on every
    packet accepted for the engine's flows (the guard resets or drops packets of encrypted
    connections that lack it); ``encrypted_mark`` on every packet of a connection that
    started its key exchange (recorded in its connmark, or by the 4-tuple of a connection
    conntrack does not track); ``plain_mark`` on packets of
    connections the daemon leaves plain (the kernel stops queueing them).
    """

    def __init__(self, seen_mark: int, encrypted_mark: int, plain_mark: int) -> None:
        self.seen_mark = seen_mark
        self.encrypted_mark = encrypted_mark
        self.plain_mark = plain_mark
        self.held: dict[int, QueuedPacket] = {}

    def accept(self, packet: QueuedPacket, data: bytes | None = None,
               encrypted: bool = False) -> None:
        packet.accept(packet.mark | self.seen_mark | (self.encrypted_mark if encrypted else 0),
                      data)

    def accept_plain(self, packet: QueuedPacket, data: bytes | None = None) -> None:
        """Accept a packet of a plain connection: not seen, and the connection offloaded."""
        packet.accept(packet.mark | self.plain_mark, data)

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
        if accept:     # only a connection in its key exchange holds packets
            self.accept(packet, data, encrypted=True)
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
