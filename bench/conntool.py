"""The small client/server pair of the connection benchmarks, run inside the namespaces.

``python -m bench.conntool serve --port P [--hold]``
    Accepts connections; answers a 1-byte request with 1 byte, then closes (or, with
    ``--hold``, keeps the connection open until the peer closes it). Prints ``serve: ready``.
``python -m bench.conntool rr --host H --port P --count N --seconds S``
    Sequential connect + 1-byte request/response + close, up to N connections or S seconds;
    prints one JSON line: connections, failures, seconds, latencies_ms (connect() start to the
    first response byte, one per connection).
``python -m bench.conntool exchange --host H --port P --connections C --size N --seconds S``
    A request/response loop as a key-value client runs it: C connections, each sends an
    N-byte request and waits for the server's N-byte answer (``serve --echo``), again and
    again for S seconds; prints one JSON line: exchanges, mismatches (an answer that is not
    the request), seconds.
``python -m bench.conntool hold --host H --port P --checkpoints 1000,10000``
    Opens connections (a window of non-blocking connects), makes each exchange 1 byte so
    the key exchange is complete, and keeps them idle. At each checkpoint it prints
    ``held N failed F`` and waits for a line on stdin before going on; after the last one it
    waits for stdin to close.

Both sides raise RLIMIT_NOFILE to its hard limit (raised to :data:`FD_LIMIT` first: root).
"""

from __future__ import annotations

import argparse
import json
import resource
import selectors
import socket
import sys
import time

FD_LIMIT = 65536
REQUEST = b"?"
RESPONSE = b"!"


