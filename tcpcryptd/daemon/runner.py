"""Start-up and shutdown of ``tcpcryptd run``, and the crash cleanup of ``tcpcryptd disable``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from tcpcryptd import __version__
from tcpcryptd.daemon.config import Config, engine_config
from tcpcryptd.daemon.control import ControlServer
from tcpcryptd.daemon.errors import DaemonError
from tcpcryptd.daemon.firewall import Firewall, Removal, RuleSpec, detect_backend
from tcpcryptd.daemon import nftables
from tcpcryptd.daemon.nftables import OffloadSpec, require_selectors
from tcpcryptd.daemon.heap import HeapTrimmer, glibc_malloc_trim
from tcpcryptd.daemon.keylog import KeyLog
from tcpcryptd.daemon.logsetup import setup_logging
from tcpcryptd.daemon.loop import Daemon, PacketPath
from tcpcryptd.daemon.metrics import Metrics
from tcpcryptd.daemon.nflog import PlainLog
from tcpcryptd.daemon.nfqueue import PacketQueue, Verdicts
from tcpcryptd.daemon.rawsock import RawSender
from tcpcryptd.daemon.sdnotify import notify
from tcpcryptd.engine.engine import Engine
from tcpcryptd.engine.events import Event, SessionEstablished

log = logging.getLogger("tcpcryptd.daemon")


def rule_spec(config: Config) -> RuleSpec:
    """The rules of ``config``; worker ``k`` reads queue ``queue.number + k`` and nflog
    group ``queue.log_group + k``."""
    marks = config.marks
    workers = config.queue.worker_count()
    offload = OffloadSpec(marks.injected, marks.seen, marks.encrypted, marks.plain,
                          timeout=max(1, round(config.limits.idle_timeout)),
                          max_elements=config.firewall.offload_max,
                          queued_syns=require_selectors(config.policy.rules,
                                                        config.policy.default),
                          skip_ports=config.firewall.skip_ports,
                          mark_tentative=marks.tentative,
                          log_groups=tuple(range(config.queue.log_group,
                                                 config.queue.log_group + workers)),
                          encrypted_timeout=nftables.established_timeout())
    return RuleSpec(config.queue.number, offload, workers)


def run_daemon(config: Config) -> None:
    """Run until SIGTERM/SIGINT; rules are removed on every way out but SIGKILL.

    Order: signal handlers, raw sockets (capabilities), instance lock and control socket (a
    second instance fails before touching anything), the queue (bound before a rule can
    send packets to it), the rules. Teardown in reverse: encrypted connections are aborted
    (RST both ways), then the queue rules go, so no packet is queued to a daemon that is
    going away; the guard table stays while conntrack still records an encrypted
    connection; held packets are dropped, never let out unencrypted.
    """
    setup_logging(config.log.level)
    backend = detect_backend(config.firewall.backend)
    firewall = Firewall(backend, ipv6=config.firewall.ipv6)
    workers = config.queue.worker_count()
    if workers > 1:
        from tcpcryptd.daemon.workers import run_supervisor

        run_supervisor(config, workers, firewall, _remove_rules, rule_spec)
        return
    serve(config, firewall, backend.name)


def serve(config: Config, firewall: Firewall | None, backend_name: str) -> None:
    """One instance on queue ``config.queue.number``; ``firewall`` None: a worker of
    :mod:`tcpcryptd.daemon.workers` (its supervisor owns the rules)."""
    with contextlib.ExitStack() as stack:
        # every engine-made packet belongs to a connection with a session or key exchange:
        # the encrypted mark makes the kernel record it as encrypted (daemon/nftables.py)
        sender = RawSender(config.marks.injected | config.marks.encrypted,
                           ipv6=config.firewall.ipv6)
        stack.callback(sender.close)
        keylog = None
        if config.log.keylog:
            keylog = KeyLog(config.log.keylog)
            stack.callback(keylog.close)
            log.warning("KEY LOG ON: the traffic keys of every tcpcrypt session are written to "
                        "%s; anyone who reads it can decrypt captured traffic. Debugging only: "
                        "unset log.keylog and delete the file when done", keylog.path)
        metrics = (Metrics(config.metrics.listen, config.control.socket, config.queue.number)
                   if config.metrics.listen else None)
        engine = Engine(engine_config(config))
        verdicts = Verdicts(config.marks.seen, config.marks.encrypted, config.marks.plain)
        path = PacketPath(engine, sender, verdicts, heap=HeapTrimmer(glibc_malloc_trim()),
                          events=_event_sink(keylog, metrics))
        daemon = Daemon(config, engine, path, backend_name,
                        kernel_counters=nftables.kernel_counters if firewall else dict)
        stack.callback(daemon.catch_signals())
        control = ControlServer(config.control.socket, daemon.handle, clock=daemon.clock)
        control.open()
        stack.callback(control.close)
        if metrics is not None:   # scrapes ask the daemon for its status on the control socket
            metrics.start()
            stack.callback(metrics.stop)
        queue = PacketQueue(config.queue.number, config.queue.max_len,
                            path.on_packet if metrics is None else metrics.timed(path.on_packet),
                            held=lambda: verdicts.held, counters=path.counters)
        stack.callback(queue.close)
        # bound before the rules log to it (daemon/nflog.py)
        plain_log = PlainLog(config.queue.log_group, path.on_peer_plain, path.counters)
        stack.callback(plain_log.close)
        stack.callback(_drop_held, verdicts)
        if firewall is not None:
            stack.callback(_remove_rules, firewall, config)  # also after a partial install
            firewall.install(rule_spec(config))
        stack.callback(path.shutdown)
        log.info("tcpcryptd %s %s: queue %d, iptables-%s rules, control %s, "
                 "encryption of new connections %s", __version__,
                 "running" if firewall else "worker", config.queue.number,
                 backend_name, config.control.socket,
                 "enabled" if daemon.enabled else "disabled")
        if firewall is not None:
            notify("READY=1")
            stack.callback(log.info, "stopping: removing the firewall rules")
            stack.callback(notify, "STOPPING=1")
        daemon.run(queue, control, plain_log)


def _event_sink(keylog: KeyLog | None,
                metrics: Metrics | None) -> Callable[[Event], None] | None:
    """Where the engine's events (``Result.events``) go: the key log and the metrics (a new
    session with its handshake duration); None when neither is on."""
    if keylog is None and metrics is None:
        return None

    def record(event: Event) -> None:
        if keylog is not None:
            keylog.record(event)
        if metrics is not None:
            metrics.record(event, event.handshake_seconds
                           if isinstance(event, SessionEstablished) else None)
    return record


def _remove_rules(firewall: Firewall, config: Config) -> None:
    try:
        removal = firewall.remove(config.marks.encrypted)
    except DaemonError as exc:
        log.error("removing the firewall rules failed: %s (run `tcpcryptd disable`)", exc)
        return
    (log.warning if removal.kept else log.info)("%s", removal.describe())


def _drop_held(verdicts: Verdicts) -> None:
    dropped = verdicts.drop_all_held()
    if dropped:
        log.info("dropped %d held packets", dropped)


def remove_leftover_rules(config: Config) -> Removal:
    """Remove rules a crashed (SIGKILLed) or stopped daemon left, but a guard still needed."""
    firewall = Firewall(detect_backend(config.firewall.backend), ipv6=config.firewall.ipv6)
    return firewall.remove(config.marks.encrypted)
