"""The key log (format version 2): one line per generation of traffic keys, for decrypting
captures with ``tcpcryptd decode`` (the tcpcrypt analogue of NSS's SSLKEYLOGFILE).

Off unless ``log.keylog`` names a file. Line format (ASCII, one space between fields, byte
strings in lower-case hex; docs/daemon.md "Key log format")::

    TCPCRYPT_KEYS <local> <remote> <role> <tep> <aead> <session_id> <generation> <k_ab> <k_ba> <new|resumed>

``local``/``remote`` are this host's and the peer's address and port as on the wire
(``10.0.0.1:80``, ``[fd00::1]:80``); ``role`` ``A`` when this host sends with ``k_ab``,
``B`` with ``k_ba`` (RFC 8548 §3.3): its role (RFC 8547 §4.5), or on a resumed session its
role in the original session, which the keys follow (RFC 8548 §3.5; the event says so); ``tep`` the TEP identifier byte (RFC 8548 §7, two hex digits);
``aead`` the AEAD name (RFC 8548 §6: ``AES-128-GCM``, ``AES-256-GCM``,
``ChaCha20-Poly1305``); ``session_id`` the 33-byte session ID (§3.4); ``generation`` the key
generation j of ``k_ab[j]``/``k_ba[j]`` (§3.3, §3.8), each the AEAD key K followed by the
nonce randomizer NR (§4.2); the last field says whether the session was resumed (§3.5).

A line of a later generation repeats the session's role, TEP and AEAD from its generation-0
line; if that line is older than the :data:`REMEMBERED_SESSIONS` most recent sessions, those
three fields are ``-`` and a reader takes them from the generation-0 line with the same
session ID. Lines starting with ``#`` are comments. The file is created with mode 0600 and
appended to; each line is flushed at once. The session secret itself is never written.
"""

from __future__ import annotations

import os

from tcpcryptd.daemon.errors import ConfigError
from tcpcryptd.engine.events import Event, Rekeyed, SessionEstablished

#: First field of every key line.
LABEL = "TCPCRYPT_KEYS"
#: Sessions whose role, TEP and AEAD the key log keeps for their rekey lines.
REMEMBERED_SESSIONS = 65536
_UNKNOWN = ("-", "-", "-", "-")


def format_line(local: str, remote: str, role: str, tep: str, aead: str, session_id: bytes,
                generation: int, k_ab: bytes, k_ba: bytes, marker: str) -> str:
    """One key line (see the module doc); ``tep`` already as two hex digits."""
    return (f"{LABEL} {local} {remote} {role} {tep} {aead} {session_id.hex()} {generation} "
            f"{k_ab.hex()} {k_ba.hex()} {marker}\n")


class KeyLog:
    """An open key-log file (append, 0600) written from the engine's events."""

    def __init__(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"log.keylog: cannot open {path}: {exc.strerror}") from exc
        self.path = path
        self._file = os.fdopen(fd, "a", encoding="ascii")
        #: session ID -> (role, tep, aead, marker) of the latest sessions, oldest first
        self._sessions: dict[bytes, tuple[str, str, str, str]] = {}

    def record(self, event: Event) -> None:
        """Write the keys a :class:`SessionEstablished` or :class:`Rekeyed` carries; other
        events carry none and are ignored."""
        if isinstance(event, SessionEstablished):
            known = (event.role, f"{event.tep:02x}", event.aead,
                     "resumed" if event.resumed else "new")
            sessions = self._sessions
            sessions[event.session_id] = known
            if len(sessions) > REMEMBERED_SESSIONS:
                del sessions[next(iter(sessions))]
            generation = 0
        elif isinstance(event, Rekeyed):
            known = self._sessions.get(event.session_id, _UNKNOWN)
            generation = event.generation
        else:
            return
        role, tep, aead, marker = known
        self._file.write(format_line(event.local, event.remote, role, tep, aead,
                                     event.session_id, generation, event.k_ab, event.k_ba,
                                     marker))
        self._file.flush()

    def close(self) -> None:
        self._file.close()
