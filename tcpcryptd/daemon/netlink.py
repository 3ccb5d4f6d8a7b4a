"""Netlink as the daemon speaks it: the headers every netlink family shares
(``linux/netlink.h``; the sock_diag lookup uses them too) and netfilter's, as the queue and
log bindings both speak it (``linux/netfilter/nfnetlink.h``).

Every netfilter message is a netlink header, a ``nfgenmsg`` (family, version 0, resource id -- the
queue or group number -- big-endian) and attributes (length, kind, value padded to 4
bytes). A binding opens one raw ``NETLINK_NETFILTER`` socket (:func:`open_socket`) and
configures its queue or group with requests the kernel acknowledges (:func:`request`).
"""

from __future__ import annotations

import errno
import socket
import struct

from tcpcryptd.daemon.errors import QueueError

NETLINK_NETFILTER = 12
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
NLM_F_ACK = 4
#: the attribute kind without its flag bits (NLA_F_NESTED, NLA_F_NET_BYTEORDER)
NLA_TYPE_MASK = 0x3FFF

NLMSGHDR = struct.Struct("=IHHII")
NLMSG_LEN_KIND = struct.Struct("=IH")
NFGEN = struct.Struct("=BBH")
#: netlink header and nfgenmsg: where a message's attributes start
HEADERS = NLMSGHDR.size + NFGEN.size
NLA = struct.Struct("=HH")
BE32 = struct.Struct(">I")
ERRNO = struct.Struct("=i")
PADDING = (b"", b"\0\0\0", b"\0\0", b"\0")


def attribute(kind: int, value: bytes) -> bytes:
    """One attribute, padded."""
    return NLA.pack(4 + len(value), kind) + value + PADDING[len(value) & 3]


def message(kind: int, flags: int, res_id: int, attributes: bytes) -> bytes:
    """A message for queue or group ``res_id`` (host order)."""
    return (NLMSGHDR.pack(HEADERS + len(attributes), kind, flags, 0, 0)
            + NFGEN.pack(socket.AF_UNSPEC, 0, socket.htons(res_id)) + attributes)


def open_socket(what: str) -> socket.socket:
    """A raw netfilter netlink socket bound to the kernel (``what`` names it in errors)."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    except OSError as exc:
        raise QueueError(f"cannot open {what}: {exc} (needs CAP_NET_ADMIN)") from exc
    try:
        sock.bind((0, 0))
    except OSError as exc:
        sock.close()
        raise QueueError(f"cannot bind {what}: {exc}") from exc
    return sock


def set_buffer(sock: socket.socket, receive: bool, size: int) -> bool:
    """Set the receive or send buffer to ``size``: beyond ``net.core.[rw]mem_max`` as root
    (``SO_*BUFFORCE``), else as far as that limit allows (then False)."""
    force, plain = ((getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF) if receive
                    else (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF))
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
        return True
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)
        return False


def request(sock: socket.socket, kind: int, res_id: int, attributes: bytes,
            what: str, hint: str) -> None:
    """Send a configuration request and wait for the kernel's acknowledgment (a blocking
    socket); a refusal is a QueueError naming ``what``, with ``hint`` for anything but
    EBUSY (another program holds the queue or group)."""
    sock.send(message(kind, NLM_F_REQUEST | NLM_F_ACK, res_id, attributes))
    while True:
        reply = sock.recv(8192)
        if len(reply) >= NLMSGHDR.size + 4 and NLMSGHDR.unpack_from(reply)[1] == NLMSG_ERROR:
            break
    error = -ERRNO.unpack_from(reply, NLMSGHDR.size)[0]
    if error:
        reason = "is another program bound to it?" if error == errno.EBUSY else hint
        raise QueueError(f"cannot bind {what}: {errno.errorcode.get(error, error)} ({reason})")
