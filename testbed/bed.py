"""The bed: namespaces A and B (and router R), strict conntrack, daemons, captures, impairment.

Topologies (addresses exist only inside the bed's namespaces)::

    router=True:   A eth0 --- ra R rb --- eth0 B     A: 10.201.1.1  fd00:201:1::1
                                                     R: 10.201.1.254 / 10.201.2.254 (forwards)
                                                     B: 10.201.2.1  fd00:201:2::1
    router=False:  A eth0 ------------- eth0 B       A: 10.201.0.1  fd00:201::1
                                                     B: 10.201.0.2  fd00:201::2

Conntrack is loaded and strict in every namespace (``nf_conntrack_tcp_be_liberal=0`` and a
``--ctstate INVALID`` rule: DROP at the endpoints, count-only in the router), so a sequence-space
mistake of the daemon shows up as a stall and a counter, not as silent acceptance.

Impairment in R: random loss with an iptables ``statistic`` rule (the kernel has no netem),
reordering, duplication and resegmentation with tools/netimpair.py on an NFQUEUE.

NAT in R (nat table, IPv4 and IPv6): :meth:`TestBed.masquerade` puts A behind a source NAT
that rewrites address and port, :meth:`TestBed.port_forward` puts B behind a port forward to
R's A-side address.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from testbed.capture import Capture
from testbed.daemon import Daemon
from testbed.namespace import BedError, Namespace

#: iptables comments tagging the bed's own rules (so their counters can be read back).
INVALID_COMMENT = "tcpcryptd-testbed-invalid"
LOSS_COMMENT = "tcpcryptd-testbed-loss"
IMPAIR_COMMENT = "tcpcryptd-testbed-impair"
IMPAIR_QUEUE = 4242
NAT_COMMENT = "tcpcryptd-testbed-nat"
#: Ports R's source NAT gives A's connections: outside Linux's default ephemeral range
#: (32768-60999), so every connection's source port is rewritten, not only its address.
NAT_PORTS = (20000, 29999)
#: R's own addresses on A's link and on B's link (see the topology above; set up from here).
ROUTER_ADDRESSES = {("A", 4): "10.201.1.254", ("A", 6): "fd00:201:1::fe",
                    ("B", 4): "10.201.2.254", ("B", 6): "fd00:201:2::fe"}


@dataclass(frozen=True)
class _Plan:
    """Addresses of the endpoints A and B in one topology."""

    a_v4: str
    b_v4: str
    a_v6: str
    b_v6: str


_ROUTED = _Plan("10.201.1.1", "10.201.2.1", "fd00:201:1::1", "fd00:201:2::1")
_DIRECT = _Plan("10.201.0.1", "10.201.0.2", "fd00:201::1", "fd00:201::2")


class TestBed:
    """Namespaces A and B (and router R), strict conntrack, daemons, captures, impairment.

    Use as a context manager; :meth:`close` is idempotent and runs on every exit path.
    """

    __test__ = False  # not a pytest class

    def __init__(self, router: bool = True, workdir: str | Path | None = None) -> None:
        self.router = router
        self.run_id = secrets.token_hex(3)
        self._own_workdir = workdir is None
        #: Keep the work directory (pcaps, daemon logs) after close, e.g. for a failed test.
        self.keep_workdir = bool(os.environ.get("TCPCRYPTD_BED_KEEP"))
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="tcpcryptd-bed-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.a = Namespace(f"tcb-{self.run_id}-a", "A")
        self.b = Namespace(f"tcb-{self.run_id}-b", "B")
        self.r = Namespace(f"tcb-{self.run_id}-r", "R") if router else None
        self.plan = _ROUTED if router else _DIRECT
        self.daemons: list[Daemon] = []
        self._created: list[Namespace] = []
        self._impair: subprocess.Popen | None = None

    # ---- life cycle

    def __enter__(self) -> TestBed:
        try:
            self.setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def namespaces(self) -> list[Namespace]:
        return [ns for ns in (self.a, self.r, self.b) if ns is not None]

    def setup(self) -> None:
        for ns in self.namespaces:
            ns.create()
            self._created.append(ns)
            # No duplicate address detection: a tentative link-local address delays neighbour
            # discovery by a second (a retransmitted first SYN).
            for scope in ("all", "default"):
                ns.sysctl(f"net.ipv6.conf.{scope}.accept_dad", 0)
            ns.link_up("lo")
        if self.router:
            self.a.veth("eth0", self.r, "ra")
            self.b.veth("eth0", self.r, "rb")
            self.a.add_address("eth0", "10.201.1.1/24", "fd00:201:1::1/64")
            for side, iface in (("A", "ra"), ("B", "rb")):
                self.r.add_address(iface, f"{ROUTER_ADDRESSES[side, 4]}/24",
                                   f"{ROUTER_ADDRESSES[side, 6]}/64")
            self.b.add_address("eth0", "10.201.2.1/24", "fd00:201:2::1/64")
            self.a.default_route(ROUTER_ADDRESSES["A", 4], ROUTER_ADDRESSES["A", 6])
            self.b.default_route(ROUTER_ADDRESSES["B", 4], ROUTER_ADDRESSES["B", 6])
            self.r.sysctl("net.ipv4.ip_forward", 1)
            self.r.sysctl("net.ipv6.conf.all.forwarding", 1)
        else:
            self.a.veth("eth0", self.b, "eth0")
            self.a.add_address("eth0", "10.201.0.1/24", "fd00:201::1/64")
            self.b.add_address("eth0", "10.201.0.2/24", "fd00:201::2/64")
        self._strict_conntrack()

    def close(self) -> None:
        """Stop impairment, daemons and every process; delete the namespaces and temp files."""
        if self._impair is not None and self._impair.poll() is None:
            self._impair.terminate()
        for daemon in self.daemons:
            if daemon.running:
                try:
                    daemon.stop(timeout=10)
                except BedError:
                    pass
        for ns in self._created:
            ns.stop_all()
        for ns in reversed(self._created):
            ns.remove()
        self._created.clear()
        self.daemons.clear()
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _strict_conntrack(self) -> None:
        """Load conntrack on purpose and make it strict: a namespace runs it only once a rule
        needs it, so without the INVALID rule the daemon's sequence space would go unchecked."""
        for ns in self.namespaces:
            ns.sysctl("net.netfilter.nf_conntrack_tcp_be_liberal", 0)
            if ns is self.r:
                ns.both_families("-A", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID",
                                 "-m", "comment", "--comment", INVALID_COMMENT)
                continue
            for chain in ("INPUT", "OUTPUT"):
                ns.both_families("-A", chain, "-m", "conntrack", "--ctstate", "INVALID",
                                 "-m", "comment", "--comment", INVALID_COMMENT, "-j", "DROP")

    # ---- addressing

    def addr(self, label: str, family: int = 4) -> str:
        """Address of endpoint "A" or "B" for IP version 4 or 6."""
        return getattr(self.plan, f"{label.lower()}_v{family}")

    @staticmethod
    def url_host(address: str) -> str:
        return f"[{address}]" if ":" in address else address

    def ns(self, label: str) -> Namespace:
        return {"A": self.a, "B": self.b, "R": self.r}[label]

    def diagnostics(self) -> str:
        """Daemon status, socket states and conntrack verdicts: what to look at after a stall."""
        parts = [f"work directory: {self.workdir}", f"conntrack INVALID: {self.invalid_packets()}"]
        for daemon in self.daemons:
            parts.append(f"--- daemon {daemon.ns.label} ---")
            if daemon.running:
                status = daemon.cli("status", "--json", check=False)
                parts.append(status.stdout.decode(errors="replace").strip())
            parts.append(daemon.log_tail(20))
        for ns in (self.a, self.b):
            sockets = ns.run("ss", "-tino", check=False).stdout.decode(errors="replace")
            parts.append(f"--- sockets {ns.label} ---\n{sockets.strip()}")
        return "\n".join(parts)

    def invalid_packets(self) -> dict[str, int]:
        """Packets conntrack judged INVALID so far, per namespace (wire-view consistency)."""
        result = {}
        for ns in self.namespaces:
            chains = ("FORWARD",) if ns is self.r else ("INPUT", "OUTPUT")
            result[ns.label] = sum(ns.rule_packets("filter", chain, INVALID_COMMENT)
                                   for chain in chains)
        return result

    def router_addr(self, side: str, family: int = 4) -> str:
        """R's address on the link to endpoint ``side`` ("A" or "B"), IP version 4 or 6."""
        if self.r is None:
            raise BedError("no router namespace")
        return ROUTER_ADDRESSES[(side, family)]

    # ---- network address translation in the router namespace

    def _nat_rule(self, family: int, chain: str, *rule: str) -> None:
        """Append a rule to R's nat table for IP version ``family``, tagged
        :data:`NAT_COMMENT` (``rule`` ends with the target and its options)."""
        if self.r is None:
            raise BedError("NAT needs the router namespace")
        self.r.iptables("-t", "nat", "-A", chain, "-p", "tcp", "-m", "comment", "--comment",
                        NAT_COMMENT, *rule, v6=family == 6)

    def masquerade(self) -> None:
        """A behind a NAT: TCP from A leaves R towards B with R's B-side address and a
        source port from :data:`NAT_PORTS` (MASQUERADE, IPv4 and IPv6), so B sees
        neither A's address nor its port. The rules go with R's namespace at close."""
        low, high = NAT_PORTS
        for family in (4, 6):
            self._nat_rule(family, "POSTROUTING", "-o", "rb", "-j", "MASQUERADE",
                           "--to-ports", f"{low}-{high}")

    def port_forward(self, port: int, to_port: int) -> None:
        """B behind a NAT: TCP to R's A-side address on ``port`` is forwarded to B on
        ``to_port`` (DNAT, IPv4 and IPv6); B sees A's address, A only R's."""
        for family in (4, 6):
            self._nat_rule(family, "PREROUTING", "-i", "ra", "-d",
                           self.router_addr("A", family), "--dport", str(port), "-j", "DNAT",
                           "--to-destination",
                           f"{self.url_host(self.addr('B', family))}:{to_port}")

    # ---- daemons and captures

    def daemon(self, label: str, extra_args: Sequence[str] = ()) -> Daemon:
        """Start ``tcpcryptd run`` in namespace A or B and wait until it answers."""
        daemon = Daemon(self.ns(label), self.workdir, extra_args)
        self.daemons.append(daemon)
        daemon.start()
        return daemon

    def capture(self, name: str, label: str | None = None) -> Capture:
        """Start tcpdump on the wire between A and B (router's B side, or A's eth0)."""
        if label is None:
            ns, iface = (self.r, "rb") if self.router else (self.a, "eth0")
        else:
            ns, iface = self.ns(label), "eth0"
        return Capture(ns, iface, self.workdir / f"{name}.pcap").start()

    def router_captures(self, name: str) -> dict[str, Capture]:
        """tcpdump on both links of R: ``{"A": on A's link, "B": on B's link}`` (what a NAT
        between them changes shows up as the difference)."""
        if self.r is None:
            raise BedError("no router namespace")
        return {side: Capture(self.r, iface, self.workdir / f"{name}-{side}.pcap").start()
                for side, iface in (("A", "ra"), ("B", "rb"))}

    # ---- impairment in the router namespace

    def forward_loss(self, probability: float) -> None:
        """Random loss of forwarded packets in R (no netem here: iptables statistic)."""
        if self.r is None:
            raise BedError("loss emulation needs the router namespace")
        self.r.both_families("-I", "FORWARD", "1", "-p", "tcp", "-m", "statistic", "--mode",
                             "random", "--probability", f"{probability:.4f}", "-m", "comment",
                             "--comment", LOSS_COMMENT, "-j", "DROP")

    def loss_drops(self) -> int:
        """Packets dropped so far by :meth:`forward_loss` (v4 + v6)."""
        return self.r.rule_packets("filter", "FORWARD", LOSS_COMMENT) if self.r else 0

    def start_impairment(self, *options: str) -> subprocess.Popen:
        """Run tools/netimpair.py in R on forwarded TCP (v4 and v6) with ``options``."""
        if self.r is None:
            raise BedError("impairment needs the router namespace")
        tool = Path(__file__).resolve().parents[1] / "tools" / "netimpair.py"
        log = open(self.workdir / "netimpair.log", "wb")
        self._impair = self.r.popen(
            [sys.executable, str(tool), "--queue", str(IMPAIR_QUEUE), *options],
            stdout=subprocess.PIPE, stderr=log)
        assert self._impair.stdout is not None
        line = self._impair.stdout.readline().decode()
        if not line.startswith("netimpair: ready"):
            raise BedError(f"netimpair did not start: {line!r} "
                           f"{(self.workdir / 'netimpair.log').read_text(errors='replace')}")
        self.r.both_families("-A", "FORWARD", "-p", "tcp", "-m", "comment", "--comment",
                             IMPAIR_COMMENT, "-j", "NFQUEUE", "--queue-num", str(IMPAIR_QUEUE))
        return self._impair

    def stop_impairment(self) -> dict[str, int]:
        """Stop netimpair (held packets are released first) and return its counters."""
        if self._impair is None:
            raise BedError("no impairment running")
        self.r.both_families("-D", "FORWARD", "-p", "tcp", "-m", "comment", "--comment",
                             IMPAIR_COMMENT, "-j", "NFQUEUE", "--queue-num", str(IMPAIR_QUEUE))
        self._impair.send_signal(signal.SIGTERM)
        out, _ = self._impair.communicate(timeout=15)
        self._impair = None
        for line in out.decode().splitlines():
            if line.startswith("netimpair: stats "):
                return json.loads(line.split(" ", 2)[2])
        raise BedError("netimpair printed no statistics")

