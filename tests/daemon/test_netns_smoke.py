"""Smoke check of the real daemon in two private network namespaces (root only, ~5 s).

``tcpcryptd run`` in both, an encrypted transfer whose session ID both CLIs report alike,
then SIGKILL of one daemon: a new plain connection still works (``--queue-bypass``) and
``tcpcryptd disable`` removes the rules left behind. Addresses exist only inside the
namespaces this test creates and deletes. The full end-to-end suite is tests/e2e.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

TCPCRYPTD = [sys.executable, "-m", "tcpcryptd"]
A_ADDR, B_ADDR = "10.203.0.1", "10.203.0.2"

RECEIVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(); s.settimeout(15)
c, _ = s.accept(); c.settimeout(15)
data = b""
while chunk := c.recv(65536):
    data += chunk
    if len(data) >= int(sys.argv[3]):
        break
sys.stdout.write(str(len(data)) if data == bytes(range(256)) * (len(data) // 256) else "bad")
sys.stdout.flush()
c.sendall(b"k")
"""

SENDER = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=15)
c.sendall(bytes(range(256)) * (int(sys.argv[3]) // 256))
assert c.recv(1) == b"k"
print(c.getsockname()[1], flush=True)
sys.stdin.readline()
"""


def _usable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None or shutil.which("iptables") is None:
        return "needs iproute2 and iptables"
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "ip netns unusable"
    return None


class Pair:
    """Namespaces A and B on a veth pair, torn down on close whatever happened."""

    def __init__(self, workdir: Path) -> None:
        tag = uuid.uuid4().hex[:6]
        self.names = {"A": f"tcd-smoke-a-{tag}", "B": f"tcd-smoke-b-{tag}"}
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []
        for name in self.names.values():
            subprocess.run(["ip", "netns", "add", name], check=True)
        a, b = self.names["A"], self.names["B"]
        subprocess.run(["ip", "link", "add", f"va{tag}", "netns", a, "type", "veth", "peer",
                        "name", f"vb{tag}", "netns", b], check=True)
        for ns, dev, addr in ((a, f"va{tag}", A_ADDR), (b, f"vb{tag}", B_ADDR)):
            self.ip(ns, "addr", "add", f"{addr}/24", "dev", dev)
            self.ip(ns, "link", "set", dev, "up")
            self.ip(ns, "link", "set", "lo", "up")

    @staticmethod
    def ip(ns: str, *args: str) -> None:
        subprocess.run(["ip", "-n", ns, *args], check=True)

    def run(self, side: str, *argv: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.names[side], *argv],
                              capture_output=True, text=True, timeout=30, **kwargs)

    def popen(self, side: str, *argv: str, **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", self.names[side], *argv], **kwargs)
        self.procs.append(proc)
        return proc

    def control(self, side: str) -> str:
        return str(self.workdir / f"{side}.sock")

    def cli(self, side: str, *args: str) -> subprocess.CompletedProcess:
        return self.run(side, *TCPCRYPTD, *args, "--control", self.control(side))

    def start_daemon(self, side: str) -> subprocess.Popen:
        log = open(self.workdir / f"{side}.log", "ab")
        proc = self.popen(side, *TCPCRYPTD, "run", "--control", self.control(side),
                          stdout=log, stderr=log)
        deadline = time.monotonic() + 15
        while self.cli(side, "status").returncode != 0:
            assert proc.poll() is None, (self.workdir / f"{side}.log").read_text()
            assert time.monotonic() < deadline, "daemon did not answer"
            time.sleep(0.1)
        return proc

    def transfer(self, port: int, size: int) -> tuple[str, subprocess.Popen]:
        """Send ``size`` bytes A -> B; returns B's verdict and the still-open sender."""
        receiver = self.popen("B", sys.executable, "-c", RECEIVER, B_ADDR, str(port), str(size),
                              stdout=subprocess.PIPE, text=True)
        time.sleep(0.3)
        sender = self.popen("A", sys.executable, "-c", SENDER, B_ADDR, str(port), str(size),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        sender.stdout.readline()
        return receiver.stdout.read(), sender

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        for name in self.names.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def pair(tmp_path):
    problem = _usable()
    if problem:
        pytest.skip(problem)
    bed = Pair(tmp_path)
    try:
        yield bed
    finally:
        bed.close()


def test_encrypted_transfer_then_sigkill_leaves_plain_tcp_working(pair):
    daemon_a = pair.start_daemon("A")
    pair.start_daemon("B")
    verdict, sender = pair.transfer(7001, 256 * 1024)
    assert verdict == str(256 * 1024)
    id_a = pair.cli("A", "session-id", f"{B_ADDR}:7001")
    id_b = pair.cli("B", "session-id", "--local-port", "7001")
    assert id_a.returncode == 0, id_a.stderr
    assert len(bytes.fromhex(id_a.stdout.strip())) == 33
    assert id_a.stdout == id_b.stdout
    sender.communicate("\n", timeout=10)

    daemon_a.send_signal(signal.SIGKILL)
    daemon_a.wait(timeout=10)
    rules = pair.run("A", "iptables-save").stdout
    assert "TCPCRYPT_OUT" in rules  # a crash leaves them ...
    verdict, sender = pair.transfer(7002, 64 * 1024)
    assert verdict == str(64 * 1024)  # ... but plain TCP passes (queue bypass)
    sender.communicate("\n", timeout=10)
    # the encrypted connection is still in conntrack (TIME_WAIT): its guard stays
    cleaned = pair.cli("A", "disable")
    assert cleaned.stdout.startswith("no tcpcryptd is running: kept the guard table "
                                     "'inet tcpcryptd' for 1 connection(s)"), cleaned.stdout
    for tool in ("iptables-save", "ip6tables-save"):
        assert "TCPCRYPT" not in pair.run("A", tool).stdout
    assert "table inet tcpcryptd" in pair.run("A", "nft", "list", "ruleset").stdout
    pair.run("A", "conntrack", "-D", "-p", "tcp", "--dport", "7001")
    cleaned = pair.cli("A", "disable")
    assert cleaned.stdout == "no tcpcryptd is running: removed the firewall rules it left behind\n"
    assert "tcpcryptd" not in pair.run("A", "nft", "list", "ruleset").stdout
