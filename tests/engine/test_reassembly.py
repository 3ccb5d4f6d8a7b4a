"""Property tests of the inbound wire-space reassembly buffer
(docs/ARCHITECTURE.md "Sequence spaces")."""

from hypothesis import given, settings
from hypothesis import strategies as st

from tcpcryptd.engine.reassembly import Reassembly


@st.composite
def stream_and_segments(draw):
    """A stream and a shuffled list of (possibly overlapping, duplicated) segments covering it."""
    stream = draw(st.binary(min_size=1, max_size=600))
    n = len(stream)
    cuts = sorted(set(draw(st.lists(st.integers(0, n), max_size=30)) + [0, n]))
    segments = [(a, b) for a, b in zip(cuts, cuts[1:]) if a < b]
    extra = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, 200)), max_size=10))
    segments += [(a, min(n, a + ln)) for a, ln in extra]
    order = draw(st.permutations(range(len(segments))))
    return stream, [segments[k] for k in order]


@settings(max_examples=300, deadline=None)
@given(stream_and_segments(), st.integers(0, 2**40))
def test_any_segmentation_order_and_overlap_reconstructs_the_stream(case, base):
    stream, segments = case
    buf = Reassembly(start=base, limit=1 << 20)
    out = bytearray()
    for a, b in segments:
        out += buf.take(base + a, stream[a:b])
    assert bytes(out) == stream
    assert buf.next == base + len(stream)
    assert buf.buffered == 0
    assert buf.sack_blocks() == []


@settings(max_examples=200, deadline=None)
@given(stream_and_segments())
def test_sack_blocks_describe_exactly_the_held_bytes(case):
    stream, segments = case
    buf = Reassembly()
    delivered = bytearray()
    for a, b in segments:
        delivered += buf.take(a, stream[a:b])
        blocks = buf.sack_blocks(max_blocks=100)
        assert sum(r - l for l, r in blocks) == buf.buffered
        for left, right in blocks:
            assert buf.next < left < right <= len(stream)
        spans = sorted(blocks)
        for (_, r1), (l2, _) in zip(spans, spans[1:]):
            assert r1 < l2  # disjoint and not adjacent
    assert bytes(delivered) == stream


def test_first_sack_block_is_the_most_recent():
    buf = Reassembly()
    assert buf.take(100, b"x" * 10) == b""
    assert buf.take(300, b"y" * 10) == b""
    assert buf.take(200, b"z" * 10) == b""
    assert buf.sack_blocks()[0] == (200, 210)
    assert buf.take(110, b"w" * 5) == b""
    assert buf.sack_blocks()[0] == (100, 115)


def test_bytes_beyond_the_limit_are_refused():
    buf = Reassembly(limit=100)
    assert buf.take(50, b"a" * 100) == b""
    assert buf.highest == 100
    assert buf.buffered == 50
    out = buf.take(0, b"b" * 200)
    assert out == b"b" * 50 + b"a" * 50
    assert buf.next == 100


def test_old_duplicate_returns_nothing():
    buf = Reassembly()
    assert buf.take(0, b"abc") == b"abc"
    assert buf.take(0, b"abc") == b""
    assert buf.take(1, b"bcde") == b"de"


@settings(max_examples=200, deadline=None)
@given(stream_and_segments(), st.integers(0, 2**40), st.data())
def test_conflicts_finds_exactly_the_segments_that_disagree_with_held_bytes(case, base, data):
    """Copies of the stream never conflict; a copy with one byte changed conflicts exactly
    when that byte is held out of order."""
    stream, segments = case
    buf = Reassembly(start=base + 1, limit=1 << 20)   # offset base stays missing: all held
    for a, b in segments:
        if a > 0:
            assert not buf.conflicts(base + a, stream[a:b])
            buf.insert(base + a, stream[a:b])
    held = {k for a, b in segments if a > 0 for k in range(a, b)}
    at = data.draw(st.integers(0, len(stream) - 1))
    changed = bytearray(stream)
    changed[at] ^= 0xFF
    assert not buf.conflicts(base, stream)
    assert buf.conflicts(base, bytes(changed)) == (at in held)
