"""ENO option codec (RFC 8547 §4.1-4.4) and resumption suboptions (RFC 8548 §3.5)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpcryptd.core.eno import (
    ENO_KIND,
    MAX_OPTION_LEN,
    NON_SYN_OPTION,
    Suboption,
    SynOption,
    build_syn_option,
    encode_syn_option,
    has_eno_option,
    is_eno_option,
    is_resumption_suboption,
    make_resumption_suboption,
    parse_resumption,
    parse_syn_option,
    syn_option_from_options,
)
from tcpcryptd.core.errors import ENOParseError

X25519 = 0x23
P256 = 0x21

# Resumption offer and answer of tests/vectors/tcpcrypt.json (RFC 8548 §3.5, Figs 2/3).
A_RESUME_SYN = bytes.fromhex("4514a35ef19cad967be6c618cea151435cbad204")
B_RESUME_SYN_ACK = bytes.fromhex("451501a36eafff54ec67210439d46c9f0321f99ad6")


# --- parsing: examples -----------------------------------------------------------------------


def test_parse_active_opener_syn_without_global() -> None:
    option = parse_syn_option(bytes.fromhex("45042123"))
    assert option == SynOption(None, (Suboption(P256), Suboption(X25519)), b"\x45\x04\x21\x23")
    assert (option.global_suboption, option.b, option.a) == (0, 0, 0)
    assert option.teps == (P256, X25519)
    assert option.syn_tep == X25519
    assert not option.vacuous


def test_parse_passive_answer_with_global() -> None:
    option = parse_syn_option(bytes.fromhex("45040123"))
    assert option.gopt == 0x01 and option.b == 1 and option.a == 0
    assert option.suboptions == (Suboption(X25519),)


def test_parse_accepts_bytearray_and_memoryview_and_keeps_raw_bytes() -> None:
    wire = bytearray.fromhex("45042123")
    assert parse_syn_option(wire).raw == b"\x45\x04\x21\x23"
    assert parse_syn_option(memoryview(bytes(wire))).raw == bytes(wire)
    assert isinstance(parse_syn_option(wire).raw, bytes)


@pytest.mark.parametrize(
    ("hex_option", "gopt"),
    [("4502", None), ("450301", 0x01), ("45040103", 0x01), ("450300", 0x00)],
)
def test_vacuous_options(hex_option: str, gopt: int | None) -> None:
    option = parse_syn_option(bytes.fromhex(hex_option))
    assert option.vacuous and option.teps == () and option.syn_tep is None
    assert option.gopt == gopt


def test_only_the_first_global_suboption_counts() -> None:
    option = parse_syn_option(bytes.fromhex("4506022101" "23"))
    assert option.gopt == 0x02 and option.a == 1 and option.b == 0
    assert option.teps == (P256, X25519)


def test_z_bits_are_kept_but_ignored_for_roles() -> None:
    option = parse_syn_option(bytes.fromhex("45041d23"))  # 0x1d = z1 z2 z3 + b
    assert option.gopt == 0x1D
    assert option.b == 1 and option.a == 0


def test_tep_with_data_runs_to_the_end_of_the_option() -> None:
    option = parse_syn_option(bytes.fromhex("450721a3010203"))
    assert option.suboptions == (Suboption(P256), Suboption(X25519, True, b"\x01\x02\x03"))
    assert option.suboptions[1].byte == 0xA3


def test_tep_with_v_and_no_data_as_last_suboption() -> None:
    option = parse_syn_option(bytes.fromhex("4503a3"))
    assert option.suboptions == (Suboption(X25519, True, b""),)


def test_length_byte_delimits_data_of_a_suboption_that_is_not_last() -> None:
    option = parse_syn_option(bytes.fromhex("450781a4aabb21"))
    assert option.suboptions == (Suboption(0x24, True, b"\xaa\xbb"), Suboption(P256))


def test_length_byte_may_also_introduce_the_last_suboption() -> None:
    option = parse_syn_option(bytes.fromhex("450680a3ff01"))
    assert option.suboptions == (Suboption(X25519, True, b"\xff"),)
    assert option.gopt == 0x01  # the global suboption may follow TEP suboptions


def test_length_byte_for_32_bytes_of_data() -> None:
    data = bytes(range(32))
    option = parse_syn_option(bytes((ENO_KIND, 2 + 2 + 32 + 1, 0x9F, 0xA3)) + data + b"\x21")
    assert option.suboptions == (Suboption(X25519, True, data), Suboption(P256))


def test_last_suboption_may_carry_more_than_32_bytes() -> None:
    data = bytes(range(37))
    option = parse_syn_option(bytes((ENO_KIND, 40, 0xA3)) + data)
    assert option.suboptions == (Suboption(X25519, True, data),)


def test_resumption_vector_options_parse() -> None:
    a = parse_syn_option(A_RESUME_SYN)
    b = parse_syn_option(B_RESUME_SYN_ACK)
    assert a.gopt is None and a.suboptions[0].byte == 0xA3 and len(a.suboptions[0].data) == 17
    assert b.gopt == 0x01 and b.suboptions[0].byte == 0xA3 and len(b.suboptions[0].data) == 17


# --- parsing: every malformed case -----------------------------------------------------------


@pytest.mark.parametrize(
    "hex_option",
    [
        "",  # nothing
        "45",  # no length byte
        "4402",  # not kind 69
        "fe04454e",  # the experimental option 253 is not ENO
        "4503",  # length byte larger than the bytes given
        "450221",  # length byte smaller than the bytes given
        "4500",  # length below the 2-byte header
        "4501",
        "4503" + "80",  # length byte ends the option
        "4504" + "8021",  # length byte followed by v=0 TEP byte (0x20-0x7f)
        "4504" + "8020",
        "4504" + "807f",
        "4504" + "8000",  # ... by a global suboption byte (0x00-0x1f)
        "4504" + "801f",
        "4504" + "8080",  # ... by another length byte (0x80-0x9f)
        "4504" + "809f",
        "4504" + "80a3",  # data of 1 byte would run past the end
        "4506" + "82a30102",  # 3 announced, 2 there
        "4508" + "21" + "9fa3010203",  # 32 announced, 3 there
    ],
)
def test_malformed_options_raise_eno_parse_error(hex_option: str) -> None:
    with pytest.raises(ENOParseError):
        parse_syn_option(bytes.fromhex(hex_option))


def test_option_longer_than_tcp_option_space_is_rejected() -> None:
    with pytest.raises(ENOParseError):
        parse_syn_option(bytes((ENO_KIND, 41)) + b"\x21" * 39)


# --- encoding -------------------------------------------------------------------------------


def test_encode_without_global() -> None:
    assert encode_syn_option(None, [Suboption(P256), Suboption(X25519)]) == bytes.fromhex(
        "45042123"
    )


def test_encode_passive_answer() -> None:
    assert encode_syn_option(0x01, [Suboption(X25519)]) == bytes.fromhex("45040123")


def test_encode_vacuous() -> None:
    assert encode_syn_option(0x01, []) == bytes.fromhex("450301")
    assert encode_syn_option(None, ()) == bytes.fromhex("4502")


def test_last_data_suboption_needs_no_length_byte() -> None:
    sub = Suboption(X25519, True, b"\x01\x02")
    assert encode_syn_option(None, [Suboption(P256), sub]) == bytes.fromhex("450621a30102")
    assert encode_syn_option(None, [Suboption(X25519, True)]) == bytes.fromhex("4503a3")


def test_data_suboption_not_last_gets_a_length_byte() -> None:
    subs = [Suboption(0x24, True, b"\xaa\xbb"), Suboption(P256)]
    assert encode_syn_option(None, subs) == bytes.fromhex("450781a4aabb21")
    thirty_two = Suboption(X25519, True, bytes(32))
    wire = encode_syn_option(None, [thirty_two, Suboption(P256)])
    assert wire[2] == 0x9F and len(wire) == 2 + 2 + 32 + 1


def test_resumption_vectors_round_trip() -> None:
    for wire in (A_RESUME_SYN, B_RESUME_SYN_ACK):
        option = parse_syn_option(wire)
        assert encode_syn_option(option.gopt, option.suboptions) == wire


@pytest.mark.parametrize(
    ("gopt", "subs"),
    [
        (0x20, [Suboption(X25519)]),  # global out of range
        (-1, [Suboption(X25519)]),
        (None, [Suboption(X25519, True, b""), Suboption(P256)]),  # no length for 0 bytes
        (None, [Suboption(X25519, True, bytes(33)), Suboption(P256)]),  # > 32 bytes not last
        (None, [Suboption(X25519, True, bytes(38))]),  # 41 bytes in all
        (0x01, [Suboption(0x20 + i) for i in range(38)]),
    ],
)
def test_encode_rejects_what_cannot_be_encoded(gopt: int | None, subs: list[Suboption]) -> None:
    with pytest.raises(ValueError):
        encode_syn_option(gopt, subs)


def test_encode_largest_option() -> None:
    wire = encode_syn_option(None, [Suboption(X25519, True, bytes(37))])
    assert len(wire) == MAX_OPTION_LEN and wire[1] == MAX_OPTION_LEN


def test_build_syn_option_carries_the_encoded_bytes() -> None:
    option = build_syn_option(0x03, [Suboption(X25519)])
    assert option.raw == bytes.fromhex("45040323")
    assert parse_syn_option(option.raw) == option


@pytest.mark.parametrize("tep", [0x00, 0x1F, 0x80, 0xA3, -1])
def test_suboption_rejects_non_tep_identifiers(tep: int) -> None:
    with pytest.raises(ValueError):
        Suboption(tep)


def test_suboption_data_needs_the_v_bit() -> None:
    with pytest.raises(ValueError):
        Suboption(X25519, False, b"\x00")


def test_suboption_byte() -> None:
    assert Suboption(0x20).byte == 0x20
    assert Suboption(0x7F, True).byte == 0xFF


# --- option lists of a segment and the non-SYN form -------------------------------------------


def test_is_eno_option() -> None:
    assert is_eno_option(69)
    assert not is_eno_option(253)
    assert NON_SYN_OPTION == b"\x45\x02"


def test_has_eno_option_ignores_non_syn_contents() -> None:
    assert has_eno_option([(2, b"\x05\xb4"), (69, b"")])
    assert has_eno_option([(69, b"anything"), (69, b"")])  # several count as one
    assert not has_eno_option([(2, b"\x05\xb4"), (4, b"")])
    assert not has_eno_option([])


def test_syn_option_from_options_rebuilds_the_wire_bytes() -> None:
    option = syn_option_from_options([(2, b"\x05\xb4"), (69, b"\x21\x23"), (4, b"")])
    assert option is not None and option.raw == bytes.fromhex("45042123")


def test_syn_option_from_options_without_eno() -> None:
    assert syn_option_from_options([(2, b"\x05\xb4")]) is None


@pytest.mark.parametrize(
    "options",
    [
        [(69, b"\x21"), (69, b"\x23")],  # two ENO options in a SYN (§4.1)
        [(69, b"\x80")],  # malformed contents
        [(69, bytes(39))],  # contents too long for TCP option space
    ],
)
def test_syn_option_from_options_errors(options: list[tuple[int, bytes]]) -> None:
    with pytest.raises(ENOParseError):
        syn_option_from_options(options)


# --- resumption suboptions (RFC 8548 §3.5) ----------------------------------------------------


def test_parse_resumption_fresh_offers() -> None:
    assert parse_resumption(Suboption(X25519)) is None
    assert parse_resumption(Suboption(X25519, True, bytes(8))) is None  # < 9 bytes: v=0
    assert not is_resumption_suboption(Suboption(X25519, True, bytes(8)))


@pytest.mark.parametrize("nonce_len", [0, 1, 7, 8])
def test_parse_resumption_half_and_nonce(nonce_len: int) -> None:
    half = bytes(range(1, 10))
    nonce = bytes(range(100, 100 + nonce_len))
    sub = make_resumption_suboption(X25519, half, nonce)
    assert sub == Suboption(X25519, True, half + nonce)
    assert is_resumption_suboption(sub)
    assert parse_resumption(sub) == (half, nonce)


def test_data_longer_than_17_bytes_is_not_a_resumption_suboption() -> None:
    sub = Suboption(X25519, True, bytes(18))
    assert not is_resumption_suboption(sub)
    with pytest.raises(ENOParseError):
        parse_resumption(sub)


def test_parse_resumption_of_the_vector_offer() -> None:
    sub = parse_syn_option(A_RESUME_SYN).suboptions[0]
    assert parse_resumption(sub) == (A_RESUME_SYN[3:12], A_RESUME_SYN[12:])


@pytest.mark.parametrize(
    ("tep", "half", "nonce"),
    [
        (X25519, bytes(8), b""),
        (X25519, bytes(10), b""),
        (X25519, bytes(9), bytes(9)),
        (0x10, bytes(9), b""),
    ],
)
def test_make_resumption_suboption_rejects_bad_sizes(tep: int, half: bytes, nonce: bytes) -> None:
    with pytest.raises(ValueError):
        make_resumption_suboption(tep, half, nonce)


# --- properties -----------------------------------------------------------------------------

teps = st.integers(0x20, 0x7F)


@st.composite
def suboption_lists(draw: st.DrawFn) -> list[Suboption]:
    """Suboptions that have an encoding: data of 1-32 bytes except on the last one."""
    count = draw(st.integers(0, 6))
    subs = []
    for index in range(count):
        last = index == count - 1
        if draw(st.booleans()):
            data = draw(st.binary(min_size=0 if last else 1, max_size=36 if last else 32))
            subs.append(Suboption(draw(teps), True, data))
        else:
            subs.append(Suboption(draw(teps)))
    return subs


gopts = st.none() | st.integers(0, 0x1F)


@st.composite
def wire_variants(draw: st.DrawFn) -> tuple[int | None, list[Suboption], bytes]:
    """A valid option written the long way: stray later globals, optional length bytes.

    Written here independently of the encoder, so parse is checked against another writer.
    """
    gopt = draw(gopts)
    subs = draw(suboption_lists())
    pieces: list[bytes] = []
    for index, sub in enumerate(subs):
        last = index == len(subs) - 1
        if sub.v and (not last or (1 <= len(sub.data) <= 32 and draw(st.booleans()))):
            pieces.append(bytes((0x80 | (len(sub.data) - 1), sub.tep | 0x80)) + sub.data)
        else:
            pieces.append(bytes((sub.byte,)) + sub.data)
    stray = draw(st.lists(st.integers(0, 0x1F), max_size=3))
    for value in stray:  # later globals are ignored; insert them between suboptions
        pieces.insert(draw(st.integers(0, len(pieces) - (1 if subs else 0))), bytes((value,)))
    if gopt is not None:
        pieces.insert(0, bytes((gopt,)))
    # TEP pieces start with a byte >= 0x20; the first one-byte piece below 0x20 is the global.
    first_global = next((piece[0] for piece in pieces if piece[0] < 0x20), None)
    contents = b"".join(pieces)
    return first_global, subs, bytes((ENO_KIND, len(contents) + 2)) + contents


@settings(deadline=None)
@given(st.binary(max_size=48))
def test_any_bytes_parse_or_raise_eno_parse_error(raw: bytes) -> None:
    try:
        option = parse_syn_option(raw)
    except ENOParseError:
        return
    assert option.raw == raw


@settings(deadline=None)
@given(st.binary(max_size=38))
def test_any_contents_behind_a_correct_header_parse_or_raise(contents: bytes) -> None:
    raw = bytes((ENO_KIND, len(contents) + 2)) + contents
    try:
        option = parse_syn_option(raw)
    except ENOParseError:
        return
    again = parse_syn_option(encode_syn_option(option.gopt, option.suboptions))
    assert (again.gopt, again.suboptions) == (option.gopt, option.suboptions)
    assert len(again.raw) <= len(raw)


@settings(deadline=None)
@given(gopts, suboption_lists())
def test_parse_of_encode_round_trips(gopt: int | None, subs: list[Suboption]) -> None:
    try:
        wire = encode_syn_option(gopt, subs)
    except ValueError:
        assert 2 + (gopt is not None) + sum(
            1 + len(s.data) + (s.v and i < len(subs) - 1) for i, s in enumerate(subs)
        ) > MAX_OPTION_LEN
        return
    option = parse_syn_option(wire)
    assert option == SynOption(gopt, tuple(subs), wire)


@settings(max_examples=300, deadline=None)
@given(wire_variants())
def test_parse_reads_every_valid_writing(
    variant: tuple[int | None, list[Suboption], bytes],
) -> None:
    gopt, subs, wire = variant
    if len(wire) > MAX_OPTION_LEN:
        with pytest.raises(ENOParseError):
            parse_syn_option(wire)
        return
    option = parse_syn_option(wire)
    assert (option.gopt, option.suboptions) == (gopt, tuple(subs))
    assert option.raw == wire
    shortest = encode_syn_option(option.gopt, option.suboptions)
    assert len(shortest) <= len(wire)
    assert parse_syn_option(shortest).suboptions == option.suboptions
