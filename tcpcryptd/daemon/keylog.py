"""The key log: one line per tcpcrypt session with its traffic keys, for decrypting captures.

Off unless ``log.keylog`` names a file. Line format (ASCII, space-separated, hex lower case)::

    TCPCRYPT <session_id> <role> <k_ab[0]> <k_ba[0]>

``session_id`` is the 33-byte session ID of RFC 8548 §3.4 (first byte = the TEP byte as B
sent it, v bit included); ``role`` is this host's role, ``A`` or ``B`` (RFC 8547 §4.5);
``k_ab[0]``/``k_ba[0]`` are the first-generation traffic keys of RFC 8548 §3.3 (A -> B and
B -> A; each the AEAD key K followed by the nonce randomizer NR, §4.2). Later generations follow from them only with the session secret, which is never
written: a capture spanning a rekey (RFC 8548 §3.8) is readable up to the first rekey.
The file is created with mode 0600 and appended to; each line is flushed at once.
"""

from __future__ import annotations

import os
from typing import Protocol

from tcpcryptd.daemon.errors import ConfigError
from tcpcryptd.engine.events import Event, SessionEstablished


class KeyedSession(Protocol):
    """What the key log reads of a :class:`tcpcryptd.core.session.Session`."""

    role: str
    session_id: bytes

    def traffic_keys(self, generation: int) -> tuple[bytes, bytes]: ...


def format_line(session: KeyedSession) -> str:
    k_ab, k_ba = session.traffic_keys(0)
    return _line(session.session_id, session.role, k_ab, k_ba)


def _line(session_id: bytes, role: str, k_ab: bytes, k_ba: bytes) -> str:
    return f"TCPCRYPT {session_id.hex()} {role} {k_ab.hex()} {k_ba.hex()}\n"


class KeyLog:
    """An open key-log file (append, 0600)."""

    def __init__(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"log.keylog: cannot open {path}: {exc.strerror}") from exc
        self.path = path
        self._file = os.fdopen(fd, "a", encoding="ascii")

    def write(self, session: KeyedSession) -> None:
        self._append(format_line(session))

    def record(self, event: Event) -> None:
        """An engine event (``Result.events``): a new session's keys are written, every
        other event is ignored."""
        if isinstance(event, SessionEstablished):
            self._append(_line(event.session_id, event.role, event.k_ab, event.k_ba))

    def _append(self, line: str) -> None:
        self._file.write(line)
        self._file.flush()

    def close(self) -> None:
        self._file.close()
