"""Layer 2, the packet codec: IPv4/IPv6 + TCP on ``bytes`` with ``struct`` (the hot path).

:mod:`~tcpcryptd.packet.checksum` (RFC 1071/1624 sums), :mod:`~tcpcryptd.packet.tcp`
(:class:`~tcpcryptd.packet.tcp.TCPPacket`, :func:`~tcpcryptd.packet.tcp.build`) and
:mod:`~tcpcryptd.packet.options` (TCP option parsing and editing). No scapy here.
"""
