"""Start-up and shutdown of ``tcpcryptd run``, and the crash cleanup of ``tcpcryptd disable``."""

from __future__ import annotations

import logging

from tcpcryptd import __version__
from tcpcryptd.daemon.config import Config, engine_config
from tcpcryptd.daemon.control import ControlServer
from tcpcryptd.daemon.errors import DaemonError
from tcpcryptd.daemon.firewall import Firewall, RuleSpec, detect_backend
from tcpcryptd.daemon.keylog import KeyLog, KeyLoggingEngine
from tcpcryptd.daemon.logsetup import setup_logging
from tcpcryptd.daemon.loop import Daemon, PacketPath
from tcpcryptd.daemon.nfqueue import PacketQueue, Verdicts
from tcpcryptd.daemon.rawsock import RawSender
from tcpcryptd.daemon.sdnotify import notify
from tcpcryptd.engine.engine import Engine

log = logging.getLogger("tcpcryptd.daemon")


def rule_spec(config: Config) -> RuleSpec:
    return RuleSpec(config.queue.number, config.marks.injected, config.marks.seen,
                    config.marks.encrypted, config.firewall.skip_ports)


def run_daemon(config: Config) -> None:
    """Run until SIGTERM/SIGINT; rules are removed on every way out but SIGKILL.

    Order: raw sockets (capabilities), instance lock and control socket (a second instance
    fails before touching anything), the queue (bound before a rule can send packets to
    it), the rules. Teardown in reverse, rules first, so no packet is queued to a daemon
    that is going away; held packets are dropped, never let out unencrypted.
    """
    setup_logging(config.log.level)
    backend = detect_backend(config.firewall.backend)
    firewall = Firewall(backend, ipv6=config.firewall.ipv6)
    keylog = KeyLog(config.log.keylog) if config.log.keylog else None
    engine = Engine(engine_config(config)) if keylog is None else \
        KeyLoggingEngine(engine_config(config), keylog)
    verdicts = Verdicts(config.marks.seen)
    sender = RawSender(config.marks.injected, ipv6=config.firewall.ipv6)
    path = PacketPath(engine, sender, verdicts, config.marks.encrypted)
    daemon = Daemon(config, engine, path, backend.name)
    control = ControlServer(config.control.socket, daemon.handle)
    queue: PacketQueue | None = None
    rules_touched = False
    try:
        control.open()
        queue = PacketQueue(config.queue.number, config.queue.max_len, path.on_packet)
        rules_touched = True
        firewall.install(rule_spec(config))
        log.info("tcpcryptd %s running: queue %d, iptables-%s rules, control %s, "
                 "encryption of new connections %s", __version__, config.queue.number,
                 backend.name, config.control.socket,
                 "enabled" if daemon.enabled else "disabled")
        if keylog is not None:
            log.warning("key log on: session keys are written to %s", keylog.path)
        notify("READY=1")
        daemon.run(queue, control)
    finally:
        notify("STOPPING=1")
        cleanup_error: DaemonError | None = None
        if rules_touched:
            try:
                firewall.remove()
            except DaemonError as exc:
                cleanup_error = exc
        dropped = verdicts.drop_all_held()
        if dropped:
            log.info("dropped %d held packets", dropped)
        if queue is not None:
            queue.close()
        sender.close()
        if keylog is not None:
            keylog.close()
        control.close()
        if cleanup_error is not None:
            log.error("removing the firewall rules failed: %s (run `tcpcryptd disable`)",
                      cleanup_error)
        log.info("tcpcryptd stopped")


def remove_leftover_rules(config: Config) -> bool:
    """Remove rules a crashed (SIGKILLed) daemon left; True when there were any."""
    firewall = Firewall(detect_backend(config.firewall.backend), ipv6=config.firewall.ipv6)
    return firewall.remove()
