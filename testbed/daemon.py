"""The daemon under test, driven through its CLI exactly as a user would: ``tcpcryptd run
--control PATH`` inside ``ip netns exec``, ``tcpcryptd status --json``, SIGTERM/SIGKILL,
``tcpcryptd disable``."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from testbed.namespace import BedError, Namespace


def tcpcryptd_command() -> list[str]:
    """The installed ``tcpcryptd`` console script next to this interpreter (as a user runs it)."""
    script = Path(sys.executable).with_name("tcpcryptd")
    if script.exists():
        return [str(script)]
    found = shutil.which("tcpcryptd")
    if found:
        return [found]
    return [sys.executable, "-m", "tcpcryptd"]


class Daemon:
    """``tcpcryptd run`` in one namespace, with its own control socket and log file."""

    def __init__(self, ns: Namespace, workdir: Path, extra_args: Sequence[str] = (),
                 command: Sequence[str] | None = None, cwd: str | None = None) -> None:
        """``command`` replaces ``tcpcryptd`` as the program started with ``run`` (e.g. the
        daemon under a profiler); ``cwd`` is its working directory."""
        self.ns = ns
        self.command = list(command) if command is not None else tcpcryptd_command()
        self.cwd = cwd
        self.control = workdir / f"{ns.label}.sock"
        self.log_path = workdir / f"{ns.label}-daemon.log"
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self._log = None

    def cli(self, *args: str, check: bool = True,
            timeout: float = 15.0) -> subprocess.CompletedProcess:
        """Run ``tcpcryptd ARGS --control PATH`` in the namespace."""
        return self.ns.run(*tcpcryptd_command(), *args, "--control", str(self.control),
                           check=check, timeout=timeout)

    def start(self, timeout: float = 20.0) -> None:
        """Start the daemon and wait until ``tcpcryptd status`` answers."""
        self._log = open(self.log_path, "ab")
        self.proc = self.ns.popen([*self.command, "run", "--control", str(self.control),
                                   *self.extra_args], stdout=self._log, stderr=self._log,
                                  cwd=self.cwd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BedError(f"[{self.ns.label}] tcpcryptd run exited with "
                               f"{self.proc.returncode}:\n{self.log_tail()}")
            if self.cli("status", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise BedError(f"[{self.ns.label}] tcpcryptd status did not answer within {timeout}s:\n"
                       f"{self.log_tail()}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> dict:
        """``tcpcryptd status --json`` parsed (schema: docs/daemon.md)."""
        return json.loads(self.cli("status", "--json").stdout)

    def sessions(self) -> list[dict]:
        return list(self.status().get("sessions", []))

    def counters(self) -> dict[str, int]:
        return dict(self.status().get("counters", {}))

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            self.proc.kill()
            self.proc.wait()
            raise BedError(f"[{self.ns.label}] tcpcryptd ignored SIGTERM for {timeout}s") from exc
        finally:
            self._close_log()

    def kill(self) -> None:
        """SIGKILL, as a crash would: no cleanup by the daemon itself."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._close_log()

    def disable(self) -> subprocess.CompletedProcess:
        """``tcpcryptd disable``: with no daemon running this removes leftover rules."""
        return self.cli("disable")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no daemon log)"
        return "\n".join(text.splitlines()[-lines:])

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

