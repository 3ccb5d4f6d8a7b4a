"""Network namespaces of the test bed: made and wired through netlink (pyroute2), commands
run inside them with ``ip netns exec`` (which also gives each its own ``/sys``).

Namespaces are named by the caller (the bed adds a random suffix) and bind-mounted under
``/run/netns`` like ``ip netns add`` does, so ``ip netns exec NAME`` and ``ip netns pids
NAME`` work on them. Interfaces are created inside a namespace, a veth peer is moved
straight into the other one: no interface ever exists in the root namespace.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence

from pyroute2 import NetNS, netns
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD


class BedError(RuntimeError):
    """A test-bed step failed (command error, daemon did not come up, timeout)."""


def environment_problem() -> str | None:
    """Why end-to-end runs cannot work here (not root, no ``ip``/iptables/NFQUEUE), or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables, NFQUEUE)"
    for tool in ("ip", "iptables", "ip6tables", "tcpdump"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = Namespace(f"tcbprobe{secrets.token_hex(3)}", "probe")
    try:
        probe.create()
    except BedError as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        rule = probe.run("iptables", "-t", "raw", "-A", "OUTPUT", "-p", "tcp", "-j", "NFQUEUE",
                         "--queue-num", "1", "--queue-bypass", check=False)
        if rule.returncode != 0:
            return f"kernel/iptables lacks NFQUEUE: {rule.stderr.decode(errors='replace').strip()}"
    finally:
        probe.remove()
    return None


class Namespace:
    """One network namespace; runs commands in it and remembers the processes it started."""

    def __init__(self, name: str, label: str) -> None:
        self.name = name
        self.label = label
        self.processes: list[subprocess.Popen] = []

    # ---- the namespace and its links (netlink)

    def create(self) -> None:
        try:
            netns.create(self.name)
        except (OSError, NetlinkError) as exc:
            raise BedError(f"[{self.label}] cannot create namespace {self.name}: {exc}") from exc

    def remove(self) -> None:
        """Delete the namespace (its interfaces go with it); nothing if it is gone already."""
        try:
            netns.remove(self.name)
        except (OSError, NetlinkError):
            pass

    def _netlink(self, what: str, request) -> None:
        """Run ``request(ipr)`` on an rtnetlink socket inside the namespace."""
        try:
            with NetNS(self.name) as ipr:
                request(ipr)
        except (OSError, NetlinkError) as exc:
            raise BedError(f"[{self.label}] {what}: {exc}") from exc

    def _index(self, ipr, ifname: str) -> int:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise BedError(f"[{self.label}] no interface {ifname}")
        return found[0]

    def link_up(self, ifname: str) -> None:
        self._netlink(f"link {ifname} up",
                      lambda ipr: ipr.link("set", index=self._index(ipr, ifname), state="up"))

    def veth(self, ifname: str, peer: Namespace, peer_ifname: str) -> None:
        """A veth pair: ``ifname`` here, ``peer_ifname`` in ``peer``, both up."""
        self._netlink(f"veth {ifname} <-> {peer.label} {peer_ifname}", lambda ipr: ipr.link(
            "add", ifname=ifname, kind="veth",
            peer={"ifname": peer_ifname, "net_ns_fd": peer.name}))
        self.link_up(ifname)
        peer.link_up(peer_ifname)

    def add_address(self, ifname: str, *interfaces: str) -> None:
        """Addresses in CIDR form; IPv6 ones without duplicate address detection (nodad)."""
        def request(ipr) -> None:
            index = self._index(ipr, ifname)
            for text in interfaces:
                interface = ipaddress.ip_interface(text)
                flags = IFA_F_NODAD if interface.version == 6 else 0
                ipr.addr("add", index=index, address=str(interface.ip),
                         prefixlen=interface.network.prefixlen, flags=flags)
        self._netlink(f"addresses {', '.join(interfaces)} on {ifname}", request)

    def default_route(self, *gateways: str) -> None:
        """One default route per gateway (an IPv4 and an IPv6 one)."""
        def request(ipr) -> None:
            for gateway in gateways:
                family = (socket.AF_INET6 if ipaddress.ip_address(gateway).version == 6
                          else socket.AF_INET)
                ipr.route("add", dst="default", gateway=gateway, family=family)
        self._netlink(f"default routes via {', '.join(gateways)}", request)

    # ---- commands and processes

    def argv(self, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, *args: str, check: bool = True, timeout: float = 30.0,
            input: bytes | None = None) -> subprocess.CompletedProcess:
        """Run a command to completion inside the namespace (bytes output)."""
        try:
            done = subprocess.run(self.argv(args), capture_output=True, timeout=timeout,
                                  input=input)
        except subprocess.TimeoutExpired as exc:
            raise BedError(f"[{self.label}] timed out after {timeout}s: {' '.join(args)}") from exc
        if check and done.returncode != 0:
            raise BedError(f"[{self.label}] {' '.join(args)} -> exit {done.returncode}: "
                           f"{done.stderr.decode(errors='replace').strip()}")
        return done

    def popen(self, args: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start a background process in the namespace; :meth:`stop_all` ends it."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        proc = subprocess.Popen(self.argv(args), **kwargs)
        self.processes.append(proc)
        return proc

    def wait_listening(self, port: int, timeout: float = 15.0) -> None:
        """Wait until a TCP socket listens on ``port`` here (``ss -ltn``)."""
        deadline = time.monotonic() + timeout
        while not self.run("ss", "-H", "-ltn", f"sport = :{port}").stdout.strip():
            if time.monotonic() > deadline:
                raise BedError(f"[{self.label}] nothing listens on port {port}")
            time.sleep(0.05)

    def sysctl(self, key: str, value: str | int) -> None:
        self.run("sysctl", "-q", "-w", f"{key}={value}")

    def iptables(self, *args: str, v6: bool = False, check: bool = True) -> None:
        self.run("ip6tables" if v6 else "iptables", "-w", *args, check=check)

    def both_families(self, *args: str) -> None:
        """The same iptables rule for IPv4 and IPv6."""
        self.iptables(*args)
        self.iptables(*args, v6=True)

    def rule_packets(self, table: str, chain: str, comment: str) -> int:
        """Packets counted by the rules tagged ``comment`` in ``table``/``chain`` (v4 + v6)."""
        total = 0
        for tool in ("iptables", "ip6tables"):
            out = self.run(tool, "-w", "-t", table, "-L", chain, "-v", "-x", "-n").stdout.decode()
            for line in out.splitlines():
                if f"/* {comment} */" in line:
                    total += int(line.split()[0])
        return total

    def stop_all(self) -> None:
        """End every process started here: SIGTERM, then SIGKILL after a grace period."""
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 5
        for proc in self.processes:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        # Children that outlived their `ip netns exec` parent (nc, shells) are still ours:
        # they run inside this namespace, which only this bed created.
        pids = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True,
                              text=True, timeout=10).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.processes.clear()

