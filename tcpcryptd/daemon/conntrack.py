"""How many connections conntrack still records as encrypted (``ct mark & marks.encrypted``).

The nftables guard (:mod:`tcpcryptd.daemon.nftables`) must outlive the daemon while such a
connection exists: the local stack could otherwise retransmit its data in plaintext. This,
with the table's own record of the encrypted connections conntrack does not track
(:func:`tcpcryptd.daemon.nftables.encrypted_elements`), decides whether stopping or
``tcpcryptd disable`` may remove it. Read over netlink (pyroute2), IPv4 and IPv6.
"""

from __future__ import annotations

import socket

from tcpcryptd.daemon.errors import FirewallError


def encrypted_connections(mark: int, ipv6: bool = True) -> int:
    """Conntrack entries whose connmark has every bit of ``mark``; raises FirewallError."""
    from pyroute2 import Conntrack  # netlink: imported only when needed

    count = 0
    families = (socket.AF_INET, socket.AF_INET6) if ipv6 else (socket.AF_INET,)
    try:
        for family in families:
            with Conntrack(nfgen_family=family) as table:
                count += sum(1 for _ in table.dump_entries(mark=mark, mark_mask=mark))
    except Exception as exc:  # noqa: BLE001 -- netlink/pyroute2 errors of every kind
        raise FirewallError(f"cannot read the conntrack table: {exc}") from exc
    return count
