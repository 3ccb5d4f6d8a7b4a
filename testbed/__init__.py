"""Network-namespace test bed for end-to-end runs of tcpcryptd (development only).

Used by the end-to-end tests (tests/e2e), ``make demo`` (:mod:`testbed.demo`),
the benchmark (bench/) and tools/nfq_gso_probe.py. It is not part of the installed package
(``pip install .`` installs ``tcpcryptd`` only); run it from a checkout.

Everything lives in namespaces the bed creates with a random suffix; nothing touches the
root namespace's interfaces, routes or firewall, and :meth:`TestBed.close` removes it all
(processes first, then namespaces), also after a failure.

Modules: :mod:`~testbed.namespace` (namespaces and links through netlink, commands inside
them), :mod:`~testbed.daemon` (``tcpcryptd`` driven through its CLI), :mod:`~testbed.capture`
(tcpdump, and the ENO/plaintext check of a capture), :mod:`~testbed.payload` (payloads with
a plaintext marker), :mod:`~testbed.bed` (the topologies, strict conntrack, impairment).
"""

from testbed.bed import IMPAIR_COMMENT, INVALID_COMMENT, LOSS_COMMENT, TestBed
from testbed.capture import Capture, CaptureReport, analyze_pcap, pcap_segments
from testbed.daemon import Daemon, tcpcryptd_command
from testbed.namespace import BedError, Namespace, environment_problem
from testbed.payload import make_payload, sha256_file

__all__ = [
    "IMPAIR_COMMENT",
    "INVALID_COMMENT",
    "LOSS_COMMENT",
    "BedError",
    "Capture",
    "CaptureReport",
    "Daemon",
    "Namespace",
    "TestBed",
    "analyze_pcap",
    "environment_problem",
    "make_payload",
    "pcap_segments",
    "sha256_file",
    "tcpcryptd_command",
]
