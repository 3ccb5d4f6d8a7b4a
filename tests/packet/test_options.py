"""TCP option parsing, getters and edits (RFC 9293 §3.1, 7323, 2018, 7413, 8547 §4.1)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import TCP

from tcpcryptd.packet import options
from tcpcryptd.packet.options import OptionError, OptionSpaceError
from tcpcryptd.packet.tcp import PacketError

SETTINGS = settings(deadline=None, max_examples=300)

# Linux's layouts: SYN, SYN-ACK, a data segment, a duplicate ACK with SACK.
LINUX_SYN = bytes.fromhex("020405b40402080a0000000100000000" "01030307")
LINUX_DATA = bytes.fromhex("0101080a" "0000000a0000000b")
LINUX_SACK = LINUX_DATA + bytes.fromhex("0101050a" "000003e8000007d0")
TS = struct.Struct("!BBII")


def test_parse_linux_syn() -> None:
    assert options.parse(LINUX_SYN) == [
        (options.MSS, b"\x05\xb4"),
        (options.SACK_PERM, b""),
        (options.TS, bytes.fromhex("0000000100000000")),
        (options.WS, b"\x07"),
    ]
    assert options.mss(LINUX_SYN) == options.get_mss(LINUX_SYN) == 1460
    assert options.wscale(LINUX_SYN) == 7
    assert options.sack_permitted(LINUX_SYN)
    assert options.timestamps(LINUX_SYN) == (1, 0)
    assert options.sack_blocks(LINUX_SYN) == []
    assert options.tfo(LINUX_SYN) is None
    assert options.eno_options(LINUX_SYN) == []


def test_parse_stops_at_eol_and_skips_nops() -> None:
    raw = b"\x01\x01\x02\x04\x02\x00\x00\x08\x0a\xff"  # after EOL: padding, even garbage
    assert options.parse(raw) == [(options.MSS, b"\x02\x00")]
    assert options.parse(b"") == []
    assert options.parse(b"\x01\x01\x01\x01") == []


def test_unknown_kinds_are_kept() -> None:
    raw = b"\xfd\x05\x45\x4e\x20\x00\x00\x00"
    assert options.parse(raw) == [(253, b"\x45\x4e\x20")]
    assert options.remove(raw, options.MSS) == raw


def test_getters_match_scapy_layout() -> None:
    assert options.sack_blocks(LINUX_SACK) == [(1000, 2000)]
    assert options.timestamps(LINUX_SACK) == (10, 11)
    assert [kind for kind, _ in options.parse(LINUX_SACK)] == [options.TS, options.SACK]
    header = bytes(TCP(dataofs=5 + len(LINUX_SACK) // 4)) + LINUX_SACK
    assert TCP(header).options == [
        ("NOP", None), ("NOP", None), ("Timestamp", (10, 11)),
        ("NOP", None), ("NOP", None), ("SAck", (1000, 2000)),
    ]


@pytest.mark.parametrize(
    "raw",
    [
        b"\x02",  # kind without length
        b"\x02\x01\x00\x00",  # length below 2
        b"\x02\x00\x00\x00",  # length 0
        b"\x08\x0a\x00\x00",  # length past the end
        b"\x01\x01\x01\x45",
    ],
)
def test_malformed_lists_raise_option_error(raw: bytes) -> None:
    for call in (
        options.parse,
        options.mss,
        options.sack_blocks,
        options.timestamps,
        options.eno_options,
        lambda r: options.remove(r, options.SACK),
        lambda r: options.add(r, b"\x45\x02"),
        lambda r: options.set_mss(r, 1000),
        lambda r: options.replace_sack(r, [(1, 2)]),
        lambda r: options.set_timestamps(r, 1, 2),
    ):
        with pytest.raises(OptionError):
            call(raw)
    assert issubclass(OptionError, PacketError)
    assert issubclass(OptionSpaceError, PacketError)


def test_known_kinds_with_wrong_length_are_skipped_like_linux() -> None:
    bad_mss = b"\x02\x03\x05" + b"\x02\x04\x02\x18"  # 3-byte MSS, then a good one
    assert options.mss(bad_mss) == 536
    assert options.mss(b"\x02\x03\x05\x00") is None
    assert options.wscale(b"\x03\x04\x07\x00") is None
    assert not options.sack_permitted(b"\x04\x03\x00\x00")
    assert options.sack_blocks(b"\x05\x0c" + bytes(10)) == []
    assert options.timestamps(b"\x08\x08" + bytes(6)) is None
    assert options.tfo(b"\x22\x04\x01\x02") is None
    assert options.tfo(b"\x22\x14" + bytes(18)) is None
    # set_mss leaves a malformed MSS alone; replace_sack drops a malformed SACK.
    assert options.set_mss(b"\x02\x03\x05\x00", 100) == b"\x02\x03\x05\x00"
    assert options.replace_sack(b"\x05\x0c" + bytes(10), []) == b""


def test_each_read_kind_is_taken_at_exactly_the_lengths_its_rfc_allows() -> None:
    allowed = {options.MSS: {4}, options.WS: {3}, options.SACK_PERM: {2}, options.TS: {10},
               options.SACK: {10, 18, 26, 34}, options.TFO: {2, *range(6, 19)}}
    getters = {options.MSS: options.mss, options.WS: options.wscale,
               options.SACK_PERM: options.sack_permitted, options.TS: options.timestamps,
               options.SACK: options.sack_blocks, options.TFO: options.tfo}
    for kind, lengths in allowed.items():
        for length in range(2, 41):
            raw = bytes((kind, length)) + bytes(range(1, length - 1))
            value = getters[kind](raw + bytes(-len(raw) % 4))
            taken = value is not None and value is not False and value != []
            assert taken is (length in lengths), (kind, length)


def test_duplicates_read_last_and_edited_all_like_linux() -> None:
    two_mss = b"\x02\x04\x05\xb4\x02\x04\x23\x28"  # 1460, then 9000
    assert options.mss(two_mss) == 9000
    assert options.set_mss(two_mss, 1400) == b"\x02\x04\x05\x78\x02\x04\x05\x78"
    two_ts = TS.pack(8, 10, 1, 2) + TS.pack(8, 10, 3, 4)
    assert options.timestamps(padded(two_ts)) == (3, 4)
    assert options.parse(options.set_timestamps(padded(two_ts), 7, 8)) == [
        (options.TS, TS.pack(8, 10, 7, 8)[2:])
    ] * 2


def test_tfo_cookie_and_request() -> None:
    assert options.tfo(b"\x22\x02\x00\x00") == b""
    assert options.tfo(b"\x22\x06\x01\x02\x03\x04\x00\x00") == b"\x01\x02\x03\x04"


def test_eno_options_returns_every_kind_69_option_whole() -> None:
    raw = options.add(options.add(LINUX_SYN, b"\x45\x03\x21"), b"\x45\x02")
    assert options.eno_options(raw) == [b"\x45\x03\x21", b"\x45\x02"]


def test_add_appends_after_existing_options_and_pads_with_eol() -> None:
    eno = b"\x45\x04\x01\x21"
    raw = options.add(LINUX_SYN, eno)
    assert raw == LINUX_SYN + eno
    raw = options.add(LINUX_DATA, b"\x45\x02")
    assert raw == LINUX_DATA + b"\x45\x02\x00\x00"
    # Trailing padding of the old list is replaced, not kept in front of the new option.
    assert options.add(b"\x02\x04\x05\xb4\x01\x00\x00\x00", b"\x45\x02") == (
        b"\x02\x04\x05\xb4\x45\x02\x00\x00"
    )


def test_add_aligns_timestamps_and_sack_numbers() -> None:
    ts = TS.pack(options.TS, 10, 1, 2)
    assert options.add(b"\x45\x02", ts) == b"\x45\x02" + ts
    assert options.add(b"", ts) == b"\x01\x01" + ts
    nearly_full = bytes.fromhex("fd1b") + bytes(25)  # 27 bytes + 3 NOPs + 10: exactly 40
    assert options.add(nearly_full, ts) == nearly_full + b"\x01" * 3 + ts


def test_add_rejects_what_does_not_fit_or_is_not_one_option() -> None:
    with pytest.raises(OptionSpaceError):
        options.add(bytes.fromhex("fd24") + bytes(34), b"\x45\x06\x01\x21\x22\x23")
    for bad in (b"", b"\x45", b"\x45\x03", b"\x01\x02", b"\x00\x02"):
        with pytest.raises(ValueError):
            options.add(b"", bad)


def test_remove_drops_the_option_and_its_alignment_nops() -> None:
    assert options.remove(LINUX_SACK, options.SACK) == LINUX_DATA
    assert options.remove(LINUX_SACK, options.TS) == bytes.fromhex("0101050a000003e8000007d0")
    assert options.remove(LINUX_DATA, options.TS) == b""
    assert options.remove(LINUX_SYN, options.WS) == LINUX_SYN[:16]
    twice = options.add(LINUX_DATA + b"\x45\x02", b"\x45\x02")
    assert options.remove(twice, options.ENO) == LINUX_DATA


def test_set_mss_only_lowers() -> None:
    assert options.mss(options.set_mss(LINUX_SYN, 1400)) == 1400
    clamped = options.set_mss(LINUX_SYN, 1400)
    assert (clamped[:2], clamped[4:]) == (LINUX_SYN[:2], LINUX_SYN[4:])  # nothing else moves
    assert options.set_mss(LINUX_SYN, 1460) == LINUX_SYN
    assert options.set_mss(LINUX_SYN, 9000) == LINUX_SYN
    assert options.set_mss(LINUX_DATA, 100) == LINUX_DATA  # no MSS option: none added


def test_replace_sack_in_place_and_resized() -> None:
    same = options.replace_sack(LINUX_SACK, [(5, 6)])
    assert same == LINUX_DATA + bytes.fromhex("0101050a") + struct.pack("!II", 5, 6)
    more = options.replace_sack(LINUX_SACK, [(5, 6), (7, 8), (9, 10)])
    assert options.sack_blocks(more) == [(5, 6), (7, 8), (9, 10)]
    assert len(more) == 40 and more[:12] == LINUX_DATA
    assert options.replace_sack(LINUX_SACK, []) == LINUX_DATA
    assert options.sack_blocks(options.replace_sack(LINUX_DATA, [(1, 2)])) == [(1, 2)]


def test_replace_sack_drops_blocks_that_do_not_fit() -> None:
    blocks = [(i, i + 1) for i in range(0, 10, 2)]
    # With timestamps (12 bytes) three blocks fit (RFC 2018 §3); without, four.
    assert options.sack_blocks(options.replace_sack(LINUX_DATA, blocks)) == blocks[:3]
    assert options.sack_blocks(options.replace_sack(b"", blocks)) == blocks[:4]
    crowded = bytes.fromhex("fd20") + bytes(30)
    assert options.replace_sack(crowded, blocks) == crowded


def test_set_timestamps_rewrites_or_adds() -> None:
    assert options.set_timestamps(LINUX_SACK, 77, 88) == (
        bytes.fromhex("0101080a") + struct.pack("!II", 77, 88) + LINUX_SACK[12:]
    )
    assert options.set_timestamps(b"", 1, 2) == b"\x01\x01" + TS.pack(8, 10, 1, 2)
    with pytest.raises(OptionSpaceError):
        options.set_timestamps(bytes.fromhex("fd20") + bytes(30), 1, 2)


u32 = st.integers(0, 2**32 - 1)
option_lists = st.lists(
    st.one_of(
        st.just(b"\x01"),
        st.builds(lambda m: b"\x02\x04" + m.to_bytes(2, "big"), st.integers(0, 0xFFFF)),
        st.just(b"\x04\x02"),
        st.builds(lambda a, b: TS.pack(8, 10, a, b), u32, u32),
        st.lists(u32, min_size=2, max_size=8).map(
            lambda xs: bytes((5, 2 + 4 * (len(xs) // 2 * 2))) + b"".join(
                x.to_bytes(4, "big") for x in xs[: len(xs) // 2 * 2]
            )
        ),
        st.binary(max_size=6).map(lambda d: bytes((69, 2 + len(d))) + d),
        st.binary(min_size=1, max_size=8).map(lambda d: bytes((200, 2 + len(d))) + d),
    ),
    max_size=8,
).map(b"".join).filter(lambda raw: len(raw) <= 40)


def padded(raw: bytes) -> bytes:
    return raw + bytes(-len(raw) % 4)


SCAPY_KINDS = {"MSS": 2, "WScale": 3, "SAckOK": 4, "SAck": 5, "Timestamp": 8, "TFO": 34}


@SETTINGS
@given(option_lists)
def test_parse_agrees_with_scapy(raw: bytes) -> None:
    raw = padded(raw)
    header = bytes(TCP(dataofs=5 + len(raw) // 4)) + raw
    theirs = [SCAPY_KINDS.get(name, name) for name, _ in TCP(header).options]
    assert [kind for kind, _ in options.parse(raw)] == [
        kind for kind in theirs if kind not in ("NOP", "EOL")
    ]


@SETTINGS
@given(option_lists, st.sampled_from([options.MSS, options.TS, options.SACK, options.ENO, 200]))
def test_edits_keep_a_valid_padded_list(raw: bytes, kind: int) -> None:
    raw = padded(raw)
    before = options.parse(raw)
    removed = options.remove(raw, kind)
    assert options.parse(removed) == [item for item in before if item[0] != kind]
    for edited in (
        removed,
        options.set_mss(raw, 1000),
        options.replace_sack(raw, [(1, 2)]),
    ):
        assert len(edited) % 4 == 0 and len(edited) <= options.MAX_OPTIONS_LEN
        options.parse(edited)
    try:
        added = options.add(raw, b"\x45\x02")
    except OptionSpaceError:
        assert len(raw) > options.MAX_OPTIONS_LEN - 2
    else:
        assert options.parse(added) == before + [(options.ENO, b"")]


@SETTINGS
@given(option_lists, u32, u32)
def test_set_timestamps_round_trip(raw: bytes, tsval: int, tsecr: int) -> None:
    raw = padded(raw)
    try:
        edited = options.set_timestamps(raw, tsval, tsecr)
    except OptionSpaceError:
        assert options.timestamps(raw) is None
        return
    assert options.timestamps(edited) == (tsval, tsecr)
    assert [k for k, _ in options.parse(edited) if k != options.TS] == [
        k for k, _ in options.parse(raw) if k != options.TS
    ]


@SETTINGS
@given(option_lists, st.lists(st.tuples(u32, u32), max_size=5))
def test_replace_sack_round_trip(raw: bytes, blocks: list[tuple[int, int]]) -> None:
    edited = options.replace_sack(padded(raw), blocks)
    got = options.sack_blocks(edited)
    assert got == blocks[: len(got)]
    assert len(edited) <= options.MAX_OPTIONS_LEN and len(edited) % 4 == 0
    if len(got) < min(len(blocks), 4):  # trimmed only when one more block would not fit
        assert len(edited) + (8 if got else 10) > options.MAX_OPTIONS_LEN


@settings(deadline=None, max_examples=500)
@given(st.binary(max_size=48))
def test_fuzz_any_bytes_parse_or_option_error(raw: bytes) -> None:
    try:
        parsed = options.parse(raw)
    except OptionError:
        return
    for kind, data in parsed:
        assert 2 <= kind <= 255 and len(data) <= len(raw)
    options.mss(raw)
    options.sack_blocks(raw)
    options.timestamps(raw)
    options.eno_options(raw)


def _readings(raw: bytes | bytearray | memoryview) -> tuple[object, ...]:
    return (options.parse(raw), options.mss(raw), options.wscale(raw),
            options.sack_permitted(raw), options.sack_blocks(raw), options.timestamps(raw),
            options.tfo(raw), options.eno_options(raw), options.set_mss(raw, 1000),
            options.remove(raw, options.TS))


@SETTINGS
@given(st.lists(option_lists.map(padded), min_size=1, max_size=80))
def test_walks_reused_per_list_read_as_fresh_ones(lists: list[bytes]) -> None:
    """A list's walk is kept and reused (bytes only): every reading equals the one from an
    uncached buffer of the same bytes, whatever was read before, also past the cache size."""
    for raw in lists + lists[::-1]:
        assert _readings(raw) == _readings(bytearray(raw)) == _readings(memoryview(raw))


def test_malformed_list_raises_on_every_read() -> None:
    raw = b"\x02\x04\x05\xb4\x08\x0b" + bytes(6)
    for _ in range(2):
        with pytest.raises(OptionError):
            options.mss(raw)
        with pytest.raises(OptionError):
            options.add(raw, b"\x45\x02")


def test_room_is_what_an_unaligned_option_may_take() -> None:
    """A Linux SYN's 20 option bytes leave 20; an option of exactly that size fits, one
    byte more does not; trailing padding is no content."""
    linux_syn = (b"\x02\x04\x05\xb4\x04\x02\x08\x0a" + bytes(8) + b"\x01\x03\x03\x07")
    assert options.room(linux_syn) == 20
    assert len(options.add(linux_syn, b"\x45\x14" + bytes(18))) == 40
    with pytest.raises(options.OptionSpaceError):
        options.add(linux_syn, b"\x45\x15" + bytes(19))
    assert options.room(b"\x02\x04\x05\xb4\x01\x00\x00\x00") == 36
    assert options.room(b"") == 40
