"""The outbound send map: local (plaintext) stream <-> wire (framed) stream
(docs/ARCHITECTURE.md "Sequence spaces").

Each flow direction the local stack sends on has two byte streams with the same ISN: the
*local* stream the kernel writes (plaintext) and the *wire* stream the network sees (Init
message, then RFC 8548 §4.2 frames).  Offsets are ``seq - (ISN + 1)`` as unbounded ints.

The map is an ordered list of :class:`FrameRecord`; every record covers a local range
``[local_start, local_start + local_len)`` and the wire range
``[wire_start, wire_start + len(wire))``.  Injected bytes (Init1/Init2, empty rekey or FINp
frames) are records with ``local_len == 0``.  The wire bytes of a record are kept until the
peer acknowledges all of them, so a retransmission of any local range, whatever its new
segment boundaries, *replays* exactly the bytes first sent (never a second ``seal`` at a used
frame offset: RFC 8548 §3.6 forbids two different frames under one key and frame ID).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass


@dataclass(slots=True)
class FrameRecord:
    """One frame (or injected message) of the wire stream and the local bytes it carries."""

    local_start: int
    local_len: int
    wire_start: int
    wire: bytes
    injected: bool = False

    @property
    def local_end(self) -> int:
        return self.local_start + self.local_len

    @property
    def wire_end(self) -> int:
        return self.wire_start + len(self.wire)


class SendMap:
    """Frames not yet acknowledged by the peer, plus the acknowledged boundary.

    ``local_acked``/``wire_acked`` is the highest point the peer acknowledged that falls on a
    frame boundary; an ACK inside a frame counts only up to that frame's local start
    (docs/ARCHITECTURE.md "Outbound").  A TCP FIN occupies one sequence number after the
    last frame in both streams (``fin_local``/``fin_wire``).
    """

    __slots__ = ("_frames", "_wire_starts", "_local_ends", "_head", "local_end", "wire_end",
                 "local_acked", "wire_acked", "fin_local", "fin_wire", "peer_wire_ack",
                 "injected_end")

    def __init__(self) -> None:
        # Empty, the three lists are the shared empty tuple (an idle flow's send map holds no
        # record): append makes lists, an ACK of everything goes back to the tuple.
        self._frames: list[FrameRecord] | tuple[()] = ()
        self._wire_starts: list[int] | tuple[()] = ()
        self._local_ends: list[int] | tuple[()] = ()
        self._head = 0
        self.local_end = 0
        self.wire_end = 0
        self.local_acked = 0
        self.wire_acked = 0
        #: highest wire ACK seen (may lie inside a frame)
        self.peer_wire_ack = 0
        self.fin_local: int | None = None
        self.fin_wire: int | None = None
        #: wire end of the last injected record: injected bytes are unacknowledged while the
        #: peer's ACK is below it (ACKs are cumulative)
        self.injected_end = 0

    # -- building -------------------------------------------------------------------------

    def append(self, local_len: int, wire: bytes, *, injected: bool = False) -> FrameRecord:
        """Append a frame carrying the next ``local_len`` local bytes as ``wire`` bytes."""
        if self.fin_local is not None:
            raise ValueError("send map closed by FIN")
        record = FrameRecord(self.local_end, local_len, self.wire_end, wire, injected)
        if not self._frames:
            self._frames, self._wire_starts, self._local_ends = [], [], []
        self._frames.append(record)  # type: ignore[union-attr]
        self._wire_starts.append(record.wire_start)  # type: ignore[union-attr]
        self.local_end += local_len
        self.wire_end += len(wire)
        self._local_ends.append(self.local_end)  # type: ignore[union-attr]
        if injected:
            self.injected_end = self.wire_end
        return record

    def close(self) -> None:
        """Record the TCP FIN after the last frame (the FINp frame must already be appended)."""
        if self.fin_local is None:
            self.fin_local = self.local_end
            self.fin_wire = self.wire_end

    # -- queries --------------------------------------------------------------------------

    @property
    def unacked(self) -> list[FrameRecord]:
        """Records the peer has not fully acknowledged, oldest first."""
        frames = self._frames
        return frames[self._head:] if frames else []  # type: ignore[return-value]

    def wire_range(self, local_lo: int, local_hi: int) -> tuple[int, int]:
        """Wire range holding every unacknowledged frame that carries local ``[lo, hi)``.

        Injected records sitting at local ``lo`` are included too (replaying them early is
        harmless).  Returns an empty range ``(w, w)`` if the peer already has everything.
        """
        frames = self._frames
        ends = self._local_ends
        head = self._head
        i = max(bisect_right(ends, local_lo), head)
        while i > head and frames[i - 1].local_len == 0 and frames[i - 1].local_start == local_lo:
            i -= 1
        if i >= len(frames) or (frames[i].local_start >= local_hi and frames[i].local_len):
            return self.wire_end, self.wire_end
        j = min(bisect_left(ends, local_hi, lo=i), len(frames) - 1)
        lo = max(frames[i].wire_start, self.peer_wire_ack)
        hi = frames[j].wire_end
        if lo >= hi:
            return hi, hi
        return lo, hi

    def read(self, wire_lo: int, wire_hi: int) -> bytes:
        """The stored wire bytes ``[wire_lo, wire_hi)`` (must be unacknowledged-held)."""
        if wire_lo >= wire_hi:
            return b""
        frames = self._frames
        i = bisect_right(self._wire_starts, wire_lo) - 1
        if i < self._head:
            raise ValueError("wire range no longer held")
        first = frames[i]
        if wire_hi <= first.wire_end:
            return first.wire[wire_lo - first.wire_start:wire_hi - first.wire_start]
        parts = []
        while wire_lo < wire_hi:
            f = frames[i]
            parts.append(f.wire[wire_lo - f.wire_start:min(wire_hi, f.wire_end) - f.wire_start])
            wire_lo = f.wire_end
            i += 1
        return b"".join(parts)

    def local_to_wire(self, local: int) -> int:
        """Wire offset of a local offset that starts no new data (pure ACK, keep-alive, RST).

        At or past the framed end it maps past the wire end (a FIN takes one number in both
        streams); inside a frame it maps to the frame's wire start; below the acknowledged
        point it keeps its distance to it (a keep-alive is ``snd.una - 1``).
        """
        if local >= self.local_end:
            return self.wire_end + (local - self.local_end)
        if local <= self.local_acked:
            return self.wire_acked - (self.local_acked - local)
        return self._frames[bisect_right(self._local_ends, local)].wire_start

    def wire_to_local_ack(self, wire_ack: int) -> int:
        """The local offset a peer ACK of ``wire_ack`` acknowledges (frame granularity)."""
        if self.fin_wire is not None and wire_ack > self.fin_wire:
            return self.local_end + 1
        if wire_ack >= self.wire_end:
            return self.local_end
        if wire_ack <= self.wire_acked:
            return self.local_acked
        return self._frames[bisect_right(self._wire_starts, wire_ack) - 1].local_start

    def ack(self, wire_ack: int) -> int:
        """Process a peer ACK; drop fully acknowledged frames; return the local ACK offset."""
        if wire_ack <= self.peer_wire_ack:
            return self.wire_to_local_ack(wire_ack)
        self.peer_wire_ack = wire_ack
        frames = self._frames
        head = self._head
        while head < len(frames) and frames[head].wire_end <= wire_ack:
            head += 1
        if head != self._head:
            last = frames[head - 1]
            self.local_acked = last.local_end
            self.wire_acked = last.wire_end
            self._head = head
            if head == len(frames):
                # everything acknowledged (an idle flow): keep no record nor its wire bytes,
                # and let the equal offsets share one int object each
                self._frames = self._wire_starts = self._local_ends = ()
                self._head = 0
                self.local_acked = self.local_end
                self.wire_acked = self.wire_end
                if wire_ack == self.wire_end:
                    self.peer_wire_ack = self.wire_end
            elif head > 64 and head * 2 > len(frames):
                del frames[:head]  # type: ignore[union-attr]
                del self._wire_starts[:head]
                del self._local_ends[:head]
                self._head = 0
        return self.wire_to_local_ack(wire_ack)

    def sack_to_local(self, wire_left: int, wire_right: int) -> tuple[int, int] | None:
        """Translate a SACK block to the local frames it wholly covers, or None."""
        frames = self._frames
        starts = self._wire_starts
        i = bisect_left(starts, wire_left, lo=self._head)
        # frames are contiguous: every frame before the last one starting at or below
        # wire_right ends at the next one's start, within the block; that last one may too
        j = bisect_right(starts, wire_right, lo=i)
        if j > i and frames[j - 1].wire_end > wire_right:
            j -= 1
        if j == i:
            return None
        left, right = frames[i].local_start, frames[j - 1].local_end
        if left >= right:
            return None
        return left, right

    @property
    def injected_pending(self) -> bool:
        """True while some injected bytes (Init, empty frames) wait for the peer's ACK."""
        return self.peer_wire_ack < self.injected_end

    def injected_unacked(self) -> list[FrameRecord]:
        """Injected records (Init, empty frames) still waiting for the peer's ACK."""
        if not self.injected_pending:
            return []
        return [f for f in self._frames[self._head:] if f.injected]
