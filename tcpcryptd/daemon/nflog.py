"""The daemon's nflog binding: which connections the kernel made plain without the queue.

When the peer answers our ENO SYN with a SYN-ACK without ENO, the kernel decides the
connection plain by itself (RFC 8547 §4.6; :mod:`tcpcryptd.daemon.nftables`, the tentative
state confirmed by the local stack's first ACK), so the daemon never sees that SYN-ACK. The
confirming rule logs the ACK's headers to an nflog group (worker ``k``'s is
``queue.log_group + k``); this binding reads them and hands the connection's 4-tuple to a
callback, which forgets the engine's syn-sent flow. Nothing waits for it: until the message arrives the
flow only takes memory, and a lost message (the socket buffer overflowed, counted as
``daemon_nflog_lost``) leaves the flow to the engine's handshake timeout.

The kernel gathers the messages (the rule's ``queue-threshold``, or :data:`FLUSH_TIMEOUT`)
and sends several per datagram. The protocol (``linux/netfilter/nfnetlink_log.h``): a
netlink header, a ``nfgenmsg`` (family, version 0, group big-endian) and attributes;
``NFULA_PAYLOAD`` holds the packet from its IP header, cut to the rule's ``snaplen``.
Malformed input is counted (``daemon_nflog_bad``) and skipped, never raised.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections import Counter
from collections.abc import Callable

from tcpcryptd.daemon.errors import QueueError
from tcpcryptd.daemon.netlink import (
    BE32,
    HEADERS,
    NLA,
    NLA_TYPE_MASK,
    NLMSG_LEN_KIND,
    NLMSGHDR,
    attribute,
    open_socket,
    request,
    set_buffer,
)
from tcpcryptd.packet.tcp import FlowKey

log = logging.getLogger(__name__)

NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = NFNL_SUBSYS_ULOG << 8 | 0
NFULNL_MSG_CONFIG = NFNL_SUBSYS_ULOG << 8 | 1
NFULA_PAYLOAD = 9
NFULA_CFG_CMD = 1
NFULA_CFG_TIMEOUT = 4
NFULNL_CFG_CMD_BIND = 1
NFULNL_CFG_CMD_UNBIND = 2
_PORTS = struct.Struct(">HH")
#: Hundredths of a second the kernel holds messages before it sends a batch short of the
#: rule's threshold.
FLUSH_TIMEOUT = 10
#: Datagrams read per :meth:`PlainLog.process` round.
RECV_BUDGET = 64
#: Receive buffer: a burst of confirmations waits here while the daemon serves the queue.
RCVBUF = 4 << 20


def logged_key(payload: memoryview) -> FlowKey | None:
    """The flow key (version, local address, local port, remote address, remote port) of a
    logged outbound TCP packet (IP header and ports), None when it is not one."""
    if len(payload) < 24:
        return None
    first = payload[0]
    if first >> 4 == 4:
        start = (first & 0x0F) * 4
        if payload[9] != 6 or start < 20 or len(payload) < start + 4:
            return None
        src, dst = payload[12:16], payload[16:20]
    elif first >> 4 == 6:
        start = 40
        if payload[6] != 6 or len(payload) < 44:
            return None     # extension headers: the handshake timeout forgets the flow
        src, dst = payload[8:24], payload[24:40]
    else:
        return None
    sport, dport = _PORTS.unpack_from(payload, start)
    return (first >> 4, src.tobytes(), sport, dst.tobytes(), dport)


class PlainLog:
    """One nflog group, bound on a raw netlink socket; ``callback`` gets each logged key."""

    def __init__(self, group: int, callback: Callable[[FlowKey], None],
                 counters: Counter[str] | None = None,
                 sock: socket.socket | None = None) -> None:
        """``counters`` receives ``daemon_nflog_*``; ``sock`` replaces the netlink socket,
        already bound (tests)."""
        self.group = group
        self.callback = callback
        self.counters: Counter[str] = Counter() if counters is None else counters
        self._buffer = bytearray(1 << 16)
        self._view = memoryview(self._buffer)
        if sock is not None:
            self._sock = sock
            sock.setblocking(False)
            return
        self._sock = open_socket(f"nflog group {group}")
        try:
            set_buffer(self._sock, True, RCVBUF)
            self._config(attribute(NFULA_CFG_CMD, bytes((NFULNL_CFG_CMD_BIND,))))
            self._config(attribute(NFULA_CFG_TIMEOUT, BE32.pack(FLUSH_TIMEOUT)))
        except (OSError, QueueError) as exc:
            self._sock.close()
            if isinstance(exc, QueueError):
                raise
            raise QueueError(f"cannot bind nflog group {group}: {exc}") from exc
        self._sock.setblocking(False)

    def _config(self, attributes: bytes) -> None:
        """Send one config message and wait for the kernel's acknowledgment."""
        request(self._sock, NFULNL_MSG_CONFIG, self.group, attributes,
                f"nflog group {self.group}", "does the kernel have nfnetlink_log?")

    def fileno(self) -> int:
        return self._sock.fileno()

    def process(self) -> None:
        """Hand every logged key waiting on the socket (up to :data:`RECV_BUDGET` datagrams)
        to the callback."""
        recv_into, view = self._sock.recv_into, self._view
        for _ in range(RECV_BUDGET):
            try:
                size = recv_into(self._buffer)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:   # messages lost: the flows time out instead
                    self.counters["daemon_nflog_lost"] += 1
                    continue
                raise
            self._messages(view, size)

    def _messages(self, view: memoryview, size: int) -> None:
        pos = 0
        while size - pos >= NLMSGHDR.size:
            length, kind = NLMSG_LEN_KIND.unpack_from(view, pos)
            end = pos + length
            if length < NLMSGHDR.size or end > size:
                self.counters["daemon_nflog_bad"] += 1
                return
            if kind == NFULNL_MSG_PACKET:
                key = None
                at = pos + HEADERS
                while end - at >= 4:
                    attr_length, attr_kind = NLA.unpack_from(view, at)
                    if attr_length < 4 or at + attr_length > end:
                        break
                    if attr_kind & NLA_TYPE_MASK == NFULA_PAYLOAD:
                        key = logged_key(view[at + 4:at + attr_length])
                        break
                    at = (at + attr_length + 3) & ~3
                if key is None:
                    self.counters["daemon_nflog_bad"] += 1
                else:
                    self.callback(key)
            pos = (end + 3) & ~3

    def close(self) -> None:
        """Unbind the group and close the socket."""
        try:
            self._sock.setblocking(True)
            self._config(attribute(NFULA_CFG_CMD, bytes((NFULNL_CFG_CMD_UNBIND,))))
        except (OSError, QueueError) as exc:
            log.debug("unbinding nflog group %d: %s", self.group, exc)
        self._sock.close()
