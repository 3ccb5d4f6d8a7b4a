"""``tcpcryptd status`` latency at many flows (run: python -m bench.status_latency).

One in-process engine holds ``--flows`` flows: ``--encrypted`` of them established and
keyed through a second engine (as in :mod:`bench.flow_memory`), the rest half-open (one
outbound SYN each, state ``syn-sent``). A :class:`~tcpcryptd.daemon.loop.Daemon` answers on
a real control socket served from a thread. For each request variant, the best and the
median of ``--runs`` runs of:

* ``handle``: ``Daemon.handle`` alone (collect, filter, build the answer);
* ``round trip``: ``control.request`` over the socket (plus encoding, sending, decoding);
* ``cli``: ``tcpcryptd status`` with the variant's options through click's CliRunner
  (round trip plus the table or JSON printing).
"""

from __future__ import annotations

import argparse
import selectors
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from click.testing import CliRunner

from bench.flow_memory import FlowPairs, _syn_options
from tcpcryptd import cli
from tcpcryptd.daemon import control
from tcpcryptd.daemon.config import Config
from tcpcryptd.daemon.control import ControlServer
from tcpcryptd.daemon.loop import Daemon, PacketPath
from tcpcryptd.daemon.nfqueue import Verdicts
from tcpcryptd.engine import Direction
from tcpcryptd.packet.tcp import SYN

#: name -> (extra request fields, extra CLI arguments)
VARIANTS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "full": ({}, []),
    "full --json": ({}, ["--json"]),
    "--summary": ({"summary": True}, ["--summary"]),
    "--state encrypted --limit 20": ({"states": ["encrypted"], "limit": 20},
                                     ["--state", "encrypted", "--limit", "20"]),
    "--peer 10.0.0.2:20001": ({"peer": "10.0.0.2:20001"}, ["--peer", "10.0.0.2:20001"]),
}


class _NoSender:
    def send(self, packet: bytes) -> None:
        raise AssertionError("nothing is sent in this bench")


def build_engine(flows: int, encrypted: int) -> Any:
    """Engine A of a :class:`FlowPairs` with ``encrypted`` keyed and the rest half-open flows."""
    pairs = FlowPairs()
    ports = pairs.open_many(encrypted)
    first_half_open = (ports[-1] + 1) if ports else 20000
    for port in range(first_half_open, first_half_open + flows - encrypted):
        syn = pairs._seg(True, port, 1000, 0, SYN, options=_syn_options(1))
        pairs.a.handle_packet(0, syn, Direction.OUTBOUND, pairs.now)
    return pairs.a


class _Serve:
    """The control server's accept/read/write turns, from a thread."""

    def __init__(self, server: ControlServer) -> None:
        self.server = server
        self.selector = selectors.DefaultSelector()
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        assert self.server.listener is not None
        self.selector.register(self.server.listener, selectors.EVENT_READ, None)
        while not self.stop:
            for key, _ in self.selector.select(0.05):
                if key.data is None:
                    sock = self.server.accept()
                    if sock is not None:
                        self.selector.register(sock, selectors.EVENT_READ, "client")
                    continue
                self.server.readable(key.fd)
                while self.server.wants_write(key.fd) and not self.server.finished(key.fd):
                    self.server.writable(key.fd)
                if self.server.finished(key.fd):
                    self.selector.unregister(key.fileobj)
                    self.server.drop(key.fd)
            for fd in self.server.expire(self.server.clock()):
                self.selector.unregister(fd)
                self.server.drop(fd)


def _times(action: Callable[[], object], runs: int) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return min(samples), statistics.median(samples)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flows", type=int, default=20000)
    parser.add_argument("--encrypted", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    engine = build_engine(args.flows, args.encrypted)
    print(f"{len(engine.flows())} flows ({args.encrypted} encrypted) built in "
          f"{time.perf_counter() - started:.1f}s; best / median of {args.runs} runs")
    daemon = Daemon(Config(), engine, PacketPath(engine, _NoSender(), Verdicts(2, 1, 8)), "nft")
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/control.sock"
        server = ControlServer(path, daemon.handle)
        server.open()
        serve = _Serve(server)
        serve.thread.start()
        try:
            for name in args.variants:
                fields, options = VARIANTS[name]
                message = {"command": "status", **fields}
                rows = [("handle", lambda: daemon.handle(dict(message))),
                        ("round trip", lambda: control.request(path, message, timeout=60)),
                        ("cli", lambda: CliRunner().invoke(cli.main,
                                                           ["status", "--control", path,
                                                            *options]))]
                for label, action in rows:
                    best, median = _times(action, args.runs)
                    print(f"  {name:34} {label:10} {best * 1000:8.1f} ms {median * 1000:8.1f} ms")
        finally:
            serve.stop = True
            serve.thread.join(timeout=5)
            server.close()


if __name__ == "__main__":
    main()
