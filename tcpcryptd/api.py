"""The TCPINC API for applications: the tcpcrypt session of a connected socket.

With a kernel implementation an application would read per-connection TCP-ENO and tcpcrypt
state with ``getsockopt`` (draft-ietf-tcpinc-api §2.1, §3.1). tcpcryptd encrypts in a user
space daemon, so this module asks the daemon instead, over its control socket
(docs/daemon.md, "Control protocol", request ``session``); any language can send the same
one-line JSON request. Every local user may ask, but only about connections whose socket
that user owns (root: any).

Example::

    from tcpcryptd import api

    sock = socket.create_connection(("10.0.0.2", 7000))
    info = api.wait_session(sock)          # keys are agreed about one round trip after
    if not info.encrypted:                 # connect() returns
        raise SystemExit("not encrypted")
    proof = hmac.new(secret, info.self_name, "sha256").digest()

Fields of :class:`Session` and the options of the draft they stand for:

=====================  ==============================================================
``session_id``         TCP_ENO_SESSID: the tcpcrypt session ID (RFC 8548 §3.4), bytes
``negotiated_tep``     TCP_ENO_NEGTEP: the negotiated TEP byte as host B sent it (its
                       high bit is the v bit; RFC 8547 §4.5); ``tep`` its name
``role``               TCP_ENO_ROLE as ``"A"`` / ``"B"`` (RFC 8547 §4.5); ``eno_role``
                       as the draft's 0 / 1
``self_name``          TCP_ENO_SELF_NAME: the role byte, then the session ID
``peer_name``          TCP_ENO_PEER_NAME: the same with the role byte negated
``aead_id``            TCP_CRYPT_CONF: the AEAD algorithm (RFC 8548 §7, Table 5);
                       ``aead`` its name
``encrypted``          the connection is protected by its tcpcrypt session
``resumed``            the session was resumed (RFC 8548 §3.5): no key exchange, the keys
                       came from the previous session's cached secret
``state``              the daemon's state of the connection (``tcpcryptd status``), or
                       ``plain`` for one the daemon left unencrypted
=====================  ==============================================================

As in the draft, the session fields exist only once the connection is encrypting: before
(``state`` one of :data:`HANDSHAKE_STATES`) and on a plain connection they are None;
:func:`wait_session` waits for the handshake to end.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import Any

from tcpcryptd.daemon.config import DEFAULT_CONTROL_PATH
from tcpcryptd.daemon.control import request
from tcpcryptd.daemon.errors import ControlError

__all__ = ["DEFAULT_CONTROL_PATH", "HANDSHAKE_STATES", "Session", "TcpincError", "session", "session_for",
           "wait_session"]

#: States in which the outcome (encrypted or plain) is not known yet.
HANDSHAKE_STATES = frozenset({"syn-sent", "syn-received", "negotiated", "keying"})
#: Seconds between two queries of :func:`wait_session`.
POLL_INTERVAL = 0.02


class TcpincError(ControlError):
    """The daemon could not answer: none running, permission denied, no such connection."""


@dataclass(frozen=True)
class Session:
    """The tcpcrypt state of one connection (field meanings in the module doc)."""

    local: tuple[str, int]
    remote: tuple[str, int]
    state: str
    encrypted: bool
    resumed: bool
    session_id: bytes | None
    negotiated_tep: int | None
    tep: str | None
    aead_id: int | None
    aead: str | None
    role: str | None

    @property
    def eno_role(self) -> int | None:
        """TCP_ENO_ROLE: 0 on host A, 1 on host B (None unless encrypted)."""
        return None if self.role is None else int(self.role == "B")

    @property
    def self_name(self) -> bytes | None:
        """TCP_ENO_SELF_NAME: one byte TCP_ENO_ROLE, then the session ID."""
        if self.session_id is None or self.eno_role is None:
            return None
        return bytes([self.eno_role]) + self.session_id

    @property
    def peer_name(self) -> bytes | None:
        """TCP_ENO_PEER_NAME: :attr:`self_name` with its first byte negated; equal to the
        other end's :attr:`self_name`."""
        if self.session_id is None or self.eno_role is None:
            return None
        return bytes([1 - self.eno_role]) + self.session_id

    @classmethod
    def from_answer(cls, answer: dict[str, Any]) -> Session:
        """A ``session`` answer of the control protocol as a :class:`Session`."""
        session_id = answer["session_id"]
        return cls(local=_endpoint(answer["local"]), remote=_endpoint(answer["remote"]),
                   state=answer["state"], encrypted=answer["encrypted"],
                   resumed=answer["resumed"],
                   session_id=None if session_id is None else bytes.fromhex(session_id),
                   negotiated_tep=answer["negotiated_tep"], tep=answer["tep"],
                   aead_id=answer["aead_id"], aead=answer["aead"], role=answer["role"])


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _address(address: str) -> str:
    """A socket's address text as the daemon sees the connection (IPv4-mapped -> IPv4)."""
    parsed = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    return str(parsed)


def session_for(local: tuple[str, int], remote: tuple[str, int], *,
                control: str = DEFAULT_CONTROL_PATH, timeout: float = 10.0) -> Session:
    """The session of the TCP connection ``local`` <-> ``remote`` (address, port) on this
    host. Raises :class:`TcpincError` with the daemon's message when it cannot answer."""
    message = {"command": "session",
               "local_addr": _address(local[0]), "local_port": local[1],
               "remote_addr": _address(remote[0]), "remote_port": remote[1]}
    try:
        answer = request(control, message, timeout=timeout)
    except ControlError as exc:
        raise TcpincError(str(exc)) from None
    if not answer.get("ok"):
        raise TcpincError(str(answer.get("error", "the daemon refused the request")))
    return Session.from_answer(answer)


def session(sock: socket.socket, *, control: str = DEFAULT_CONTROL_PATH,
            timeout: float = 10.0) -> Session:
    """The session of the connected TCP socket ``sock`` (as it is now)."""
    return session_for(sock.getsockname()[:2], sock.getpeername()[:2], control=control,
                       timeout=timeout)


def wait_session(sock: socket.socket, *, control: str = DEFAULT_CONTROL_PATH,
                 wait: float = 10.0) -> Session:
    """:func:`session` once the handshake is over (encrypted, plain or aborted), or as it is
    after ``wait`` seconds. Host A's keys exist about one round trip after ``connect``
    returns (Init1 rides on its third ACK, RFC 8548 §3.3), host B's once Init1 arrived."""
    deadline = time.monotonic() + wait
    while True:
        info = session(sock, control=control, timeout=max(wait, 1.0))
        if info.state not in HANDSHAKE_STATES or time.monotonic() >= deadline:
            return info
        time.sleep(POLL_INTERVAL)
