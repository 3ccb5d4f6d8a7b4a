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
from tcpcryptd.engine.actions import Result
from tcpcryptd.engine.config import EngineConfig
from tcpcryptd.engine.engine import Engine
from tcpcryptd.engine.flow import Flow


class KeyedSession(Protocol):
    """What the key log reads of a :class:`tcpcryptd.core.session.Session`."""

    role: str
    session_id: bytes

    def traffic_keys(self, generation: int) -> tuple[bytes, bytes]: ...


def format_line(session: KeyedSession) -> str:
    k_ab, k_ba = session.traffic_keys(0)
    return f"TCPCRYPT {session.session_id.hex()} {session.role} {k_ab.hex()} {k_ba.hex()}\n"


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
        self._file.write(format_line(session))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class KeyLoggingEngine(Engine):
    """The engine, writing each new session to a :class:`KeyLog` when its keys exist.

    Hooks :meth:`Engine.on_keys`, the engine's single point where a session comes into
    being (RFC 8548 §3.3: after Init1/Init2), so the engine itself stays free of I/O.
    """

    def __init__(self, config: EngineConfig, keylog: KeyLog) -> None:
        super().__init__(config)
        self.keylog = keylog

    def on_keys(self, flow: Flow, init2: bytes, now: float, result: Result) -> None:
        super().on_keys(flow, init2, now, result)
        if flow.session is not None:
            self.keylog.write(flow.session)
