"""The one-call ones'-complement sum against a word-by-word RFC 1071 reference, and RFC 1624."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from tcpcryptd.packet import checksum

# Deadlines off: the suite must not fail on a slow or busy machine.
SETTINGS = settings(deadline=None, max_examples=300)


def reference_ones_sum(data: bytes) -> int:
    """RFC 1071 §4.1: add 16-bit words with end-around carry, odd byte padded on the right."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def with_sum_ffff(data: bytes) -> bytes:
    """``data`` (even length) plus one word that makes the ones'-complement sum 0xFFFF."""
    assert len(data) % 2 == 0
    return data + ((0xFFFF - reference_ones_sum(data)) or 0xFFFF).to_bytes(2, "big")


# Sizes around the folding threshold and a full segment, as bytes, bytearray and memoryview.
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
@given(st.binary(max_size=1500).filter(lambda d: len(d) % 2 == 0))
def test_ones_sum_negative_zero_corner(data: bytes) -> None:
    # The residue is 0 here, but the sum of non-zero words is 0xFFFF, never 0x0000.
    padded = with_sum_ffff(data)
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


ipv4_addresses = st.binary(min_size=4, max_size=4)
ipv6_addresses = st.binary(min_size=16, max_size=16)


def scapy_tcp_checksum(src: bytes, dst: bytes, segment: bytes) -> int:
    """Scapy's TCP checksum of ``segment`` (checksum field zeroed) under the pseudo-header."""
    zeroed = segment[:16] + b"\x00\x00" + segment[18:]
    if len(src) == 4:
        packet = IP(src=src, dst=dst, proto=6) / TCP(zeroed)
    else:
        packet = IPv6(src=src, dst=dst, nh=6) / TCP(zeroed)
    return TCP(bytes(packet)[20 if len(src) == 4 else 40 :]).chksum if False else _rebuilt(packet)


def _rebuilt(packet) -> int:
    del packet[TCP].chksum
    return type(packet)(bytes(packet))[TCP].chksum


@settings(deadline=None, max_examples=60)
@given(
    st.one_of(st.tuples(ipv4_addresses, ipv4_addresses), st.tuples(ipv6_addresses, ipv6_addresses)),
    st.binary(max_size=1500),
)
def test_tcp_checksum_matches_scapy(addresses: tuple[bytes, bytes], payload: bytes) -> None:
    src, dst = addresses
    header = TCP(sport=1, dport=2, seq=3, ack=4, flags="PA", window=5, chksum=0)
    segment = bytes(header) + payload
    expected = scapy_tcp_checksum(src, dst, segment)
    assert checksum.tcp_checksum(src, dst, segment) == expected
    # Split into header and payload parts (header length is even), the same result.
    assert checksum.tcp_checksum(src, dst, segment[:20], memoryview(segment)[20:]) == expected
    # With the checksum in place, a correct segment sums to 0.
    filled = segment[:16] + expected.to_bytes(2, "big") + segment[18:]
    assert checksum.tcp_checksum(src, dst, filled) == 0


def test_tcp_checksum_rejects_odd_part_before_another() -> None:
    with pytest.raises(ValueError):
        checksum.tcp_checksum(bytes(4), bytes(4), b"\x01", b"\x02\x03")


@SETTINGS
@given(
    ipv4_addresses,
    ipv4_addresses,
    st.integers(0, 255),
    st.integers(0, 0xFFFF),
    st.integers(0, 255),
    st.binary(max_size=40).map(lambda b: b[: len(b) - len(b) % 4]),
    st.integers(0, 0xFFFF),
)
def test_ipv4_header_checksum_matches_scapy(
    src: bytes, dst: bytes, tos: int, ip_id: int, ttl: int, options: bytes, junk_field: int
) -> None:
    header = bytearray(bytes(IP(src=src, dst=dst, tos=tos, id=ip_id, ttl=ttl, proto=6))[:20])
    header[0] = 0x40 | ((20 + len(options)) // 4)
    header[10:12] = b"\x00\x00"
    header += options
    expected = IP(bytes(IP(bytes(header) + bytes(20))))  # scapy recomputes nothing on parse
    del expected.chksum
    want = IP(bytes(expected)).chksum
    # The field's previous content is ignored, so the call also verifies a received header.
    header[10:12] = junk_field.to_bytes(2, "big")
    assert checksum.ipv4_header_checksum(header) == want
    header[10:12] = want.to_bytes(2, "big")
    assert checksum.ipv4_header_checksum(header) == want


def test_ipv4_header_checksum_needs_a_whole_header() -> None:
    with pytest.raises(ValueError):
        checksum.ipv4_header_checksum(bytes(19))


@st.composite
def edited_data(draw: st.DrawFn) -> tuple[bytes, bytes, int]:
    """(data, edited data, offset): a non-zero first word (like the pseudo-header's
    protocol) and an even-aligned run of bytes replaced by one of another even length."""
    body = draw(st.binary(max_size=1500).map(lambda b: b[: len(b) - len(b) % 2]))
    data = b"\x00\x06" + body
    start = 2 + 2 * draw(st.integers(0, len(body) // 2))
    old_length = 2 * draw(st.integers(0, (len(data) - start) // 2))
    new = draw(st.binary(max_size=44).map(lambda b: b[: len(b) - len(b) % 2]))
    return data, data[:start] + new + data[start + old_length :], start


@SETTINGS
@given(edited_data())
def test_update_equals_full_recompute(case: tuple[bytes, bytes, int]) -> None:
    data, edited, start = case
    old_end = len(data) - (len(edited) - start - (len(edited) - len(data)))
    # Recover the replaced runs from the common prefix and suffix lengths.
    suffix = len(data) - old_end
    old = data[start : len(data) - suffix] if suffix <= len(data) - start else b""
    new = edited[start : len(edited) - suffix]
    assert data[:start] + new + data[len(data) - suffix :] == edited
    got = checksum.update(checksum.internet_checksum(data), old, new)
    assert got == checksum.internet_checksum(edited)


@SETTINGS
@given(
    st.binary(min_size=8, max_size=200).map(lambda b: b"\x00\x06" + b[: len(b) - len(b) % 4]),
    st.integers(0, 0xFFFFFFFF),
    st.data(),
)
def test_update_value_equals_full_recompute(data: bytes, value: int, draw: st.DataObject) -> None:
    offset = 2 * draw.draw(st.integers(1, (len(data) - 4) // 2))
    old = int.from_bytes(data[offset : offset + 4], "big")
    edited = data[:offset] + value.to_bytes(4, "big") + data[offset + 4 :]
    assert checksum.update_value(checksum.internet_checksum(data), old, value) == (
        checksum.internet_checksum(edited)
    )


@SETTINGS
@given(st.binary(min_size=4, max_size=100), st.binary(min_size=4, max_size=4), st.integers(0, 0xFFFF))
def test_update_carries_an_existing_error(data: bytes, new: bytes, error: int) -> None:
    # RFC 1624 §1: an incremental update must not hide corruption the old checksum reveals.
    data = b"\x00\x06" + data[: len(data) - len(data) % 2]
    good = checksum.internet_checksum(data)
    bad = (good + error) % 0x10000
    edited = data[:2] + new + data[6:]
    fixed = checksum.update(bad, data[2:6], new)
    assert (fixed == checksum.internet_checksum(edited)) == (
        checksum.update(good, data[2:6], new) == checksum.update(bad, data[2:6], new)
    )
    assert (fixed - checksum.update(good, data[2:6], new)) % 0xFFFF == (bad - good) % 0xFFFF
