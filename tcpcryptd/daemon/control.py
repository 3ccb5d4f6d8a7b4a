"""The control socket: a unix stream socket, one JSON request per line, one JSON answer each.

Requests are objects with a ``command`` (``ping``, ``status``, ``enable``, ``disable``,
``session-id``, ``session``) and that command's fields; answers are objects with ``ok``
(true/false) and, when false, ``error``. Malformed, oversized or too deeply nested requests get an error
answer, never a crash; an oversized line is skipped without being buffered. The server is
non-blocking and driven by the daemon's event loop, which also calls :meth:`ControlServer.
expire`: a connection without a complete request (or answer progress) for
:data:`IDLE_TIMEOUT` seconds is closed, and at :data:`MAX_CLIENTS` connections a new one
evicts the longest idle one (an unprivileged caller's first), so idle clients can never lock
out a fresh ``status``.
One instance per socket path: an exclusive ``flock`` on ``PATH.lock`` (holding the pid)
plus a probe of an existing socket, so a stale socket after a crash is replaced and a live
one is never stolen.

Access: the socket is mode 0666 so that every local user can reach it, and each connection's
peer credentials (``SO_PEERCRED``, taken at accept) decide what it may ask: a
:class:`Caller` that is root (or the daemon's own uid) may send every command, any other
only the :data:`OPEN_COMMANDS` (``ping`` and ``session``, which the handler answers only for
connections the caller owns); the rest get ``permission denied``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import re
import selectors
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from tcpcryptd.daemon.errors import ControlError, DaemonTimeoutError, NoDaemonError

log = logging.getLogger(__name__)

#: Longest request line accepted (bytes, newline included).
MAX_REQUEST = 4096
#: Deepest nesting of arrays/objects accepted in a request (the commands need 2).
MAX_DEPTH = 8
#: Control connections served at once; at the cap a new one evicts the longest idle one.
MAX_CLIENTS = 32
#: Connections the kernel queues before the daemon accepts them.
LISTEN_BACKLOG = 128
#: Seconds a connection may go without a complete request or answer progress.
IDLE_TIMEOUT = 10.0
#: Pending answer bytes per connection before it is closed (a client that never reads).
MAX_PENDING_OUTPUT = 64 << 20
#: Each command and the request fields it takes (besides ``command``).
COMMAND_FIELDS: dict[str, tuple[str, ...]] = {
    "ping": (),
    "status": ("states", "peer", "summary", "limit"),
    "enable": (),
    "disable": (),
    "session-id": ("remote_addr", "remote_port", "local_port"),
    "session": ("local_addr", "local_port", "remote_addr", "remote_port"),
}
COMMANDS = tuple(COMMAND_FIELDS)
#: Commands every local user may send (the others need root or the daemon's uid).
OPEN_COMMANDS = frozenset({"ping", "session"})
#: Mode of the control socket: reachable by every user; :class:`Caller` limits what each asks.
SOCKET_MODE = 0o666

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")

Request = dict[str, Any]
Response = dict[str, Any]

_UCRED = struct.Struct("=iII")   # struct ucred: pid, uid, gid


@dataclass(frozen=True, slots=True)
class Caller:
    """The process at the other end of a control connection (``SO_PEERCRED`` at connect).

    ``uid`` is None when the kernel did not say (never on Linux unix sockets): such a caller
    is unprivileged and owns nothing.
    """

    pid: int
    uid: int | None

    @property
    def privileged(self) -> bool:
        """Root, or the user the daemon runs as: may send every command."""
        return self.uid is not None and self.uid in (0, os.geteuid())

    @classmethod
    def of(cls, sock: socket.socket) -> Caller:
        try:
            pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET,
                                                           socket.SO_PEERCRED, _UCRED.size))
        except OSError:
            return cls(0, None)
        return cls(pid, uid)


#: What a handler answers: ``handle(request, caller) -> response``.
Handler = Callable[[Request, Caller], Response]


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def error(message: str) -> Response:
    return {"ok": False, "error": message}


def shown(value: object, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error answers about client input."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def nesting_depth(text: str) -> int:
    """How deeply arrays/objects nest in JSON ``text``, brackets inside strings ignored.

    Linear and non-recursive, so it can run before :func:`json.loads` recurses; on
    malformed text it is an upper bound good enough to refuse it early.
    """
    depth = deepest = 0
    for bracket in _BRACKET.findall(_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _reject_constant(name: str) -> NoReturn:
    raise ControlError(f"request is not JSON: {name} is not a JSON number")


def parse_request(line: bytes) -> Request:
    """One request line -> a request object; :class:`ControlError` saying what is wrong.

    Checked in order: UTF-8, nesting depth (at most :data:`MAX_DEPTH`, before parsing),
    JSON, an object, a known ``command``, only that command's fields. Field values are
    the handler's to check.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ControlError(f"request is not UTF-8: {exc.reason} at byte {exc.start}") from None
    if nesting_depth(text) > MAX_DEPTH:
        raise ControlError(f"request nests deeper than {MAX_DEPTH} levels")
    try:
        request = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ControlError(f"request is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise ControlError("request must be a JSON object")
    command = request.get("command")
    if not isinstance(command, str) or command not in COMMAND_FIELDS:
        raise ControlError(f"unknown command {shown(command)} (known: {', '.join(COMMANDS)})")
    unknown = sorted(set(request) - {"command", *COMMAND_FIELDS[command]})
    if unknown:
        takes = ", ".join(COMMAND_FIELDS[command]) or "no fields"
        raise ControlError(f"{command} does not take {shown(unknown[0])} (it takes {takes})")
    return request


class _Connection:
    """One accepted control connection: input line buffer, pending output, last activity."""

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.caller = Caller.of(sock)
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.closing = False
        self.skipping = False   # inside an oversized line: discard up to its newline
        self.active = now       # accepted, last complete request, or last answer progress
        self.evicted = False    # to be closed: a newer connection needed its place


class ControlServer:
    """Listens on ``path``; ``handle(request, caller) -> response`` answers each valid
    request the caller may send (:data:`OPEN_COMMANDS`, or all when privileged).

    ``clock`` (seconds, monotonic) times idle connections; :meth:`expire` and
    :meth:`next_deadline` use the same clock.
    """

    def __init__(self, path: str, handle: Handler,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.lock_path = Path(f"{path}.lock")
        self._handle = handle
        self.clock = clock
        self._lock_fd: int | None = None
        self.listener: socket.socket | None = None
        self.connections: dict[int, _Connection] = {}
        self._evict_logged = -IDLE_TIMEOUT

    # ---- lifecycle

    def open(self) -> None:
        """Take the instance lock, replace a stale socket, listen (mode :data:`SOCKET_MODE`)."""
        try:
            if not self.path.parent.is_dir():
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # every user reaches the socket; its callers' credentials decide the rest
                self.path.parent.chmod(0o755)
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
            old_umask = os.umask(0o777 & ~SOCKET_MODE)
            try:
                listener.bind(str(self.path))
            finally:
                os.umask(old_umask)
            listener.listen(LISTEN_BACKLOG)
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
        """Accept one connection (None if none is pending or accepting failed).

        At :data:`MAX_CLIENTS` connections the longest idle one is marked for
        :meth:`expire` to close, so a new client (``tcpcryptd status``) is always served.
        """
        assert self.listener is not None
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return None
        except OSError as exc:   # out of file descriptors or buffers: try again later
            log.warning("control: accepting a connection failed: %s", exc.strerror or exc)
            return None
        self._make_room()
        sock.setblocking(False)
        self.connections[sock.fileno()] = _Connection(sock, self.clock())
        return sock

    def readable(self, fd: int) -> None:
        """Read what the client sent and answer the first complete line.

        Nothing is read while an answer or a complete request is pending (:meth:`wants_write`
        is true): input stays bounded, and the loop serves packets between requests. A line
        longer than :data:`MAX_REQUEST` is answered with an error and skipped up to its
        newline without being buffered; the connection stays usable.
        """
        connection = self.connections[fd]
        if self.wants_write(fd):
            return
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
        self._answer_next(connection)

    def writable(self, fd: int) -> None:
        """Send pending output; once it is all sent, answer the next buffered request."""
        connection = self.connections[fd]
        self._send(connection)
        self._answer_next(connection)

    def wants_write(self, fd: int) -> bool:
        """Output is pending, or a complete request waits for its turn (see :meth:`writable`)."""
        connection = self.connections[fd]
        return bool(connection.outbuf) or (not connection.closing and b"\n" in connection.inbuf)

    def finished(self, fd: int) -> bool:
        """True when the connection should be closed now (peer gone and nothing to send)."""
        connection = self.connections[fd]
        return connection.closing and not connection.outbuf

    def drop(self, fd: int) -> None:
        connection = self.connections.pop(fd)
        connection.sock.close()

    def expire(self, now: float) -> list[int]:
        """Connections to close now: evicted ones, and those idle for :data:`IDLE_TIMEOUT`.

        Each is told why (best effort, when no answer is half sent); the caller stops
        watching each returned fd and calls :meth:`drop` on it.
        """
        stale = [fd for fd, connection in self.connections.items()
                 if connection.evicted or now - connection.active >= IDLE_TIMEOUT]
        for fd in stale:
            self._farewell(self.connections[fd])
        return stale

    def next_deadline(self) -> float | None:
        """When :meth:`expire` has something to close next (None: no connections)."""
        return min((-math.inf if connection.evicted else connection.active + IDLE_TIMEOUT
                    for connection in self.connections.values()), default=None)

    def on_event(self, key: selectors.SelectorKey, events: int,
                 selector: selectors.BaseSelector) -> None:
        """One selector event of the listener (``data`` "listen") or of a client connection
        (``data`` "client"): accept, read, write, drop when finished, and keep the client's
        registration on the one event it waits for (reading waits while an answer or a
        buffered request is pending)."""
        if key.data == "listen":
            sock = self.accept()
            if sock is not None:
                selector.register(sock, selectors.EVENT_READ, "client")
            return
        fd = key.fd
        if events & selectors.EVENT_READ:
            self.readable(fd)
        if events & selectors.EVENT_WRITE:
            self.writable(fd)
        if self.finished(fd):
            selector.unregister(key.fileobj)
            self.drop(fd)
            return
        wanted = selectors.EVENT_WRITE if self.wants_write(fd) else selectors.EVENT_READ
        if wanted != key.events:
            selector.modify(key.fileobj, wanted, "client")

    # ---- internals

    def _make_room(self) -> None:
        """At the connection cap, mark the longest idle connection evicted: an unprivileged
        one while there is any, so that every local user may connect (the socket is open to
        all, :data:`SOCKET_MODE`) but none can push out root's clients."""
        serving = [c for c in self.connections.values() if not c.evicted]
        if len(serving) < MAX_CLIENTS:
            return
        unprivileged = [c for c in serving if not c.caller.privileged]
        min(unprivileged or serving, key=lambda connection: connection.active).evicted = True
        now = self.clock()
        if now - self._evict_logged >= IDLE_TIMEOUT:   # one line per period under a flood
            self._evict_logged = now
            log.warning("control: %d connections open, closing the longest idle one",
                        len(serving))

    def _farewell(self, connection: _Connection) -> None:
        if connection.outbuf:
            return
        reason = ("too many control connections" if connection.evicted
                  else f"no request for {IDLE_TIMEOUT:g}s")
        try:
            connection.sock.send(encode(error(f"control connection closed: {reason}")))
        except OSError:
            pass

    def _answer_next(self, connection: _Connection) -> None:
        """Answer the first complete line of the input buffer (one per call), unless output
        is still pending; an over-long line, complete or not, gets an error answer."""
        if connection.outbuf or connection.closing:
            return
        newline = connection.inbuf.find(b"\n")
        if newline < 0:
            if len(connection.inbuf) >= MAX_REQUEST:
                connection.inbuf.clear()
                connection.skipping = True
                self._reply(connection, error(f"request longer than {MAX_REQUEST} bytes"))
            return
        line = bytes(connection.inbuf[:newline])
        del connection.inbuf[:newline + 1]
        connection.active = self.clock()
        if len(line) >= MAX_REQUEST:
            self._reply(connection, error(f"request longer than {MAX_REQUEST} bytes"))
        else:
            self._reply(connection, self._answer(line, connection.caller))

    def _answer(self, line: bytes, caller: Caller) -> Response:
        """The answer to one request line; never raises (a bug costs one error answer)."""
        command = None
        try:
            request = parse_request(line)
            command = request["command"]
            if command not in OPEN_COMMANDS and not caller.privileged:
                raise ControlError(f"permission denied: {command} needs root (other users "
                                   f"may send {' and '.join(sorted(OPEN_COMMANDS))})")
            return self._handle(request, caller)
        except ControlError as exc:
            return error(str(exc))
        except Exception:  # a bug must cost one answer, never the daemon
            log.exception("control: %s failed", command)
            return error(f"internal error while handling {command!r}")

    def _reply(self, connection: _Connection, response: Response) -> None:
        try:
            data = encode(response)
        except (TypeError, ValueError, RecursionError):   # a handler bug, as in _answer
            log.exception("control: answer not encodable")
            data = encode(error("internal error: the answer could not be encoded"))
        connection.outbuf += data
        if len(connection.outbuf) > MAX_PENDING_OUTPUT:
            connection.outbuf.clear()
            connection.closing = True
            return
        self._send(connection)

    def _send(self, connection: _Connection) -> None:
        """Send as much pending output as the socket takes now (a large answer in few turns)."""
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
        if sent_total and not connection.closing:
            connection.active = self.clock()


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
