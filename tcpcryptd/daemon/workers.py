"""Several worker processes, one per queue, behind one control socket (``queue.workers``).

Worker ``k`` is a whole daemon instance without the firewall (:func:`tcpcryptd.daemon.
runner.serve`): its own engine, raw sockets and queue ``queue.number + k``, and a private
control socket ``CONTROL.wK``. The firewall's spread rules send each connection, both
directions, to one worker (:func:`tcpcryptd.daemon.firewall.spread_program`). The
supervisor holds the operator's control socket and answers from all workers: ``status``
sums the counters and merges the session rows or summaries, ``enable``/``disable`` reach
every worker, ``session-id`` finds the one that has the connection.

A worker that dies is started again on the same queue. Meanwhile its queue has no listener
and the kernel drops its packets (the spread rules have no ``--queue-bypass``); the new
worker does not know the connections the old one encrypted: the guard resets what the
local stack sends on them and the worker drops what arrives for them (the connmark says
encrypted), so none continues in plaintext.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import multiprocessing
import os
import selectors
import signal
import socket
import time
from collections import Counter
from multiprocessing.process import BaseProcess
from typing import Any

from tcpcryptd import __version__
from tcpcryptd.daemon import nftables
from tcpcryptd.daemon import status as status_view
from tcpcryptd.daemon.config import Config
from tcpcryptd.daemon.control import Caller, ControlServer, Request, Response, request
from tcpcryptd.daemon.errors import ControlError, DaemonError
from tcpcryptd.daemon.firewall import Firewall
from tcpcryptd.daemon.loop import authorize_session
from tcpcryptd.daemon.metrics import Metrics
from tcpcryptd.daemon.sdnotify import notify
from tcpcryptd.daemon.sockdiag import socket_owner

log = logging.getLogger("tcpcryptd.daemon")

#: Seconds a worker may take to bind its queue and answer on its control socket.
START_TIMEOUT = 30.0
#: Seconds between two looks at the workers' health.
CHECK_INTERVAL = 0.5
#: Seconds a worker gets to abort its connections and exit on SIGTERM.
STOP_TIMEOUT = 20.0
#: Seconds a forwarded control request may take (a large status answer takes seconds).
FORWARD_TIMEOUT = 60.0


def worker_socket(config: Config, index: int) -> str:
    return f"{config.control.socket}.w{index}"


def worker_config(config: Config, index: int, enabled: bool) -> Config:
    """Worker ``index``'s configuration: its queue, its control socket, the current switch."""
    return dataclasses.replace(
        config,
        queue=dataclasses.replace(config.queue, number=config.queue.number + index,
                                  log_group=config.queue.log_group + index, workers=1),
        control=dataclasses.replace(config.control, socket=worker_socket(config, index)),
        encryption=dataclasses.replace(config.encryption, enabled=enabled),
        metrics=dataclasses.replace(config.metrics, listen=""))   # served by the supervisor


