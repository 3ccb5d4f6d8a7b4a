"""The control socket: a unix stream socket, one JSON request per line, one JSON answer each.

Requests are objects with a ``command`` (``ping``, ``status``, ``enable``, ``disable``,
``session-id``); answers are objects with ``ok`` (true/false) and, when false, ``error``.
Malformed or oversized requests get an error answer, never a crash; an oversized line is
skipped without being buffered. The server is non-blocking and driven by the daemon's event loop.
One instance per socket path: an exclusive ``flock`` on ``PATH.lock`` (holding the pid)
plus a probe of an existing socket, so a stale socket after a crash is replaced and a live
one is never stolen.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tcpcryptd.daemon.errors import ControlError, DaemonTimeoutError, NoDaemonError

log = logging.getLogger(__name__)

#: Longest request line accepted (bytes, newline included).
MAX_REQUEST = 4096
#: Control connections served at once; more are closed at once.
MAX_CLIENTS = 16
#: Pending answer bytes per connection before it is closed (a client that never reads).
MAX_PENDING_OUTPUT = 64 << 20
COMMANDS = ("ping", "status", "enable", "disable", "session-id")

Request = dict[str, Any]
Response = dict[str, Any]


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def error(message: str) -> Response:
    return {"ok": False, "error": message}


def parse_request(line: bytes) -> Request:
    """One request line -> a request object; :class:`ControlError` saying what is wrong."""
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlError(f"request is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise ControlError("request must be a JSON object")
    command = request.get("command")
    if command not in COMMANDS:
        raise ControlError(f"unknown command {command!r} (known: {', '.join(COMMANDS)})")
    return request


class _Connection:
    """One accepted control connection: input line buffer and pending output."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.closing = False
        self.skipping = False   # inside an oversized line: discard up to its newline


