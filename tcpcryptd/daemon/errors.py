"""Errors of the daemon layer: each carries one readable message for the operator.

The protocol core has its own tree (:mod:`tcpcryptd.core.errors`); these cover the I/O side:
configuration, firewall commands, the NFQUEUE binding and the control socket.
"""


class DaemonError(Exception):
    """Base class of every error the daemon layer reports to the operator."""


class ConfigError(DaemonError):
    """The configuration file is unreadable or invalid (the message names the key)."""


class FirewallError(DaemonError):
    """An iptables/ip6tables command failed or the tools are missing."""


class QueueError(DaemonError):
    """The NFQUEUE binding failed (no CAP_NET_ADMIN, no NFQUEUE in the kernel, queue taken)."""


class ControlError(DaemonError):
    """The control socket is absent, in use, or answered with an error."""


class NoDaemonError(ControlError):
    """No daemon is there: the control socket is absent or refuses connections."""


class DaemonTimeoutError(ControlError):
    """A daemon accepted the control connection but did not answer in time (busy)."""
