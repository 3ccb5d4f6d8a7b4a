"""Inbound reassembly buffer in wire space (docs/ARCHITECTURE.md "Sequence spaces", "Inbound").

Segments of the peer's wire stream arrive out of order, duplicated, overlapping and with any
boundaries.  :class:`Reassembly` keeps the bytes beyond the consumed point ``next`` as sorted,
disjoint, non-adjacent intervals and hands out the contiguous prefix.  It never holds more than
``limit`` bytes; bytes beyond ``next + limit`` are refused (the peer retransmits them).

A retransmission of the same offsets carries the same bytes under tcpcrypt (RFC 8548 §3.6:
a peer never sends two different bytes at one offset under one key).  :meth:`conflicts`
tells whether a segment disagrees with bytes already held, so the caller can treat it as a
forgery (one of the two copies is) instead of waiting on a frame whose header may be forged.
"""

from __future__ import annotations

from bisect import bisect_left


def disagrees(held: bytes | bytearray | memoryview, held_start: int,
              data: bytes | memoryview, offset: int) -> bool:
    """True when ``data`` at ``offset`` and ``held`` at ``held_start`` overlap with
    different bytes (offsets in one stream)."""
    lo = max(offset, held_start)
    hi = min(offset + len(data), held_start + len(held))
    return lo < hi and held[lo - held_start:hi - held_start] != data[lo - offset:hi - offset]


class Reassembly:
    """Out-of-order byte store for one inbound wire stream, offsets as unbounded ints."""

    __slots__ = ("next", "limit", "_starts", "_chunks", "buffered", "_last")

    def __init__(self, start: int = 0, limit: int = 1 << 20) -> None:
        #: first wire offset not yet handed out by :meth:`pop`
        self.next = start
        self.limit = limit
        # Empty, both are the shared empty tuple (memory of idle flows): insert makes lists,
        # popping the last interval goes back to the tuple.
        self._starts: list[int] | tuple[()] = ()
        self._chunks: list[bytearray] | tuple[()] = ()
        #: bytes held out of order
        self.buffered = 0
        #: interval containing the most recently received bytes (first SACK block, RFC 2018)
        self._last: int | None = None

    def insert(self, offset: int, data: bytes | memoryview) -> int:
        """Store ``data`` at wire ``offset``; return how many new bytes were kept."""
        end = offset + len(data)
        if offset < self.next:
            data = data[self.next - offset:]
            offset = self.next
        window_end = self.next + self.limit
        if end > window_end:
            data = data[:max(0, window_end - offset)]
            end = offset + len(data)
        if offset >= end:
            return 0
        starts, chunks = self._starts, self._chunks
        if not starts:
            starts, chunks = self._starts, self._chunks = [], []
        # first interval that ends at or after offset (adjacent intervals merge)
        i = bisect_left(starts, offset)
        if i > 0 and starts[i - 1] + len(chunks[i - 1]) >= offset:
            i -= 1
        j = i
        while j < len(starts) and starts[j] <= end:
            j += 1
        if i == j:
            starts.insert(i, offset)
            chunks.insert(i, bytearray(data))
            self.buffered += len(data)
            self._last = offset
            return len(data)
        if j == i + 1 and starts[i] <= offset:
            # the common case behind a gap: the segment extends one interval at its end
            # (appending to the bytearray is amortised O(1); rebuilding it would copy the
            # whole interval for every segment)
            chunk = chunks[i]
            old_end = starts[i] + len(chunk)
            added = max(0, end - old_end)
            if added:
                chunk += data[old_end - offset:]
            self.buffered += added
            self._last = starts[i]
            return added
        # merge intervals i..j-1 with the new bytes, old bytes win where they overlap
        new_start = min(offset, starts[i])
        last_end = starts[j - 1] + len(chunks[j - 1])
        new_end = max(end, last_end)
        merged = bytearray(new_end - new_start)
        merged[offset - new_start:end - new_start] = data
        old = 0
        for k in range(i, j):
            s = starts[k]
            merged[s - new_start:s - new_start + len(chunks[k])] = chunks[k]
            old += len(chunks[k])
        del starts[i:j]
        del chunks[i:j]
        starts.insert(i, new_start)
        chunks.insert(i, merged)
        added = len(merged) - old
        self.buffered += added
        self._last = new_start
        return added

    def conflicts(self, offset: int, data: bytes | memoryview) -> bool:
        """True when ``data`` at wire ``offset`` differs from bytes held out of order."""
        starts, chunks = self._starts, self._chunks
        end = offset + len(data)
        k = max(bisect_left(starts, offset) - 1, 0)
        while k < len(starts) and starts[k] < end:
            if disagrees(chunks[k], starts[k], data, offset):
                return True
            k += 1
        return False

    def pop(self) -> bytes:
        """Remove and return the bytes contiguous from ``next`` (empty if there is a gap)."""
        if not self._starts or self._starts[0] != self.next:
            return b""
        chunk = self._chunks.pop(0)  # type: ignore[union-attr]
        del self._starts[0]  # type: ignore[union-attr]
        if not self._starts:
            self._starts = self._chunks = ()
        if self._last == self.next:
            self._last = None
        self.buffered -= len(chunk)
        self.next += len(chunk)
        return bytes(chunk)

    def take(self, offset: int, data: bytes | memoryview) -> bytes | memoryview:
        """Insert a segment and pop the contiguous prefix: the per-segment entry point.

        The in-order case (nothing buffered, segment starts at ``next``) costs no copy.
        """
        if not self._starts and offset <= self.next:
            skip = self.next - offset
            if skip >= len(data):
                return b""
            if skip:
                data = data[skip:]
            if len(data) > self.limit:
                data = data[:self.limit]
            self.next += len(data)
            return data
        self.insert(offset, data)
        return self.pop()

    def sack_blocks(self, max_blocks: int = 3) -> list[tuple[int, int]]:
        """Out-of-order intervals as SACK blocks, the most recently changed first (RFC 2018 §4)."""
        blocks = [(s, s + len(c)) for s, c in zip(self._starts, self._chunks)]
        if self._last is not None:
            for k, (s, _) in enumerate(blocks):
                if s == self._last:
                    blocks.insert(0, blocks.pop(k))
                    break
        return blocks[:max_blocks]

    @property
    def highest(self) -> int:
        """One past the highest wire offset held (``next`` when nothing is buffered)."""
        if not self._starts:
            return self.next
        return self._starts[-1] + len(self._chunks[-1])
