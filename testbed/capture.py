"""Captures of the wire: tcpdump in a namespace, and what a capture shows about TCP-ENO.

:func:`analyze_pcap` counts the ENO option (kind 69, RFC 8547 §4.1) in SYN and SYN-ACK and
searches TCP payloads for a plaintext marker: the check that an encrypted transfer left no
application byte readable on the wire.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from scapy.data import DLT_EN10MB, DLT_LINUX_SLL, DLT_RAW_ALT, ETH_P_IP, ETH_P_IPV6
from scapy.error import Scapy_Exception
from scapy.utils import RawPcapReader

from tcpcryptd.packet import options as tcp_options
from tcpcryptd.packet.tcp import ACK, SYN, PacketError, TCPPacket
from testbed.namespace import BedError, Namespace


@dataclass
class CaptureReport:
    """What a capture shows about TCP-ENO and plaintext (RFC 8547 §4.1: ENO is option 69)."""

    packets: int = 0
    tcp_packets: int = 0
    syn: int = 0
    syn_with_eno: int = 0
    synack: int = 0
    synack_with_eno: int = 0
    payload_bytes: int = 0
    marker_hits: int = 0
    ports: set[int] = field(default_factory=set)
    #: Packets tcpdump reported as dropped by the kernel (then the capture is incomplete).
    kernel_drops: int = 0

    def summary(self) -> str:
        incomplete = f" (tcpdump lost {self.kernel_drops})" if self.kernel_drops else ""
        return (f"capture: {self.packets} packets{incomplete}, ENO in {self.syn_with_eno}/"
                f"{self.syn} SYN and {self.synack_with_eno}/{self.synack} SYN-ACK, marker found "
                f"{self.marker_hits} times")


#: Link header length and where its EtherType is, per link type (pcap's LINKTYPE_ values).
_LINK_HEADERS = {DLT_EN10MB: (14, 12), DLT_LINUX_SLL: (16, 14)}
_ETHERTYPE_VLAN = 0x8100                     # IEEE 802.1Q tag: 4 bytes before the EtherType
_IP_VERSIONS = {ETH_P_IP: 4, ETH_P_IPV6: 6}


def _ip_packet(linktype: int, frame: bytes) -> bytes | None:
    """The IP packet of a captured frame, or None for non-IP frames."""
    if linktype == DLT_RAW_ALT:
        return frame if frame and frame[0] >> 4 in (4, 6) else None
    if linktype not in _LINK_HEADERS:
        raise BedError(f"unsupported capture link type {linktype}")
    offset, type_at = _LINK_HEADERS[linktype]
    while len(frame) >= offset:
        ethertype = int.from_bytes(frame[type_at:type_at + 2], "big")
        if ethertype != _ETHERTYPE_VLAN:
            return frame[offset:] if ethertype in _IP_VERSIONS else None
        offset, type_at = offset + 4, type_at + 4
    return None


def pcap_segments(path: str | Path) -> Iterator[TCPPacket | None]:
    """Every record of a capture file: its TCP segment, None for anything else.

    scapy reads the file (pcap or pcapng) record by record; the link header is stripped here
    and the IP packet parsed by the daemon's own codec (:mod:`tcpcryptd.packet.tcp`).
    scapy's full dissection of each packet costs about 90 us (measured): seconds for the
    capture of one 50 MB transfer.
    """
    try:
        reader = RawPcapReader(str(path))
    except Scapy_Exception as exc:
        raise BedError(f"{path}: {exc}") from exc
    with reader:
        for frame, meta in reader:
            # pcapng records carry their interface's link type, pcap has one per file
            ip = _ip_packet(getattr(meta, "linktype", reader.linktype), frame)
            segment = None
            if ip is not None:
                try:
                    segment = TCPPacket.parse(ip)
                except PacketError:
                    pass
            yield segment


def _has_eno(segment: TCPPacket) -> bool:
    """True if the segment carries an ENO option (a malformed option list carries none)."""
    try:
        return bool(tcp_options.eno_options(segment.options))
    except PacketError:
        return False


def analyze_pcap(path: str | Path, marker: bytes, ports: Sequence[int] = ()) -> CaptureReport:
    """Count packets, ENO options on SYN/SYN-ACK and ``marker`` occurrences in TCP payloads.

    With ``ports``, only segments with one of those ports as source or destination count.
    """
    report = CaptureReport()
    wanted = set(ports)
    for segment in pcap_segments(path):
        report.packets += 1
        if segment is None:
            continue
        sport, dport = segment.sport, segment.dport
        if wanted and sport not in wanted and dport not in wanted:
            continue
        report.tcp_packets += 1
        report.ports.update((sport, dport))
        if segment.flags & SYN:
            has_eno = _has_eno(segment)
            if segment.flags & ACK:
                report.synack += 1
                report.synack_with_eno += has_eno
            else:
                report.syn += 1
                report.syn_with_eno += has_eno
        payload = bytes(segment.payload)
        report.payload_bytes += len(payload)
        if payload:
            report.marker_hits += payload.count(marker)
    return report


class Capture:
    """tcpdump of TCP on one interface of one namespace, written to a pcap file.

    In immediate mode: otherwise the kernel hands tcpdump its packets in blocks up to a
    second late, and the SIGINT of :meth:`stop` discards a block not yet handed over, so a
    short exchange could end before any of it reached the file.
    """

    def __init__(self, ns: Namespace, iface: str, path: Path) -> None:
        self.ns = ns
        self.iface = iface
        self.path = path
        self.stderr_path = path.with_suffix(".tcpdump.txt")
        self.proc: subprocess.Popen | None = None
        self.kernel_drops = 0
        self._stderr = None

    def start(self, timeout: float = 15.0) -> Capture:
        self._stderr = open(self.stderr_path, "wb")
        self.proc = self.ns.popen(
            ["tcpdump", "-i", self.iface, "-s", "0", "-B", "32768", "-U", "--immediate-mode",
             "-n", "-Z", "root", "-w", str(self.path), "tcp"], stderr=self._stderr)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b"listening on" in self.stderr_path.read_bytes():
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise BedError(f"tcpdump did not start: {self.stderr_path.read_text(errors='replace')}")

    def stop(self) -> int:
        """Stop tcpdump (SIGINT flushes the file); returns packets dropped by the kernel."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=15)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        found = re.search(rb"(\d+) packets? dropped by kernel", self.stderr_path.read_bytes())
        self.kernel_drops = int(found.group(1)) if found else 0
        return self.kernel_drops

    def analyze(self, marker: bytes, ports: Sequence[int] = ()) -> CaptureReport:
        report = analyze_pcap(self.path, marker, ports)
        report.kernel_drops = self.kernel_drops
        return report
