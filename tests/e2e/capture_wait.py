"""Stop a capture only once it holds the segments a test is about.

tcpdump receives packets from the kernel in blocks, up to a second late unless it runs in
immediate mode, and a SIGINT discards what is still in the kernel's ring: a short exchange
can end before any of it reached the file. These helpers poll the pcap file for the closing
segments instead of sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tcpcryptd.packet.tcp import FIN, RST, TCPPacket
from testbed import BedError, Capture, pcap_segments


def stop_when(capture: Capture, done: Callable[[list[TCPPacket]], bool],
              timeout: float = 20.0) -> None:
    """Stop ``capture`` once ``done(segments so far)`` holds, or after ``timeout`` seconds
    (the test's own assertions then say what is missing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            segments = [segment for segment in pcap_segments(capture.path) if segment is not None]
        except BedError:   # the file header is not written yet
            segments = []
        if done(segments):
            break
        time.sleep(0.1)
    capture.stop()


def on_port(port: int, flag: int) -> Callable[[list[TCPPacket]], set[tuple[int, int]]]:
    """The directions ((sport, dport)) of the segments on ``port`` with ``flag`` set."""
    def directions(segments: list[TCPPacket]) -> set[tuple[int, int]]:
        return {(segment.sport, segment.dport) for segment in segments
                if segment.flags & flag and port in (segment.sport, segment.dport)}
    return directions


def stop_when_closed(capture: Capture, port: int, timeout: float = 20.0) -> None:
    """... once both FINs of the connection on ``port`` are in the file: every segment
    that carries data came before them (after them only the last ACK)."""
    fins = on_port(port, FIN)
    stop_when(capture, lambda segments: len(fins(segments)) >= 2, timeout)


def stop_when_reset(capture: Capture, port: int, timeout: float = 20.0) -> None:
    """... once a RST on ``port`` is in the file."""
    resets = on_port(port, RST)
    stop_when(capture, lambda segments: bool(resets(segments)), timeout)