def raise_fd_limit(wanted: int = FD_LIMIT) -> int:
    """Raise RLIMIT_NOFILE as far as allowed (to ``wanted`` as root); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(wanted, soft), max(wanted, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def serve(port: int, hold: bool, echo: bool = False) -> None:
    """Accept loop answering each request byte with :data:`RESPONSE` (``echo``: sending
    back every byte received, until the peer closes)."""
    raise_fd_limit()
    listener = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True,
                                    backlog=4096)
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    print("serve: ready", flush=True)
    while True:
        for key, _ in selector.select():
            if key.data is None:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                selector.register(conn, selectors.EVENT_READ, "request")
                continue
            conn = key.fileobj
            try:
                data = conn.recv(65536 if echo else 64)
            except OSError:
                data = b""
            if data and echo:
                conn.setblocking(True)    # a short answer: the send buffer takes it at once
                conn.sendall(data)
                conn.setblocking(False)
                continue
            if data and key.data == "request":
                conn.send(RESPONSE)
                if hold:
                    selector.modify(conn, selectors.EVENT_READ, "idle")
                    continue
            elif data:
                continue
            selector.unregister(conn)
            conn.close()


def request_response(host: str, port: int, count: int, seconds: float,
                     timeout: float = 10.0) -> dict:
    """Sequential connections, each timed from connect() to the first response byte."""
    latencies_ms: list[float] = []
    failures = 0
    started = time.perf_counter()
    while len(latencies_ms) + failures < count and time.perf_counter() - started < seconds:
        begin = time.perf_counter()
        try:
            with socket.create_connection((host, port), timeout=timeout) as conn:
                conn.sendall(REQUEST)
                answer = conn.recv(1)
                end = time.perf_counter()
                if answer != RESPONSE:
                    failures += 1
                    continue
                conn.recv(1)    # the server's FIN: the connection is done on both sides
        except OSError:
            failures += 1
            continue
        latencies_ms.append((end - begin) * 1000)
    elapsed = time.perf_counter() - started
    return {"connections": len(latencies_ms), "failures": failures, "seconds": elapsed,
            "latencies_ms": latencies_ms}


def exchange(host: str, port: int, connections: int, size: int, seconds: float) -> dict:
    """``connections`` clients each doing request/response round trips of ``size`` bytes."""
    selector = selectors.DefaultSelector()
    request = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    for _ in range(connections):
        conn = socket.create_connection((host, port), timeout=10)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sendall(request)
        conn.setblocking(False)
        selector.register(conn, selectors.EVENT_READ, bytearray())
    exchanges = mismatches = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for key, _ in selector.select(timeout=1.0):
            answer = key.data
            answer += key.fileobj.recv(65536)
            if len(answer) < size:
                continue
            exchanges += 1
            mismatches += bytes(answer[:size]) != request
            del answer[:size]
            key.fileobj.setblocking(True)
            key.fileobj.sendall(request)
            key.fileobj.setblocking(False)
    elapsed = time.perf_counter() - started
    for key in list(selector.get_map().values()):
        key.fileobj.close()
    return {"exchanges": exchanges, "mismatches": mismatches, "seconds": elapsed}


class Holder:
    """Opens idle connections in a window of non-blocking connects (1-byte exchange each)."""

    def __init__(self, host: str, port: int, window: int) -> None:
        self.address = (host, port)
        self.window = window
        self.selector = selectors.DefaultSelector()
        self.established: list[socket.socket] = []
        self.in_flight = 0
        self.failed = 0

    def _start_one(self) -> None:
        conn = socket.socket(socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET,
                             socket.SOCK_STREAM)
        conn.setblocking(False)
        conn.connect_ex(self.address)
        self.selector.register(conn, selectors.EVENT_WRITE, "connecting")
        self.in_flight += 1

    def _finish(self, conn: socket.socket, ok: bool) -> None:
        self.selector.unregister(conn)
        self.in_flight -= 1
        if ok:
            self.established.append(conn)
        else:
            self.failed += 1
            conn.close()

    def fill(self, target: int, deadline: float, max_failures: int = 100) -> None:
        """Hold ``target`` connections, or stop at ``deadline``/too many failures."""
        while len(self.established) < target and self.failed < max_failures:
            while self.in_flight < self.window and \
                    len(self.established) + self.in_flight < target:
                self._start_one()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            for key, _ in self.selector.select(timeout=min(remaining, 1.0)):
                conn = key.fileobj
                if key.data == "connecting":
                    if conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        self._finish(conn, False)
                        continue
                    conn.send(REQUEST)
                    self.selector.modify(conn, selectors.EVENT_READ, "waiting")
                else:
                    try:
                        answer = conn.recv(1)
                    except OSError:
                        answer = b""
                    self._finish(conn, answer == RESPONSE)


def hold(host: str, port: int, checkpoints: list[int], window: int, timeout: float) -> None:
    raise_fd_limit()
    holder = Holder(host, port, window)
    for target in checkpoints:
        holder.fill(target, time.monotonic() + timeout)
        print(f"held {len(holder.established)} failed {holder.failed}", flush=True)
        if sys.stdin.readline() == "":
            break
    sys.stdin.read()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve")
    p_serve.add_argument("--port", type=int, required=True)
    p_serve.add_argument("--hold", action="store_true")
    p_serve.add_argument("--echo", action="store_true")
    p_ex = sub.add_parser("exchange")
    p_ex.add_argument("--host", required=True)
    p_ex.add_argument("--port", type=int, required=True)
    p_ex.add_argument("--connections", type=int, default=4)
    p_ex.add_argument("--size", type=int, default=100)
    p_ex.add_argument("--seconds", type=float, required=True)
    p_rr = sub.add_parser("rr")
    p_rr.add_argument("--host", required=True)
    p_rr.add_argument("--port", type=int, required=True)
    p_rr.add_argument("--count", type=int, required=True)
    p_rr.add_argument("--seconds", type=float, required=True)
    p_hold = sub.add_parser("hold")
    p_hold.add_argument("--host", required=True)
    p_hold.add_argument("--port", type=int, required=True)
    p_hold.add_argument("--checkpoints", required=True,
                        type=lambda text: [int(n) for n in text.split(",")])
    p_hold.add_argument("--window", type=int, default=32)
    p_hold.add_argument("--timeout", type=float, default=300.0,
                        help="seconds allowed to reach each checkpoint")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.port, args.hold, args.echo)
    elif args.command == "exchange":
        print(json.dumps(exchange(args.host, args.port, args.connections, args.size,
                                  args.seconds)))
    elif args.command == "rr":
        print(json.dumps(request_response(args.host, args.port, args.count, args.seconds)))
    else:
        hold(args.host, args.port, args.checkpoints, args.window, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
