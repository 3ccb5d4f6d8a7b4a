"""tcpcryptd: a transparent TCP-ENO (RFC 8547) + tcpcrypt (RFC 8548) daemon.

Layers (dependencies point down only), see docs/ARCHITECTURE.md:

1. :mod:`tcpcryptd.core`    -- protocol core, sans-IO (ENO, tcpcrypt keys, Init messages, frames)
2. :mod:`tcpcryptd.packet`  -- IPv4/IPv6 + TCP codec, checksums, option editing (hot path)
3. :mod:`tcpcryptd.engine`  -- per-flow state machine, sans-IO (time passed in)
4. :mod:`tcpcryptd.daemon`  -- NFQUEUE, raw socket, firewall rules, control socket
5. :mod:`tcpcryptd.cli`     -- the ``tcpcryptd`` command
"""

__version__ = "0.1.0"