#: prctl(2) option: the signal a process gets when its parent dies (linux/prctl.h)
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """SIGKILL this worker when the supervisor dies (also by SIGKILL): a worker must not go
    on encrypting for a daemon that is gone, its queue must lose its listener."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:   # the supervisor died before prctl took effect
        os._exit(1)


def _worker_main(config: Config, parent: int) -> None:
    """Entry of a worker process: one instance on its queue, no firewall."""
    from tcpcryptd.daemon.logsetup import setup_logging
    from tcpcryptd.daemon.runner import serve

    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the supervisor stops us with SIGTERM
    setup_logging(config.log.level)
    serve(config, firewall=None, backend_name="")


@dataclasses.dataclass
class Worker:
    index: int
    process: BaseProcess | None = None
    restarts: int = 0


class Supervisor:
    """Starts, watches and restarts the workers; answers the control socket for all."""

    def __init__(self, config: Config, workers: int, firewall: Firewall) -> None:
        self.config = config
        self.firewall = firewall
        self.enabled = config.encryption.enabled
        self.workers = [Worker(k) for k in range(workers)]
        self.started = time.monotonic()
        self.stopping = False
        self._context = multiprocessing.get_context("spawn")

    # ---- processes

    def start(self, worker: Worker) -> None:
        process = self._context.Process(
            target=_worker_main, name=f"tcpcryptd-worker-{worker.index}",
            args=(worker_config(self.config, worker.index, self.enabled), os.getpid()),
            daemon=False)
        process.start()
        worker.process = process
        path = worker_socket(self.config, worker.index)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if request(path, {"command": "ping"}, timeout=2.0).get("pid") == process.pid:
                    return
            except ControlError:
                pass
            if not process.is_alive() or time.monotonic() > deadline:
                raise DaemonError(f"worker {worker.index} (queue "
                                  f"{self.config.queue.number + worker.index}) did not start")
            time.sleep(0.05)

    def check(self) -> None:
        """Start again every worker that died."""
        for worker in self.workers:
            process = worker.process
            if process is None or process.is_alive():
                continue
            worker.restarts += 1
            log.warning("worker %d (pid %s) exited with %s: starting it again", worker.index,
                        process.pid, process.exitcode)
            try:
                self.start(worker)
            except DaemonError as exc:
                log.error("%s", exc)

    def stop(self) -> None:
        """SIGTERM every worker (each aborts its encrypted connections) and wait."""
        for worker in self.workers:
            if worker.process is not None and worker.process.is_alive():
                worker.process.terminate()
        for worker in self.workers:
            if worker.process is not None:
                worker.process.join(STOP_TIMEOUT)
                if worker.process.is_alive():
                    worker.process.kill()
                    worker.process.join()

    # ---- control requests

    def _ask(self, message: Request) -> list[Response]:
        answers = []
        for worker in self.workers:
            try:
                answers.append(request(worker_socket(self.config, worker.index), message,
                                       timeout=FORWARD_TIMEOUT))
            except ControlError as exc:
                answers.append({"ok": False, "error": f"worker {worker.index}: {exc}"})
        return answers

    def handle(self, message: Request, caller: Caller | None = None) -> Response:
        """Answer on the operator's control socket; the control server has already checked
        that ``caller`` may send this command at all (root for all but ``ping``/``session``)."""
        command = message["command"]
        if command == "ping":
            return {"ok": True, "pid": os.getpid(), "version": __version__,
                    "workers": len(self.workers)}
        if command in ("enable", "disable"):
            self.enabled = command == "enable"
            self._ask(message)
            return {"ok": True, "enabled": self.enabled}
        if command == "status":
            status_view.StatusQuery.from_request(message)   # field errors before any worker
            return self._status(message)
        if command == "session":
            return self._session(message, caller)
        return self._session_id(message)

    def _session(self, message: Request, caller: Caller | None) -> Response:
        """The TCPINC API request: the access check here (the workers see the supervisor, a
        privileged caller), then the answer of the worker that tracks the connection, or
        any worker's (all say ``plain`` for a connection none tracks)."""
        authorize_session(message, caller, socket_owner)
        answers = self._ask(message)
        found = [a for a in answers if a.get("ok")]
        if not found:
            raise ControlError(str(answers[0].get("error", "no such connection")))
        return next((a for a in found if a.get("state") != "plain"), found[0])

    def _status(self, message: Request) -> Response:
        answers = [a for a in self._ask(message) if a.get("ok")]
        counters: Counter[str] = Counter(nftables.kernel_counters())
        for answer in answers:
            counters.update(answer.get("counters", {}))
        merged: dict[str, Any] = {
            "ok": True,
            "daemon": {
                "pid": os.getpid(),
                "version": __version__,
                "enabled": self.enabled,
                "queue": self.config.queue.number,
                "firewall": self.firewall.backend.name,
                "uptime": round(time.monotonic() - self.started, 3),
                "held_packets": sum(a["daemon"]["held_packets"] for a in answers),
                "workers": [{"index": w.index, "queue": self.config.queue.number + w.index,
                             "pid": w.process.pid if w.process is not None else None,
                             "alive": w.process is not None and w.process.is_alive(),
                             "restarts": w.restarts} for w in self.workers],
            },
            "counters": dict(counters),
        }
        if message.get("summary"):
            states: Counter[str] = Counter()
            sessions = 0
            for answer in answers:
                sessions += answer["summary"]["sessions"]
                states.update(answer["summary"]["states"])
            merged["summary"] = {
                "sessions": sessions,
                "states": {s: states[s] for s in status_view.STATES if states[s]},
                "connections": {name: counters.get(counter, 0)
                                for name, counter in status_view.SUMMARY_COUNTERS.items()},
            }
            return merged
        rows = [row for answer in answers for row in answer["sessions"]]
        limit = message.get("limit")
        merged["matched"] = sum(answer["matched"] for answer in answers)
        merged["sessions"] = rows if limit is None else rows[:limit]
        return merged

    def _session_id(self, message: Request) -> Response:
        answers = self._ask(message)
        found = [a for a in answers if a.get("ok")]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ControlError(f"{len(found)} encrypted connections match; be more specific")
        errors = [str(a.get("error", "")) for a in answers]
        # the most telling refusal: a field error or "no session yet" over "no such connection"
        for error in errors:
            if "no such connection" not in error and not error.startswith("worker "):
                raise ControlError(error)
        raise ControlError("no such connection")

    # ---- the loop

    def run(self, control: ControlServer) -> None:
        """Serve the control socket and watch the workers until SIGTERM/SIGINT."""
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        previous_wakeup = signal.set_wakeup_fd(wake_w.fileno())

        def on_signal(signum: int, _frame: Any) -> None:
            log.info("%s received, stopping", signal.Signals(signum).name)
            self.stopping = True

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        selector = selectors.DefaultSelector()
        assert control.listener is not None
        selector.register(control.listener, selectors.EVENT_READ, "listen")
        selector.register(wake_r, selectors.EVENT_READ, "wake")
        try:
            next_check = time.monotonic() + CHECK_INTERVAL
            while not self.stopping:
                deadlines = [next_check] + [d for d in (control.next_deadline(),) if d is not None]
                timeout = max(0.0, min(deadlines) - time.monotonic())
                for key, events in selector.select(timeout):
                    self._dispatch(key, events, selector, control)
                for fd in control.expire(control.clock()):
                    selector.unregister(fd)
                    control.drop(fd)
                if time.monotonic() >= next_check and not self.stopping:
                    self.check()
                    next_check = time.monotonic() + CHECK_INTERVAL
        finally:
            selector.close()
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            wake_r.close()
            wake_w.close()

    def _dispatch(self, key: selectors.SelectorKey, events: int,
                  selector: selectors.BaseSelector, control: ControlServer) -> None:
        if key.data == "wake":
            with contextlib.suppress(BlockingIOError):
                key.fileobj.recv(512)  # type: ignore[union-attr]
        else:
            control.on_event(key, events, selector)


