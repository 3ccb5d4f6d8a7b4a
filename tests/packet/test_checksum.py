"""The one-call ones'-complement sum against a word-by-word RFC 1071 reference, and RFC 1624."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from tcpcryptd.packet import checksum

# Deadlines off: the suite must not fail on a slow or busy machine.
SETTINGS = settings(deadline=None, max_examples=300)
SCAPY_SETTINGS = settings(deadline=None, max_examples=60)


def reference_ones_sum(data: bytes) -> int:
    """RFC 1071 §4.1: add 16-bit words with end-around carry, odd byte padded on the right."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def even(data: bytes) -> bytes:
    """``data`` cut to an even length."""
    return data[: len(data) - len(data) % 2]


def ip_text(address: bytes) -> str:
    """An address as the text scapy wants."""
    return socket.inet_ntop(socket.AF_INET if len(address) == 4 else socket.AF_INET6, address)


# Sizes around the folding threshold (256) and a full segment.
payloads = st.one_of(
    st.binary(max_size=64),
    st.binary(min_size=250, max_size=262),
    st.binary(min_size=1400, max_size=1500),
)


@SETTINGS
@given(payloads)
def test_ones_sum_matches_reference(data: bytes) -> None:
    expected = reference_ones_sum(data)
    assert checksum.ones_sum(data) == expected
    assert checksum.ones_sum(bytearray(data)) == expected
    assert checksum.ones_sum(memoryview(data)) == expected
    assert checksum.internet_checksum(data) == (~expected & 0xFFFF)


@SETTINGS
@given(payloads)
def test_residue_of_is_the_sum_modulo_0xffff(data: bytes) -> None:
    """residue_of agrees with RFC 1071's word sum modulo 0xFFFF for every buffer type."""
    expected = reference_ones_sum(data) % 0xFFFF
    assert checksum.residue_of(data) == expected
    assert checksum.residue_of(bytearray(data)) == expected
    assert checksum.residue_of(memoryview(data)) == expected


@SETTINGS
@given(payloads.map(even))
def test_ones_sum_negative_zero_corner(data: bytes) -> None:
    # Append the word that makes the sum 0xFFFF: the residue mod 0xFFFF is then 0, but
    # a sum of words that are not all zero is 0xFFFF, never 0x0000.
    padded = data + ((0xFFFF - reference_ones_sum(data)) or 0xFFFF).to_bytes(2, "big")
    assert reference_ones_sum(padded) == 0xFFFF
    assert checksum.ones_sum(padded) == 0xFFFF
    assert checksum.internet_checksum(padded) == 0


@pytest.mark.parametrize("length", [0, 1, 2, 3, 255, 256, 257, 1468])
def test_ones_sum_of_zeros_is_positive_zero(length: int) -> None:
    assert checksum.ones_sum(bytes(length)) == 0
    assert checksum.internet_checksum(bytes(length)) == 0xFFFF


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\xff\xff", 0xFFFF),
        (b"\xff\xff\x00\x01", 0x0001),
        (b"\x80", 0x8000),  # odd byte padded on the right (RFC 1071 §4.1)
        (b"\x00\x01\xf2\x03\xf4\xf5\xf6\xf7", 0xDDF2),  # RFC 1071 §3 example
    ],
)
def test_ones_sum_known_values(data: bytes, expected: int) -> None:
    assert checksum.ones_sum(data) == expected


def scapy_tcp_checksum(src: bytes, dst: bytes, segment: bytes) -> int:
    """The checksum scapy computes for ``segment`` under the pseudo-header of src/dst."""
    if len(src) == 4:
        packet = IP(src=ip_text(src), dst=ip_text(dst)) / TCP(segment)
    else:
        packet = IPv6(src=ip_text(src), dst=ip_text(dst)) / TCP(segment)
    del packet[TCP].chksum
    return type(packet)(bytes(packet))[TCP].chksum


address_pairs = st.one_of(
    st.tuples(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4)),
    st.tuples(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16)),
)


