"""Property tests of the outbound send map: replay by ranges, ACK/SACK translation
(docs/ARCHITECTURE.md "Sequence spaces")."""

from hypothesis import given, settings
from hypothesis import strategies as st

from tcpcryptd.engine.sendmap import SendMap


def fake_frame(local_start: int, data: bytes, wire_start: int) -> bytes:
    """Stand-in for a sealed frame: 20 bytes of overhead that depend on the offset."""
    tag = wire_start.to_bytes(8, "big") * 2 + local_start.to_bytes(4, "big")
    return tag[:4] + data + tag[4:]


@st.composite
def framed_stream(draw):
    """A send map built from random segment sizes, with an injected Init message first."""
    sizes = draw(st.lists(st.integers(1, 300), min_size=1, max_size=25))
    empties = draw(st.sets(st.integers(0, len(sizes)), max_size=3))
    smap = SendMap()
    smap.append(0, b"I" * draw(st.integers(40, 120)), injected=True)
    for k, size in enumerate(sizes):
        if k in empties:
            smap.append(0, fake_frame(smap.local_end, b"", smap.wire_end), injected=True)
        smap.append(size, fake_frame(smap.local_end, b"d" * size, smap.wire_end))
    return smap


def reference_wire(smap: SendMap) -> bytes:
    return b"".join(f.wire for f in smap.unacked)


@settings(max_examples=200, deadline=None)
@given(framed_stream(), st.data())
def test_replay_of_any_local_range_returns_the_stored_bytes(smap, data):
    wire = reference_wire(smap)
    lo = data.draw(st.integers(0, smap.local_end - 1))
    hi = data.draw(st.integers(lo + 1, smap.local_end))
    w_lo, w_hi = smap.wire_range(lo, hi)
    assert smap.read(w_lo, w_hi) == wire[w_lo:w_hi]
    # the range covers whole frames, and every frame carrying a byte of [lo, hi)
    for f in smap.unacked:
        if f.local_len and f.local_start < hi and f.local_end > lo:
            assert w_lo <= f.wire_start and f.wire_end <= w_hi
    starts = {f.wire_start for f in smap.unacked}
    ends = {f.wire_end for f in smap.unacked}
    assert w_lo in starts and w_hi in ends


@settings(max_examples=200, deadline=None)
@given(framed_stream(), st.data())
def test_read_of_any_wire_subrange_is_exact(smap, data):
    wire = reference_wire(smap)
    lo = data.draw(st.integers(0, len(wire) - 1))
    hi = data.draw(st.integers(lo, len(wire)))
    assert smap.read(lo, hi) == wire[lo:hi]


@settings(max_examples=200, deadline=None)
@given(framed_stream(), st.data())
def test_ack_inside_a_frame_acknowledges_up_to_its_local_start(smap, data):
    frames = list(smap.unacked)
    wire_ack = data.draw(st.integers(0, smap.wire_end))
    local = smap.ack(wire_ack)
    whole = [f for f in frames if f.wire_end <= wire_ack]
    expected = whole[-1].local_end if whole else 0
    assert local == expected
    assert smap.local_acked == expected
    assert all(f.wire_end > wire_ack for f in smap.unacked)
    # still-held bytes replay exactly after pruning
    if smap.unacked:
        f = smap.unacked[-1]
        assert smap.read(f.wire_start, f.wire_end) == f.wire


def test_ack_covering_only_the_init_message_is_absorbed():
    smap = SendMap()
    smap.append(0, b"I" * 75, injected=True)
    smap.append(100, b"F" * 120)
    assert smap.ack(30) == 0
    assert smap.ack(75) == 0
    assert smap.ack(150) == 0
    assert smap.ack(195) == 100
    assert smap.unacked == []


def test_sack_blocks_map_to_whole_frames_only():
    smap = SendMap()
    smap.append(0, b"I" * 10, injected=True)
    smap.append(100, b"a" * 120)   # wire 10..130, local 0..100
    smap.append(100, b"b" * 120)   # wire 130..250, local 100..200
    smap.append(100, b"c" * 120)   # wire 250..370, local 200..300
    assert smap.sack_to_local(130, 250) == (100, 200)
    assert smap.sack_to_local(130, 370) == (100, 300)
    assert smap.sack_to_local(140, 250) is None
    assert smap.sack_to_local(130, 300) == (100, 200)


def test_fin_takes_one_number_in_both_streams():
    smap = SendMap()
    smap.append(0, b"I" * 10, injected=True)
    smap.append(5, b"x" * 25)
    smap.append(0, b"F" * 20, injected=True)
    smap.close()
    assert (smap.fin_local, smap.fin_wire) == (5, 55)
    assert smap.local_to_wire(5) == 55
    assert smap.local_to_wire(6) == 56
    assert smap.ack(55) == 5
    assert smap.ack(56) == 6


def test_keepalive_offset_maps_below_the_acknowledged_point():
    smap = SendMap()
    smap.append(0, b"I" * 10, injected=True)
    smap.append(5, b"x" * 25)
    smap.ack(35)
    assert smap.local_to_wire(4) == 34
    assert smap.local_to_wire(5) == 35


@settings(deadline=None, max_examples=300)
@given(st.lists(st.integers(21, 300), min_size=1, max_size=40), st.integers(0, 12000),
       st.integers(0, 12000), st.integers(0, 12000))
def test_sack_to_local_is_the_frames_wholly_inside_the_block(sizes, ack, left, width):
    """sack_to_local (bisection) against the definition: the unacknowledged frames lying
    wholly inside [left, right), as one local range, or None."""
    smap = SendMap()
    for size in sizes:
        smap.append(size - 20, bytes(size))
    smap.ack(min(ack, smap.wire_end))
    right = left + width
    inside = [f for f in smap.unacked if left <= f.wire_start and f.wire_end <= right]
    expected = (inside[0].local_start, inside[-1].local_end) if inside else None
    if expected is not None and expected[0] >= expected[1]:
        expected = None
    assert smap.sack_to_local(left, right) == expected
