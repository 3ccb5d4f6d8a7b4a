"""The capture checker itself: testbed.analyze_pcap against pcaps scapy writes.

These run without root: they prove that the wire checks of the other e2e tests can fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from testbed import BedError, analyze_pcap, make_payload

MARKER = b"TCPCRYPTD-PLAINTEXT-MARKER-unit"
ENO_SYN = (69, b"\x20\x21")          # kind 69, TEPs X25519 and X448 (RFC 8547 §4.1)
ENO_NON_SYN = (69, b"")


def _frames(with_eno: bool, payload: bytes, v6: bool = False) -> list:
    ip = (lambda **kw: IPv6(src="fd00::1", dst="fd00::2", **kw)) if v6 else \
        (lambda **kw: IP(src="10.0.0.1", dst="10.0.0.2", **kw))
    back = (lambda **kw: IPv6(src="fd00::2", dst="fd00::1", **kw)) if v6 else \
        (lambda **kw: IP(src="10.0.0.2", dst="10.0.0.1", **kw))
    eno = [ENO_SYN] if with_eno else []
    return [
        Ether() / ip() / TCP(sport=40000, dport=80, flags="S",
                             options=[("MSS", 1460), ("NOP", None), *eno]),
        Ether() / back() / TCP(sport=80, dport=40000, flags="SA", options=[*eno]),
        Ether() / ip() / TCP(sport=40000, dport=80, flags="A",
                             options=[ENO_NON_SYN] if with_eno else []),
        Ether() / ip() / TCP(sport=40000, dport=80, flags="PA") / payload,
        Ether() / ip() / TCP(sport=5555, dport=6666, flags="PA") / MARKER,
    ]


@pytest.mark.parametrize("v6", [False, True])
def test_eno_and_marker_are_found(tmp_path: Path, v6: bool) -> None:
    pcap = tmp_path / "eno.pcap"
    wrpcap(str(pcap), _frames(True, b"x" * 10 + MARKER + b"y" + MARKER, v6))
    report = analyze_pcap(pcap, MARKER)
    assert (report.packets, report.syn, report.syn_with_eno) == (5, 1, 1)
    assert (report.synack, report.synack_with_eno) == (1, 1)
    assert report.marker_hits == 3


def test_plain_handshake_has_no_eno_and_port_filter(tmp_path: Path) -> None:
    pcap = tmp_path / "plain.pcap"
    wrpcap(str(pcap), _frames(False, make_payload(1000, MARKER)))
    report = analyze_pcap(pcap, MARKER, ports=[80])
    assert (report.syn, report.syn_with_eno, report.synack, report.synack_with_eno) == (1, 0, 1, 0)
    assert report.marker_hits == 1          # the 5555 -> 6666 segment is filtered out
    assert report.ports == {80, 40000}
    assert "ENO in 0/1 SYN and 0/1 SYN-ACK, marker found 1 times" in report.summary()


def test_eno_after_other_options_and_truncated_options(tmp_path: Path) -> None:
    pcap = tmp_path / "opts.pcap"
    late_eno = Ether() / IP() / TCP(flags="S", options=[("Timestamp", (1, 0)), ("NOP", None),
                                                        ("WScale", 7), ENO_SYN])
    eol_first = Ether() / IP() / TCP(flags="S", options=[("EOL", None), ENO_SYN])
    wrpcap(str(pcap), [late_eno, eol_first])
    report = analyze_pcap(pcap, MARKER)
    assert (report.syn, report.syn_with_eno) == (2, 1)   # nothing after EOL is an option


def test_not_a_pcap(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pcap"
    bogus.write_bytes(b"hello, not a capture")
    with pytest.raises(BedError):
        analyze_pcap(bogus, MARKER)


def test_payload_carries_marker_every_4k() -> None:
    data = make_payload(64 * 1024, MARKER, seed=3)
    assert len(data) == 64 * 1024
    assert data.count(MARKER) == 16
    assert make_payload(64 * 1024, MARKER, seed=3) == data