@SCAPY_SETTINGS
@given(address_pairs, payloads)
def test_tcp_checksum_matches_scapy(addresses: tuple[bytes, bytes], payload: bytes) -> None:
    src, dst = addresses
    segment = bytes(TCP(sport=1, dport=2, seq=3, ack=4, flags="PA", window=5, chksum=0)) + payload
    expected = scapy_tcp_checksum(src, dst, segment)
    assert checksum.tcp_checksum(src, dst, segment) == expected
    # In parts (every part but the last of even length): the same sum.
    assert checksum.tcp_checksum(src, dst, segment[:20], memoryview(segment)[20:]) == expected
    # With the checksum in its field, a correct segment sums to 0.
    filled = segment[:16] + expected.to_bytes(2, "big") + segment[18:]
    assert checksum.tcp_checksum(src, dst, filled) == 0


def test_tcp_checksum_rejects_odd_part_before_another() -> None:
    with pytest.raises(ValueError):
        checksum.tcp_checksum(bytes(4), bytes(4), b"\x01", b"\x02\x03")


@SCAPY_SETTINGS
@given(
    st.binary(min_size=4, max_size=4),
    st.binary(min_size=4, max_size=4),
    st.integers(0, 255),
    st.integers(0, 0xFFFF),
    st.integers(0, 255),
    st.binary(max_size=40).map(lambda b: b[: len(b) - len(b) % 4]),
    st.integers(0, 0xFFFF),
)
def test_ipv4_header_checksum_matches_scapy(
    src: bytes, dst: bytes, tos: int, ip_id: int, ttl: int, options: bytes, junk: int
) -> None:
    header = bytearray(bytes(IP(src=ip_text(src), dst=ip_text(dst), tos=tos, id=ip_id, ttl=ttl)))
    header[0] = 0x40 | ((20 + len(options)) // 4)
    header += options
    packet = IP(bytes(header))
    del packet.chksum
    want = IP(bytes(packet)).chksum
    # Whatever the field holds is ignored, so the same call verifies a received header.
    header[10:12] = junk.to_bytes(2, "big")
    assert checksum.ipv4_header_checksum(header) == want


def test_ipv4_header_checksum_needs_a_whole_header() -> None:
    with pytest.raises(ValueError):
        checksum.ipv4_header_checksum(bytes(19))


@st.composite
def edits(draw: st.DrawFn) -> tuple[bytes, int, bytes, bytes]:
    """(data, start, old, new): ``old`` at even offset ``start`` of ``data`` is to be replaced
    by ``new`` (another even length). The first word is non-zero, like the pseudo-header's
    protocol number, so the true sum is never zero."""
    data = b"\x00\x06" + even(draw(payloads))
    start = 2 * draw(st.integers(1, len(data) // 2))
    old_length = 2 * draw(st.integers(0, (len(data) - start) // 2))
    new = even(draw(st.binary(max_size=44)))
    return data, start, data[start : start + old_length], new


@SETTINGS
@given(edits())
def test_update_equals_full_recompute(case: tuple[bytes, int, bytes, bytes]) -> None:
    data, start, old, new = case
    edited = data[:start] + new + data[start + len(old) :]
    assert checksum.update(checksum.internet_checksum(data), old, new) == (
        checksum.internet_checksum(edited)
    )


@SETTINGS
@given(edits(), st.integers(1, 0xFFFE))
def test_update_carries_an_existing_error(
    case: tuple[bytes, int, bytes, bytes], error: int
) -> None:
    # RFC 1624 §1: an incremental update keeps the corruption the old checksum reveals.
    data, start, old, new = case
    edited = data[:start] + new + data[start + len(old) :]
    wrong = (checksum.internet_checksum(data) + error) % 0x10000
    updated = checksum.update(wrong, old, new)
    assert checksum.ones_sum(edited + updated.to_bytes(2, "big")) != 0xFFFF


@SETTINGS
@given(payloads.map(lambda d: b"\x00\x06" + even(d)), st.integers(0, 0xFFFFFFFF), st.data())
def test_update_value_equals_full_recompute(data: bytes, value: int, draw: st.DataObject) -> None:
    data += bytes(4)
    offset = 2 * draw.draw(st.integers(1, (len(data) - 4) // 2))
    old = int.from_bytes(data[offset : offset + 4], "big")
    edited = data[:offset] + value.to_bytes(4, "big") + data[offset + 4 :]
    assert checksum.update_value(checksum.internet_checksum(data), old, value) == (
        checksum.internet_checksum(edited)
    )
