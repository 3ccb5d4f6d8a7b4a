"""Prometheus metrics of a running daemon (``metrics.listen``, off by default).

Served by the official client library (``prometheus_client``) from its own HTTP thread. The
daemon's loop is single-threaded and owns the engine, so the scrape thread never reads the
engine: at each scrape it asks the daemon for its ``status`` over the control socket, like
``tcpcryptd status --json`` does, and turns the answer into metrics. Two histograms are fed
from the daemon's thread (the client library's metrics are thread-safe): verdict latency
around every queued packet (:meth:`Metrics.timed`) and handshake duration per new session
(:meth:`Metrics.record`).

Metric names (docs/daemon.md "Metrics"):

* ``tcpcryptd_flows{state}``: connections the engine tracks, per state (gauge)
* ``tcpcryptd_connections_total{result, reason}``: ``encrypted``, ``plain`` and
  ``fallback`` connections, plain and fallback also per reason (``reason="all"``: total)
* ``tcpcryptd_sessions_total{resumed}``: sessions established, resumed ones apart
* ``tcpcryptd_aborts_total{reason}``: connections the engine aborted, per reason
* ``tcpcryptd_bytes_total{direction, layer}``: application (``plain``) and network
  (``wire``) bytes, ``out`` and ``in``; ``tcpcryptd_packets_total{direction}``
* ``tcpcryptd_handshake_duration_seconds``: from a connection's SYN to its session keys
* ``tcpcryptd_queue_dropped_total{cause}``: packets the kernel dropped before the daemon
  saw them: ``queue_full`` (queue.max_len reached), ``netlink`` (failed to reach the
  daemon), read from ``/proc/net/netfilter/nfnetlink_queue``
* ``tcpcryptd_verdict_latency_seconds``: time the daemon spends on one queued packet,
  from its arrival in the daemon to its verdict
* ``tcpcryptd_held_packets``, ``tcpcryptd_encryption_enabled`` (gauges) and
  ``tcpcryptd_counter_total{name}``: every status counter as it is
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from tcpcryptd.daemon import control
from tcpcryptd.daemon.config import parse_hostport
from tcpcryptd.daemon.errors import ConfigError, ControlError
from tcpcryptd.engine.events import Event, SessionEstablished

log = logging.getLogger(__name__)

#: Where the kernel counts what each netfilter queue dropped (per network namespace).
NFQUEUE_PROC = "/proc/net/netfilter/nfnetlink_queue"
#: Histogram buckets, seconds.
HANDSHAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                     10.0, 30.0)
VERDICT_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                   0.01, 0.025, 0.1)
#: The per-direction byte and packet fields of a status session object.
_TRAFFIC = (("bytes_out", "out", "plain"), ("bytes_in", "in", "plain"),
            ("bytes_out_wire", "out", "wire"), ("bytes_in_wire", "in", "wire"),
            ("packets_out", "out", "packets"), ("packets_in", "in", "packets"))

T = TypeVar("T")


def queue_drops(queue: int, path: str = NFQUEUE_PROC) -> tuple[int, int]:
    """(queue_dropped, user_dropped) of netfilter queue ``queue``; zeros if not bound."""
    try:
        with open(path, encoding="ascii") as proc:
            for line in proc:
                fields = line.split()
                if len(fields) >= 7 and int(fields[0]) == queue:
                    return int(fields[5]), int(fields[6])
    except (OSError, ValueError):
        pass
    return 0, 0


class Traffic:
    """Bytes and packets of every connection the daemon reported, kept monotonic.

    Each scrape sees the connections the engine tracks now; a connection's counts stay
    counted after it is gone (it is tracked until its linger ends after the close, so a
    scrape interval shorter than that misses nothing).
    """

    def __init__(self) -> None:
        self._live: dict[tuple[str, str], tuple[int, ...]] = {}
        self._ended = [0] * len(_TRAFFIC)

    def update(self, sessions: list[dict[str, Any]]) -> list[int]:
        """Totals over ended and current connections, in :data:`_TRAFFIC` order."""
        live: dict[tuple[str, str], tuple[int, ...]] = {}
        for session in sessions:
            key = (session["local"], session["remote"])
            values = tuple(int(session[name]) for name, _, _ in _TRAFFIC)
            before = self._live.get(key)
            if before is not None and any(v < b for v, b in zip(values, before)):
                self._end(before)          # a new connection on the same addresses
            live[key] = values
        for key, values in self._live.items():
            if key not in live:
                self._end(values)
        self._live = live
        totals = list(self._ended)
        for values in live.values():
            for i, value in enumerate(values):
                totals[i] += value
        return totals

    def _end(self, values: tuple[int, ...]) -> None:
        for i, value in enumerate(values):
            self._ended[i] += value


class StatusCollector(Collector):
    """Turns one ``status`` answer of the daemon into metrics, at each scrape."""

    def __init__(self, socket_path: str, queues: range,
                 sessions: Callable[[], dict[str, int]]) -> None:
        self.socket_path = socket_path
        self.queues = queues
        self.sessions = sessions
        self.traffic = Traffic()

    def collect(self) -> Iterator[Any]:
        try:
            status = control.request(self.socket_path, {"command": "status"}, timeout=5.0)
        except ControlError as exc:
            log.warning("metrics: the daemon did not answer status: %s", exc)
            return
        counters: dict[str, int] = status.get("counters", {})
        daemon = status.get("daemon", {})
        sessions = status.get("sessions", [])
        flows = GaugeMetricFamily("tcpcryptd_flows", "Connections the engine tracks, by state",
                                  labels=["state"])
        per_state: dict[str, int] = {}
        for session in sessions:
            per_state[session["state"]] = per_state.get(session["state"], 0) + 1
        for state, count in sorted(per_state.items()):
            flows.add_metric([state], count)
        yield flows
        connections = CounterMetricFamily(
            "tcpcryptd_connections", "Connections by result (encrypted, plain, fallback) and "
            "reason", labels=["result", "reason"])
        aborts = CounterMetricFamily("tcpcryptd_aborts", "Connections aborted, by reason",
                                     labels=["reason"])
        for result in ("encrypted", "plain", "fallback"):
            connections.add_metric([result, "all"], counters.get(result, 0))
        for name, value in sorted(counters.items()):
            result, _, reason = name.partition("_")
            if reason and result in ("plain", "fallback"):
                connections.add_metric([result, reason], value)
            elif reason and result == "aborts":
                aborts.add_metric([reason], value)
        yield connections
        yield aborts
        established = CounterMetricFamily("tcpcryptd_sessions", "tcpcrypt sessions established",
                                          labels=["resumed"])
        for resumed, count in sorted(self.sessions().items()):
            established.add_metric([resumed], count)
        yield established
        totals = self.traffic.update(sessions)
        traffic = CounterMetricFamily("tcpcryptd_bytes", "Bytes of ENO connections: plain = "
                                      "application bytes, wire = on the network",
                                      labels=["direction", "layer"])
        packets = CounterMetricFamily("tcpcryptd_packets", "Packets of ENO connections",
                                      labels=["direction"])
        for (_, direction, layer), total in zip(_TRAFFIC, totals):
            if layer == "packets":
                packets.add_metric([direction], total)
            else:
                traffic.add_metric([direction, layer], total)
        yield traffic
        yield packets
        dropped = CounterMetricFamily("tcpcryptd_queue_dropped", "Packets the kernel dropped "
                                      "before the daemon saw them", labels=["cause"])
        drops = [queue_drops(queue) for queue in self.queues]
        queue_full, netlink = sum(d[0] for d in drops), sum(d[1] for d in drops)
        dropped.add_metric(["queue_full"], queue_full)
        dropped.add_metric(["netlink"], netlink)
        yield dropped
        yield GaugeMetricFamily("tcpcryptd_held_packets", "Packets waiting for a deferred "
                                "verdict", value=daemon.get("held_packets", 0))
        yield GaugeMetricFamily("tcpcryptd_encryption_enabled", "1 while new connections are "
                                "encrypted", value=1 if daemon.get("enabled") else 0)
        every = CounterMetricFamily("tcpcryptd_counter", "Every status counter",
                                    labels=["name"])
        for name, value in sorted(counters.items()):
            every.add_metric([name], value)
        yield every


class Metrics:
    """The metrics endpoint and the two histograms the daemon's thread feeds."""

    def __init__(self, listen: str, control_socket: str, queue: int, workers: int = 1) -> None:
        """``queue``..``queue + workers - 1``: the queues whose kernel drops are counted.
        With several workers the supervisor serves the endpoint: the status counters are
        merged, but the histograms and the resumed-session counts (fed by a worker's own
        thread) stay empty."""
        self.host, self.port = parse_hostport(listen)
        self.registry = CollectorRegistry()
        self._sessions = {"false": 0, "true": 0}
        self.registry.register(StatusCollector(control_socket, range(queue, queue + workers),
                                               self._sessions.copy))
        self.handshake = Histogram(
            "tcpcryptd_handshake_duration_seconds", "From a connection's SYN to its "
            "session keys", buckets=HANDSHAKE_BUCKETS, registry=self.registry)
        self.verdict = Histogram(
            "tcpcryptd_verdict_latency_seconds", "Time the daemon spends on one queued "
            "packet, arrival to verdict", buckets=VERDICT_BUCKETS, registry=self.registry)
        self._server: Any = None

    def start(self) -> None:
        """Listen and serve from a thread; :class:`ConfigError` if the address is unusable."""
        try:
            self._server, _thread = start_http_server(self.port, self.host,
                                                      registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"metrics.listen: cannot listen on {self.host}:{self.port}: "
                              f"{exc.strerror}") from None
        log.info("metrics on http://%s/metrics",
                 f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}")

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def record(self, event: Event, handshake_seconds: float | None = None) -> None:
        """An engine event; a new session counts, with its handshake duration if known."""
        if isinstance(event, SessionEstablished):
            self._sessions["true" if event.resumed else "false"] += 1
            if handshake_seconds is not None:
                self.handshake.observe(handshake_seconds)

    def timed(self, callback: Callable[[T], None]) -> Callable[[T], None]:
        """``callback`` (the queue's per-packet handler), timed into the verdict histogram."""
        observe = self.verdict.observe
        clock = time.perf_counter

        def timed_callback(packet: T) -> None:
            started = clock()
            callback(packet)
            observe(clock() - started)
        return timed_callback
