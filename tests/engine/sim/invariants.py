"""The properties of docs/daemon.md "What the tests check", checked on a finished simulation
run.

:class:`WireLog` records every payload byte each side puts on the wire by its stream offset
(``seq - (ISN + 1)``, unwrapped).  From it the checks derive:

1. the application byte streams arrive intact, both directions (sha256 and length);
2. the wire never carries two different bytes at one (direction, offset) of one flow -- on an
   ENO flow that is the AEAD nonce-reuse check (RFC 8548 §3.6);
3. a tampered frame aborts the flow and nothing unverified is delivered (delivered bytes are a
   prefix of the written ones and the stack saw a reset);
4. on an ENO flow no application byte crosses the wire in plaintext (no 16-byte window of the
   plaintext appears in the wire stream) and the wire stream is exactly an Init message
   followed by back-to-back frames (RFC 8548 §4.1, §4.2);
5. a flow without ENO carries exactly the application stream, as if no engine were there.

Each check returns human-readable violations; a run passes when there are none.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

from tcpcryptd.packet import options
from tcpcryptd.packet.tcp import ACK, SYN, URG, TCPPacket

from .stack import seq_diff
from .wire import C2S, S2C

#: Per-frame overhead: control(1) + clen(2) + flags(1) + tag(16) (RFC 8548 §4.2).
FRAME_HEADER = 3
MIN_CLEN = 1 + 16


@dataclass
class StreamRecord:
    """Everything one side sent on the wire, by stream offset."""

    isn: int | None = None
    syn_options: bytes | None = None
    #: a SYN-ACK was sent in this direction (after a SYN, in a simultaneous open)
    syn_acked: bool = False
    stream: bytearray = field(default_factory=bytearray)
    known: bytearray = field(default_factory=bytearray)
    high: int = 0
    conflicts: list[str] = field(default_factory=list)
    payload_packets: int = 0
    urg_packets: int = 0
    #: the ACK field of every non-SYN segment with ACK set, in the order sent
    acks: list[int] = field(default_factory=list)

    def add(self, seq: int, payload: bytes) -> None:
        """Record ``payload`` at ``seq``; a differing byte at a known offset is a conflict."""
        if self.isn is None:
            self.conflicts.append(f"payload at seq {seq} before any SYN")
            return
        offset = self.high + seq_diff(seq, (self.isn + 1 + self.high) % (1 << 32))
        if offset < 0:
            self.conflicts.append(f"payload at offset {offset} (before the first data byte)")
            return
        end = offset + len(payload)
        self.payload_packets += 1
        if end > len(self.stream):
            grow = end - len(self.stream)
            self.stream += bytes(grow)
            self.known += bytes(grow)
        self.high = max(self.high, end)
        mask = self.known[offset:end]
        if mask.count(0) == len(mask):
            self.stream[offset:end] = payload
        elif mask.count(1) == len(mask):
            if self.stream[offset:end] != payload:
                self._conflict(offset, payload)
        else:
            for i, byte in enumerate(payload):
                if self.known[offset + i] and self.stream[offset + i] != byte:
                    self._conflict(offset, payload)
                    break
                self.stream[offset + i] = byte
        self.known[offset:end] = b"\x01" * len(payload)

    def _conflict(self, offset: int, payload: bytes) -> None:
        first = next(i for i, b in enumerate(payload) if self.known[offset + i] and self.stream[offset + i] != b)
        self.conflicts.append(
            f"offset {offset + first}: wire byte {payload[first]:#04x} after {self.stream[offset + first]:#04x}"
            f" (segment at offset {offset}, {len(payload)} bytes)"
        )

    def contiguous(self) -> bytes:
        """The wire stream from offset 0 up to the first never-sent byte."""
        hole = self.known.find(0)
        return bytes(self.stream if hole < 0 else self.stream[:hole])


class WireLog:
    """Records what each side put on the wire (before any impairment)."""

    def __init__(self) -> None:
        self.records = {C2S: StreamRecord(), S2C: StreamRecord()}

    def record(self, direction: str, data: bytes) -> None:
        pkt = TCPPacket.parse(data)
        rec = self.records[direction]
        if pkt.flags & SYN:
            if rec.isn is not None and rec.isn != pkt.seq:
                rec.conflicts.append(f"SYN with a new ISN {pkt.seq} after {rec.isn}")
            if (pkt.flags & ACK and rec.syn_options is not None and not _eno(pkt.options)
                    and not rec.syn_acked):
                # a simultaneous open's SYN-ACK after a SYN that already disabled ENO may
                # omit the option (RFC 8547 §4.6); the SYN's stays on record
                rec.syn_acked = True
                return
            rec.syn_acked |= bool(pkt.flags & ACK)
            if rec.syn_options is not None and rec.syn_options != pkt.options and _eno(pkt.options) != _eno(
                rec.syn_options
            ):
                rec.conflicts.append("SYN-form ENO option changed across retransmissions (RFC 8547 §4.6)")
            rec.isn = pkt.seq
            rec.syn_options = pkt.options
            return
        if pkt.flags & ACK:
            rec.acks.append(pkt.ack)
        if pkt.flags & URG:
            rec.urg_packets += 1
        if len(pkt.payload):
            rec.add(pkt.seq, bytes(pkt.payload))


def check_acks_monotonic(label: str, rec: StreamRecord, peer: StreamRecord) -> list[str]:
    """A side's ACKs never go back in the peer's stream: on an encrypted connection an ACK
    below an earlier one is one left in the plaintext sequence space (e.g. a TIME-WAIT ACK
    the engine did not translate)."""
    if peer.isn is None:
        return []
    high = None
    for ack in rec.acks:
        offset = seq_diff(ack, (peer.isn + 1) % (1 << 32))
        if high is not None and offset < high:
            return [f"{label}: ACK at offset {offset} after one at {high} (untranslated ACK?)"]
        high = offset if high is None else max(high, offset)
    return []


def _eno(raw: bytes) -> list[bytes]:
    return options.eno_options(raw)


def resumed_on_wire(synack: StreamRecord) -> bool:
    """Whether the passive opener's SYN-ACK answered with a resumption suboption: after its
    global suboption, one TEP byte with v = 1 and 9-17 bytes of data (RFC 8548 §3.5), read
    from the raw option bytes."""
    if synack.syn_options is None:
        return False
    found = _eno(synack.syn_options)
    if len(found) != 1:
        return False
    body = found[0][2:]   # after kind and length
    if body[:1] and body[0] < 0x20:
        body = body[1:]   # the global suboption
    return len(body) >= 10 and bool(body[0] & 0x80) and 9 <= len(body) - 1 <= 17


def has_syn_eno(rec: StreamRecord) -> bool:
    """Whether this side's SYN (or SYN-ACK) carried an ENO option."""
    return rec.syn_options is not None and bool(_eno(rec.syn_options))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def check_stream_delivered(label: str, written: bytes, received: bytes, eof: bool) -> list[str]:
    """Invariant 1: what the application read is what its peer wrote, then EOF."""
    out = []
    if received != written:
        shorter = min(len(written), len(received))
        common = next((i for i, (a, b) in enumerate(zip(written, received)) if a != b), shorter)
        out.append(
            f"{label}: delivered {len(received)} bytes sha256 {sha(received)} != written {len(written)}"
            f" bytes sha256 {sha(written)} (first difference at {common})"
        )
    if not eof:
        out.append(f"{label}: no EOF delivered")
    return out


