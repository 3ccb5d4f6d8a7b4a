"""Who owns a local TCP socket: one exact sock_diag lookup by 4-tuple (Linux ``inet_diag``).

The ``session`` control request (docs/daemon.md, "Control protocol") lets a user query only
connections whose socket that user owns; the owner is the uid the kernel records for the
socket (the creating process's, or the listener's for an accepted one), which
``ss -e`` shows as ``uid:N``. The lookup is one ``SOCK_DIAG_BY_FAMILY`` request without
``NLM_F_DUMP`` and with ``INET_DIAG_NOCOOKIE``: the kernel finds the socket in its hash
tables by the exact 4-tuple (``inet_diag_find_one_icsk``) instead of dumping every socket,
so its cost does not grow with the number of connections. It runs in the daemon's network
namespace, the one whose connections the daemon sees.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

from tcpcryptd.daemon.netlink import ERRNO, NLM_F_REQUEST, NLMSG_ERROR, NLMSGHDR

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
#: every TCP state (TCPF_ALL)
_ALL_STATES = 0xFFF

#: inet_diag_req_v2: family, protocol, ext, pad, states; then inet_diag_sockid:
#: sport, dport (network order), src[16], dst[16], interface, cookie[2]
_REQUEST = struct.Struct("=BBBxI")
_PORTS = struct.Struct("!HH")
_SOCKID_TAIL = struct.Struct("=III")
#: inet_diag_msg: family, state, timer, retrans, sockid (48 bytes), expires, rqueue,
#: wqueue, uid, inode
_MSG = struct.Struct("=BBBB48sIIIII")


class DiagError(OSError):
    """The kernel refused the lookup (not ENOENT: that means no such socket)."""


def _address(text: str) -> tuple[int, bytes]:
    address = ipaddress.ip_address(text)
    if address.version == 4:
        return socket.AF_INET, address.packed + bytes(12)
    return socket.AF_INET6, address.packed


def socket_owner(local: tuple[str, int], remote: tuple[str, int],
                 timeout: float = 1.0) -> int | None:
    """The uid owning the TCP socket ``local`` <-> ``remote`` here, or None if there is none.

    Addresses are text (canonical or not) of one IP version; raises :class:`DiagError` when
    the kernel refuses the request (no sock_diag, permission) and ValueError for mixed
    versions.
    """
    family, src = _address(local[0])
    remote_family, dst = _address(remote[0])
    if family != remote_family:
        raise ValueError("local and remote addresses must be of one IP version")
    body = (_REQUEST.pack(family, socket.IPPROTO_TCP, 0, _ALL_STATES)
            + _PORTS.pack(local[1], remote[1]) + src + dst
            + _SOCKID_TAIL.pack(0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE))
    sequence = 1
    message = NLMSGHDR.pack(NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST,
                             sequence, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as netlink:
        netlink.settimeout(timeout)
        netlink.sendto(message, (0, 0))
        while True:
            data = netlink.recv(65536)
            offset = 0
            while offset + NLMSGHDR.size <= len(data):
                length, kind, _flags, seq, _pid = NLMSGHDR.unpack_from(data, offset)
                if length < NLMSGHDR.size:
                    raise DiagError(errno.EBADMSG, "malformed sock_diag answer")
                payload = offset + NLMSGHDR.size
                offset += (length + 3) & ~3
                if seq != sequence:
                    continue
                if kind == NLMSG_ERROR:
                    (code,) = ERRNO.unpack_from(data, payload)
                    if -code == errno.ENOENT:
                        return None
                    raise DiagError(-code, f"sock_diag lookup failed: {os.strerror(-code)}")
                if kind == SOCK_DIAG_BY_FAMILY:
                    return _MSG.unpack_from(data, payload)[8]