class ControlServer:
    """Listens on ``path``; ``handle(request) -> response`` answers each valid request."""

    def __init__(self, path: str, handle: Callable[[Request], Response]) -> None:
        self.path = Path(path)
        self.lock_path = Path(f"{path}.lock")
        self._handle = handle
        self._lock_fd: int | None = None
        self.listener: socket.socket | None = None
        self.connections: dict[int, _Connection] = {}

    # ---- lifecycle

    def open(self) -> None:
        """Take the instance lock, replace a stale socket, listen (mode 0600)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ControlError(f"cannot create {self.lock_path}: {exc.strerror}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._lock_fd, 32, 0).decode(errors="replace").strip()
            self.close()
            raise ControlError(f"another tcpcryptd is running (pid {holder or '?'} holds "
                               f"{self.lock_path})") from None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)
        if self.path.exists() or self.path.is_symlink():
            if _answers(self.path):
                self.close()
                raise ControlError(f"control socket {self.path} is in use by another process")
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old_umask = os.umask(0o177)
            try:
                listener.bind(str(self.path))
            finally:
                os.umask(old_umask)
            listener.listen(MAX_CLIENTS)
        except OSError as exc:
            listener.close()
            self.close()
            raise ControlError(f"cannot listen on {self.path}: {exc.strerror}") from exc
        listener.setblocking(False)
        self.listener = listener

    def close(self) -> None:
        for connection in list(self.connections.values()):
            connection.sock.close()
        self.connections.clear()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- event-loop entry points

    def accept(self) -> socket.socket | None:
        """Accept one connection (None if none is pending or the limit is reached)."""
        assert self.listener is not None
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return None
        if len(self.connections) >= MAX_CLIENTS:
            sock.close()
            log.warning("control: too many connections, one refused")
            return None
        sock.setblocking(False)
        self.connections[sock.fileno()] = _Connection(sock)
        return sock

    def readable(self, fd: int) -> None:
        """Read what the client sent and answer every complete line.

        A line longer than :data:`MAX_REQUEST` is answered with an error and skipped up to
        its newline without being buffered; the connection stays usable.
        """
        connection = self.connections[fd]
        try:
            chunk = connection.sock.recv(MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            connection.closing = True
            return
        if connection.skipping:
            newline = chunk.find(b"\n")
            if newline < 0:
                return
            connection.skipping = False
            chunk = chunk[newline + 1:]
        connection.inbuf += chunk
        while True:
            newline = connection.inbuf.find(b"\n")
            if newline < 0:
                if len(connection.inbuf) >= MAX_REQUEST:
                    self._reply(connection, error(f"request longer than {MAX_REQUEST} bytes"))
                    connection.inbuf.clear()
                    connection.skipping = True
                return
            line = bytes(connection.inbuf[:newline])
            del connection.inbuf[:newline + 1]
            if len(line) >= MAX_REQUEST:
                self._reply(connection, error(f"request longer than {MAX_REQUEST} bytes"))
            else:
                self._reply(connection, self._answer(line))

    def writable(self, fd: int) -> None:
        """Send as much pending output as the socket takes now (a large answer in few turns)."""
        connection = self.connections[fd]
        outbuf = connection.outbuf
        sent_total = 0
        with memoryview(outbuf) as pending:
            while sent_total < len(pending):
                try:
                    sent_total += connection.sock.send(pending[sent_total:])
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    sent_total = len(pending)
                    connection.closing = True
                    break
        del outbuf[:sent_total]

    def wants_write(self, fd: int) -> bool:
        return bool(self.connections[fd].outbuf)

    def finished(self, fd: int) -> bool:
        """True when the connection should be closed now (peer gone and nothing to send)."""
        connection = self.connections[fd]
        return connection.closing and not connection.outbuf

    def drop(self, fd: int) -> None:
        connection = self.connections.pop(fd)
        connection.sock.close()

    # ---- internals

    def _answer(self, line: bytes) -> Response:
        try:
            request = parse_request(line)
        except ControlError as exc:
            return error(str(exc))
        try:
            return self._handle(request)
        except ControlError as exc:
            return error(str(exc))
        except Exception:  # a bug must cost one answer, never the daemon
            log.exception("control: %s failed", request.get("command"))
            return error(f"internal error while handling {request.get('command')!r}")

    def _reply(self, connection: _Connection, response: Response) -> None:
        connection.outbuf += encode(response)
        if len(connection.outbuf) > MAX_PENDING_OUTPUT:
            connection.outbuf.clear()
            connection.closing = True
            return
        self.writable(connection.sock.fileno())


def _answers(path: Path) -> bool:
    """True when something accepts connections on the unix socket ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def request(path: str, message: Request, timeout: float = 10.0) -> Response:
    """Send one request to the daemon at ``path`` and return its answer.

    Raises :class:`ControlError` with an operator-readable message: its subclass
    :class:`NoDaemonError` when no daemon is there (socket absent, connection refused),
    :class:`DaemonTimeoutError` when one accepted the connection but did not answer within
    ``timeout`` seconds; plain :class:`ControlError` when access is denied, the connection
    broke or the answer is not a JSON object.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NoDaemonError(f"no tcpcryptd is running (no daemon on control socket "
                                f"{path})") from None
        except PermissionError:
            raise ControlError(f"permission denied on control socket {path} "
                               f"(run as root)") from None
        sock.sendall(encode(message))
        data = bytearray()
        while not data.endswith(b"\n"):
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        raise DaemonTimeoutError(f"tcpcryptd is running but did not answer on {path} within "
                                 f"{timeout:g}s (busy?); try again") from None
    except OSError as exc:
        if exc.errno in (errno.ECONNRESET, errno.EPIPE):
            raise ControlError(f"tcpcryptd closed the control connection on {path}") from None
        raise ControlError(f"control socket {path}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    try:
        response = json.loads(data)
    except ValueError:
        raise ControlError(f"tcpcryptd sent a malformed answer on {path}") from None
    if not isinstance(response, dict):
        raise ControlError(f"tcpcryptd sent a malformed answer on {path}")
    return response


def daemon_running(path: str, timeout: float = 10.0) -> bool:
    """True when a daemon answers ``ping`` on ``path``, False when none is there.

    A daemon that is there but does not answer in time is not "not running": that raises
    :class:`DaemonTimeoutError` (as do the other :class:`ControlError` cases of
    :func:`request`), so no caller mistakes a busy daemon for a crashed one.
    """
    try:
        return bool(request(path, {"command": "ping"}, timeout=timeout).get("ok"))
    except NoDaemonError:
        return False