def check_prefix(label: str, written: bytes, received: bytes) -> list[str]:
    """Invariant 3: an aborted flow delivers at most a prefix of the written bytes."""
    if written.startswith(received):
        return []
    first = next(i for i, (a, b) in enumerate(zip(written, received)) if a != b) if received else 0
    return [f"{label}: delivered bytes are not a prefix of the written ones (differ at {first})"]


def check_no_conflicts(log: WireLog) -> list[str]:
    """Invariant 2: one byte per (direction, offset)."""
    return [f"{d}: {c}" for d, rec in log.records.items() for c in rec.conflicts[:5]]


def check_plain_wire(label: str, rec: StreamRecord, written: bytes) -> list[str]:
    """Invariant 5: without ENO the wire stream is the application stream, byte for byte."""
    wire = rec.contiguous()
    if wire[: len(written)] != written or len(rec.stream) > len(written):
        return [f"{label}: plain flow wire stream ({len(wire)} bytes) differs from the application stream"]
    return []


def check_eno_wire(
    label: str, rec: StreamRecord, written: bytes, init_magic: int | None, complete: bool, urgent: bool = False
) -> list[str]:
    """Invariant 4: Init message then frames (frames only on a resumed session:
    ``init_magic`` None), and no plaintext window on the wire; URG never on the wire (urgent
    data travels inside the frames, RFC 8548 §3.7)."""
    out: list[str] = []
    if rec.urg_packets:
        out.append(f"{label}: {rec.urg_packets} packets with URG on an ENO wire")
    wire = rec.contiguous()
    out += _plaintext_leaks(label, wire, written)
    if init_magic is None:
        pos = 0
    elif len(wire) < 8:
        if complete:
            out.append(f"{label}: ENO wire stream of {len(wire)} bytes has no Init message")
        return out
    else:
        magic, pos = struct.unpack_from("!II", wire)
        if magic != init_magic:
            out.append(f"{label}: wire stream starts with {magic:#010x}, not the Init magic {init_magic:#010x}")
            return out
    frames = 0
    framed = 0
    while pos + FRAME_HEADER <= len(wire):
        clen = struct.unpack_from("!H", wire, pos + 1)[0]
        if clen < MIN_CLEN:
            out.append(f"{label}: frame at wire offset {pos} has clen {clen} < {MIN_CLEN}")
            return out
        pos += FRAME_HEADER + clen
        frames += 1
        framed += clen - MIN_CLEN
    extra = framed - len(written)
    # Every frame holds flags + data + tag; an URGp frame 2 bytes of urgent field more.
    if complete and (extra < 0 or extra % 2 or (extra and not urgent)):
        out.append(f"{label}: frames carry {framed} application bytes, the application wrote {len(written)}")
    if complete and pos != len(wire):
        out.append(f"{label}: frames end at {pos}, wire stream at {len(wire)} (not whole frames)")
    if complete and len(rec.stream) != len(wire):
        out.append(f"{label}: wire stream has holes (contiguous {len(wire)} of {len(rec.stream)})")
    if complete and written and frames == 0:
        out.append(f"{label}: {len(written)} application bytes but no frame on the wire")
    return out


def _plaintext_leaks(label: str, wire: bytes, written: bytes) -> list[str]:
    """Any 16-byte plaintext window on the wire contains an 8-aligned 8-byte plaintext block."""
    if len(written) < 16 or len(wire) < 8:
        return []
    blocks = {written[i : i + 8] for i in range(0, len(written) - 7, 8)}
    for w in range(len(wire) - 7):
        chunk = wire[w : w + 8]
        if chunk in blocks:
            start = written.find(chunk)
            while start >= 0:
                lo = max(0, start - 8)
                window = written[lo : start + 16]
                if len(window) >= 16 and any(
                    written[s : s + 16] in wire for s in range(lo, start + 1) if s + 16 <= len(written)
                ):
                    return [f"{label}: plaintext (16+ bytes around stream offset {start}) on the wire"]
                start = written.find(chunk, start + 1)
    return []