def run_supervisor(config: Config, workers: int, firewall: Firewall,
                   remove_rules: Any, rule_spec: Any) -> None:
    """Workers first (each binds its queue), then the rules; on the way out the workers stop
    (each aborts its encrypted connections), then the rules go."""
    supervisor = Supervisor(config, workers, firewall)
    with contextlib.ExitStack() as stack:
        control = ControlServer(config.control.socket, supervisor.handle)
        control.open()
        stack.callback(control.close)
        if config.metrics.listen:   # scrapes read the merged status on the control socket
            metrics = Metrics(config.metrics.listen, config.control.socket, config.queue.number,
                              workers)
            metrics.start()
            stack.callback(metrics.stop)
        stack.callback(remove_rules, firewall, config)   # also after a partial install
        stack.callback(supervisor.stop)                  # before the rules go
        for worker in supervisor.workers:
            supervisor.start(worker)
        firewall.install(rule_spec(config))
        log.info("tcpcryptd %s running: %d workers on queues %d..%d, iptables-%s rules, "
                 "control %s, encryption of new connections %s", __version__, workers,
                 config.queue.number, config.queue.number + workers - 1,
                 firewall.backend.name, config.control.socket,
                 "enabled" if supervisor.enabled else "disabled")
        notify("READY=1")
        stack.callback(log.info, "stopping: removing the firewall rules")
        stack.callback(notify, "STOPPING=1")
        supervisor.run(control)
