"""Injection of packets the engine made, through raw sockets marked with SO_MARK.

One socket per family sends whole IP packets (header included: ``IP_HDRINCL`` for IPv4;
an IPv6 ``IPPROTO_RAW`` socket implies it). The destination decides where a packet goes:

* ``Transmit(OUTBOUND)``: destination is the peer -> routed to the wire like any local packet;
* ``Transmit(INBOUND)``: destination is a local address -> the kernel loops it back through
  ``lo`` into the local TCP stack (measured in namespaces, IPv4 and IPv6, with strict
  ``rp_filter``: such packets keep their output route and are not martians).

The mark (``marks.injected``) makes the firewall rules skip both kinds, and untracks the
ones toward the local stack (see :mod:`tcpcryptd.daemon.firewall`). SO_MARK needs
CAP_NET_ADMIN; raw sockets need CAP_NET_RAW.
"""

from __future__ import annotations

import socket

from tcpcryptd.daemon.errors import DaemonError


class InjectError(DaemonError):
    """A packet could not be injected (malformed header or the kernel refused it)."""


def destination(packet: bytes) -> tuple[int, str]:
    """(IP version, destination address) of a whole IP packet."""
    if len(packet) >= 20 and packet[0] >> 4 == 4:
        return 4, socket.inet_ntop(socket.AF_INET, packet[16:20])
    if len(packet) >= 40 and packet[0] >> 4 == 6:
        return 6, socket.inet_ntop(socket.AF_INET6, packet[24:40])
    raise InjectError(f"not an IPv4/IPv6 packet ({len(packet)} bytes)")


class RawSender:
    """Sends engine-made IPv4/IPv6 packets with a fixed SO_MARK."""

    def __init__(self, mark: int, ipv6: bool = True) -> None:
        self._sockets: dict[int, socket.socket] = {}
        try:
            v4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            self._sockets[4] = v4
            v4.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
            if ipv6:
                self._sockets[6] = socket.socket(socket.AF_INET6, socket.SOCK_RAW,
                                                 socket.IPPROTO_RAW)
            for sock in self._sockets.values():
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
                sock.setblocking(False)
        except OSError as exc:
            self.close()
            raise InjectError(f"cannot open a raw socket with SO_MARK (needs CAP_NET_RAW and "
                              f"CAP_NET_ADMIN): {exc.strerror or exc}") from exc

    def send(self, packet: bytes) -> None:
        """Send one whole IP packet; :class:`InjectError` if it is malformed or refused."""
        version, address = destination(packet)
        sock = self._sockets.get(version)
        if sock is None:
            raise InjectError("IPv6 is disabled in the configuration")
        target = (address, 0) if version == 4 else (address, 0, 0, 0)
        try:
            sock.sendto(packet, target)
        except OSError as exc:
            raise InjectError(f"sendto {address}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
