"""TCPPacket parse / to_bytes / incremental rewrite / build, cross-checked against scapy."""

from __future__ import annotations

import socket
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, IPOption, in4_chksum
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    in6_chksum,
)
from scapy.packet import Packet, Raw
from scapy.utils import checksum as scapy_checksum

from tcpcryptd.packet import checksum
from tcpcryptd.packet.tcp import (
    ACK,
    CWR,
    ECE,
    FIN,
    PSH,
    RST,
    SYN,
    URG,
    PacketError,
    TCPPacket,
    build,
    complete_checksum,
    rewrite_header,
    rewrite_segment,
)

SCAPY_SETTINGS = settings(deadline=None, max_examples=80)
FAST_SETTINGS = settings(deadline=None, max_examples=400)

# Option lists as scapy takes them, covering Linux's SYN and data layouts and odd ones.
SCAPY_OPTIONS = [
    [],
    [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 2)), ("NOP", None), ("WScale", 7)],
    [("NOP", None), ("NOP", None), ("Timestamp", (0xFFFFFFFF, 0))],
    [("NOP", None), ("NOP", None), ("Timestamp", (5, 6)), ("NOP", None), ("NOP", None),
     ("SAck", (100, 200, 300, 400))],
    [("MSS", 536), (69, b"\x01\x21\x22"), ("EOL", None)],
    [("SAck", (1, 2, 3, 4, 5, 6, 7, 8))],
    [(253, b"\x45\x4e\x20"), ("TFO", b"\x01\x02\x03\x04\x05\x06\x07\x08")],
]


def ip_text(address: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(address) == 4 else socket.AF_INET6, address)


@dataclass
class Spec:
    """The fields of a packet to build with scapy and with ``build``."""

    version: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    urg_ptr: int
    scapy_options: list
    payload: bytes
    ttl: int
    df: bool
    tos: int
    ip_id: int
    flow_label: int

    def scapy(self) -> Packet:
        tcp = TCP(
            sport=self.sport,
            dport=self.dport,
            seq=self.seq,
            ack=self.ack,
            reserved=self.flags >> 9,
            flags=self.flags & 0x1FF,
            window=self.window,
            urgptr=self.urg_ptr,
            options=self.scapy_options,
        )
        if self.version == 4:
            ip = IP(
                src=ip_text(self.src),
                dst=ip_text(self.dst),
                ttl=self.ttl,
                tos=self.tos,
                id=self.ip_id,
                flags="DF" if self.df else 0,
            )
        else:
            ip = IPv6(
                src=ip_text(self.src),
                dst=ip_text(self.dst),
                hlim=self.ttl,
                tc=self.tos,
                fl=self.flow_label,
            )
        return ip / tcp / Raw(self.payload) if self.payload else ip / tcp


@st.composite
def specs(draw: st.DrawFn, payload_sizes: st.SearchStrategy[int] | None = None) -> Spec:
    version = draw(st.sampled_from([4, 6]))
    size = 4 if version == 4 else 16
    if payload_sizes is None:
        payload_sizes = st.one_of(st.integers(0, 3), st.integers(0, 1448))
    length = draw(payload_sizes)
    return Spec(
        version=version,
        src=draw(st.binary(min_size=size, max_size=size)),
        dst=draw(st.binary(min_size=size, max_size=size)),
        sport=draw(st.integers(0, 0xFFFF)),
        dport=draw(st.integers(0, 0xFFFF)),
        seq=draw(st.integers(0, 0xFFFFFFFF)),
        ack=draw(st.integers(0, 0xFFFFFFFF)),
        flags=draw(st.one_of(st.integers(0, 0xFF), st.integers(0, 0xFFF))),
        window=draw(st.integers(0, 0xFFFF)),
        urg_ptr=draw(st.integers(0, 0xFFFF)),
        scapy_options=draw(st.sampled_from(SCAPY_OPTIONS)),
        payload=draw(st.binary(min_size=length, max_size=length)),
        ttl=draw(st.integers(0, 255)),
        df=True if version == 6 else draw(st.booleans()),
        tos=draw(st.integers(0, 255)),
        ip_id=0 if version == 6 else draw(st.integers(0, 0xFFFF)),
        flow_label=0 if version == 4 else draw(st.integers(0, 0xFFFFF)),
    )


def scapy_checksums_ok(data: bytes) -> bool:
    """Whether ``data`` carries the checksums scapy's own routines compute for its bytes.

    Scapy's checksum functions run on the raw bytes: re-encoding the packet would let scapy
    normalise odd option lists and hide a difference.
    """
    if data[0] >> 4 == 4:
        ip = IP(data)
        tcp_start, end = ip.ihl * 4, ip.len
        header = data[:10] + b"\x00\x00" + data[12:tcp_start]
        if scapy_checksum(header) != ip.chksum:
            return False
    else:
        ip = IPv6(data)
        tcp_start, end = 40, 40 + ip.plen
        layer = ip.payload
        while not isinstance(layer, TCP):
            tcp_start += (layer.len + 1) * 8
            layer = layer.payload
    segment = data[tcp_start : tcp_start + 16] + b"\x00\x00" + data[tcp_start + 18 : end]
    carried = int.from_bytes(data[tcp_start + 16 : tcp_start + 18], "big")
    if isinstance(ip, IP):
        return in4_chksum(6, ip, segment) == carried
    return in6_chksum(6, ip[TCP], segment) == carried


def assert_fields(pkt: TCPPacket, spec: Spec, raw_options: bytes) -> None:
    assert (pkt.version, pkt.src, pkt.dst) == (spec.version, spec.src, spec.dst)
    assert (pkt.sport, pkt.dport, pkt.seq, pkt.ack) == (spec.sport, spec.dport, spec.seq, spec.ack)
    assert (pkt.flags, pkt.window, pkt.urg_ptr) == (spec.flags, spec.window, spec.urg_ptr)
    assert pkt.options == raw_options
    assert pkt.payload == spec.payload
    assert (pkt.ttl, pkt.df, pkt.tos, pkt.ip_id) == (spec.ttl, spec.df, spec.tos, spec.ip_id)
    assert pkt.flow_label == spec.flow_label


def raw_tcp_options(packet: Packet) -> bytes:
    header = bytes(packet[TCP])
    return header[20 : (header[12] >> 4) * 4]


@SCAPY_SETTINGS
@given(specs())
def test_parse_matches_scapy_and_rebuilds_identically(spec: Spec) -> None:
    wire = bytes(spec.scapy())
    pkt = TCPPacket.parse(wire)
    assert_fields(pkt, spec, raw_tcp_options(spec.scapy()))
    assert isinstance(pkt.payload, memoryview)  # a view, not a copy
    assert pkt.to_bytes() == wire
    assert pkt.to_bytes_incremental() == wire


@SCAPY_SETTINGS
@given(specs())
def test_build_is_what_scapy_builds(spec: Spec) -> None:
    options = raw_tcp_options(spec.scapy())
    wire = build(
        spec.version, spec.src, spec.dst, spec.sport, spec.dport, spec.seq, spec.ack,
        spec.flags, spec.window, options, spec.payload, ttl=spec.ttl, df=spec.df,
        tos=spec.tos, ip_id=spec.ip_id, urg_ptr=spec.urg_ptr,
    )
    if spec.version == 6:
        spec.flow_label = 0  # build() sets no flow label
    assert wire == bytes(spec.scapy())
    assert scapy_checksums_ok(wire)


@SCAPY_SETTINGS
@given(specs(), st.binary(max_size=1448))
def test_to_bytes_after_payload_change_has_valid_checksums(spec: Spec, payload: bytes) -> None:
    pkt = TCPPacket.parse(bytes(spec.scapy()))
    pkt.payload = payload
    wire = pkt.to_bytes()
    assert scapy_checksums_ok(wire)
    spec.payload = payload
    assert_fields(TCPPacket.parse(wire), spec, pkt.options)


@st.composite
def header_edits(draw: st.DrawFn) -> dict[str, object]:
    """New values for some of the header fields the incremental path may change."""
    fields = {
        "sport": st.integers(0, 0xFFFF),
        "dport": st.integers(0, 0xFFFF),
        "seq": st.integers(0, 0xFFFFFFFF),
        "ack": st.integers(0, 0xFFFFFFFF),
        "flags": st.integers(0, 0xFFF),
        "window": st.integers(0, 0xFFFF),
        "urg_ptr": st.integers(0, 0xFFFF),
        "options": st.integers(0, 10).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n)),
    }
    chosen = draw(st.sets(st.sampled_from(sorted(fields)), min_size=1))
    return {name: draw(fields[name]) for name in chosen}


@SCAPY_SETTINGS
@given(specs(), header_edits())
def test_incremental_rewrite_equals_full_recompute(spec: Spec, edits: dict[str, object]) -> None:
    pkt = TCPPacket.parse(bytes(spec.scapy()))
    for name, value in edits.items():
        setattr(pkt, name, value)
    incremental = pkt.to_bytes_incremental()
    assert incremental == pkt.to_bytes()
    assert scapy_checksums_ok(incremental)


@SCAPY_SETTINGS
@given(specs(), header_edits(), st.binary(max_size=1448))
def test_rewrite_segment_equals_to_bytes(spec: Spec, edits: dict[str, object],
                                         payload: bytes) -> None:
    """The fast paths' rewrite (raw IP header kept, length and checksums updated) gives the
    bytes of the full rebuild, with checksums scapy accepts."""
    raw = bytes(spec.scapy())
    pkt = TCPPacket.parse(raw)
    for name, value in edits.items():
        setattr(pkt, name, value)
    pkt.payload = payload
    fast = rewrite_segment(raw, 20 if spec.version == 4 else 40, pkt.sport, pkt.dport,
                           pkt.seq, pkt.ack, pkt.flags, pkt.window, pkt.urg_ptr, pkt.options,
                           payload)
    assert fast == pkt.to_bytes()
    assert scapy_checksums_ok(fast)


@SCAPY_SETTINGS
@given(specs(), header_edits())
def test_rewrite_header_equals_to_bytes(spec: Spec, edits: dict[str, object]) -> None:
    raw = bytes(spec.scapy())
    pkt = TCPPacket.parse(raw)
    for name, value in edits.items():
        setattr(pkt, name, value)
    tcp_start = 20 if spec.version == 4 else 40
    fast = rewrite_header(raw, tcp_start, len(raw) - len(spec.payload), pkt.sport, pkt.dport,
                          pkt.seq, pkt.ack, pkt.flags, pkt.window, pkt.urg_ptr, pkt.options,
                          spec.payload)
    assert fast == pkt.to_bytes()
    assert scapy_checksums_ok(fast)


@SCAPY_SETTINGS
@given(specs(payload_sizes=st.integers(0, 64)), header_edits(), st.integers(1, 0xFFFE))
def test_incremental_rewrite_keeps_a_checksum_error(
    spec: Spec, edits: dict[str, object], error: int
) -> None:
    # RFC 1624 §1: a header edit must not launder a corrupted segment.
    wire = bytearray(bytes(spec.scapy()))
    tcp_start = 20 if spec.version == 4 else 40
    field = tcp_start + 16
    corrupted = (int.from_bytes(wire[field : field + 2], "big") + error) % 0x10000
    wire[field : field + 2] = corrupted.to_bytes(2, "big")
    pkt = TCPPacket.parse(bytes(wire))
    for name, value in edits.items():
        setattr(pkt, name, value)
    assert not scapy_checksums_ok(pkt.to_bytes_incremental())
    assert scapy_checksums_ok(pkt.to_bytes())


@settings(deadline=None, max_examples=40)
@given(
    specs(payload_sizes=st.integers(0, 100)),
    st.sampled_from(["payload", "src", "dst", "ttl", "tos", "df", "ip_id", "flow_label"]),
)
def test_incremental_rewrite_falls_back_when_more_than_the_header_changed(
    spec: Spec, field: str
) -> None:
    pkt = TCPPacket.parse(bytes(spec.scapy()))
    pkt.seq = (pkt.seq + 1) % 2**32
    new_values = {
        "payload": bytes(pkt.payload) + b"x",
        "src": bytes(x ^ 1 for x in pkt.src),
        "dst": bytes(x ^ 1 for x in pkt.dst),
        "ttl": pkt.ttl ^ 1,
        "tos": pkt.tos ^ 1,
        "df": not pkt.df,
        "ip_id": pkt.ip_id ^ 1,
        "flow_label": pkt.flow_label ^ 1,
    }
    setattr(pkt, field, new_values[field])
    assert pkt.to_bytes_incremental() == pkt.to_bytes()


def test_header_edit_keeps_ipv4_and_ipv6_lengths_consistent() -> None:
    for version, size in ((4, 4), (6, 16)):
        wire = build(version, bytes(range(size)), bytes(range(1, size + 1)), 1, 2, 3, 4, ACK, 5,
                     b"\x01\x01\x08\x0a" + bytes(8), b"data")
        pkt = TCPPacket.parse(wire)
        pkt.options = b""
        shorter = pkt.to_bytes_incremental()
        assert len(shorter) == len(wire) - 12
        assert shorter == pkt.to_bytes()
        reparsed = TCPPacket.parse(shorter)
        assert (reparsed.options, bytes(reparsed.payload)) == (b"", b"data")


def test_flow_keys() -> None:
    src, dst = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"
    out = TCPPacket.parse(build(4, src, dst, 40000, 443, 1, 0, SYN, 100))
    back = TCPPacket.parse(build(4, dst, src, 443, 40000, 7, 2, SYN | ACK, 100))
    assert out.flow_key() == (4, src, 40000, dst, 443)
    assert out.reverse_flow_key() == back.flow_key()
    assert back.reverse_flow_key() == out.flow_key()


def test_flag_constants_are_rfc_bits() -> None:
    assert [FIN, SYN, RST, PSH, ACK, URG, ECE, CWR] == [1 << i for i in range(8)]
    pkt = TCPPacket.parse(bytes(IP() / TCP(flags="SEC")))
    assert pkt.flags == SYN | ECE | CWR


def test_link_layer_padding_is_ignored() -> None:
    wire = bytes(IP(src="1.1.1.1", dst="2.2.2.2") / TCP(flags="A") / Raw(b"ab"))
    pkt = TCPPacket.parse(wire + bytes(6))
    assert bytes(pkt.payload) == b"ab"
    assert pkt.to_bytes() == wire
    assert pkt.to_bytes_incremental() == wire


def test_ipv4_options_are_kept() -> None:
    record_route = IPOption(b"\x07\x07\x04" + bytes(4))
    wire = bytes(IP(src="1.1.1.1", dst="2.2.2.2", options=[record_route]) / TCP() / Raw(b"xyz"))
    pkt = TCPPacket.parse(wire)
    assert pkt.ip_options == wire[20:28]
    assert bytes(pkt.payload) == b"xyz"
    assert pkt.to_bytes() == wire
    pkt.ack = 99
    assert scapy_checksums_ok(pkt.to_bytes_incremental())


def test_ipv4_options_changed_fall_back_to_a_full_rebuild() -> None:
    pkt = TCPPacket.parse(bytes(IP(src="1.1.1.1", dst="2.2.2.2") / TCP() / Raw(b"xyz")))
    pkt.ip_options = b"\x01\x01\x01\x00"
    rebuilt = pkt.to_bytes_incremental()
    assert rebuilt == pkt.to_bytes()
    assert TCPPacket.parse(rebuilt).ip_options == b"\x01\x01\x01\x00"
    assert scapy_checksums_ok(rebuilt)
    pkt.ip_options = b"\x01"
    with pytest.raises(ValueError, match="IPv4 options"):
        pkt.to_bytes()


@pytest.mark.parametrize(
    "ip_options",
    [
        pytest.param(b"\x83\x07\x04" + bytes(5), id="lsrr"),
        pytest.param(b"\x01\x89\x07\x04" + bytes(4), id="ssrr-after-nop"),
        pytest.param(b"\x07\x01\x00\x00", id="length-below-2"),
        pytest.param(b"\x01\x01\x01\x07", id="no-length-byte"),
        pytest.param(b"\x07\x09\x04\x00", id="length-past-header"),
    ],
)
def test_bad_ipv4_options_are_refused(ip_options: bytes) -> None:
    wire = bytearray(bytes(IP(src="1.1.1.1", dst="2.2.2.2") / TCP()))
    wire[0] = 0x40 | (20 + len(ip_options)) // 4
    wire[2:4] = (len(wire) + len(ip_options)).to_bytes(2, "big")
    with pytest.raises(PacketError):
        TCPPacket.parse(bytes(wire[:20]) + ip_options + bytes(wire[20:]))


def test_ipv4_options_without_eol_are_accepted() -> None:
    wire = bytes(IP(src="1.1.1.1", dst="2.2.2.2", options=[IPOption(b"\x01\x01\x01\x01")]) / TCP())
    assert TCPPacket.parse(wire).ip_options == b"\x01" * 4


def test_ipv6_extension_headers_are_walked_and_kept() -> None:
    packet = (
        IPv6(src="2001:db8::1", dst="2001:db8::2")
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrRouting(addresses=["2001:db8::3"], segleft=0)
        / TCP(sport=5, dport=6, flags="PA")
        / Raw(b"hello")
    )
    wire = bytes(packet)
    pkt = TCPPacket.parse(wire)
    assert (pkt.sport, pkt.dport, bytes(pkt.payload)) == (5, 6, b"hello")
    assert pkt.ext_headers == wire[40:-25]
    assert pkt.to_bytes() == wire
    pkt.seq = 12345
    pkt.options = b"\x45\x02\x00\x00"
    assert pkt.to_bytes_incremental() == pkt.to_bytes()
    assert scapy_checksums_ok(pkt.to_bytes())


@pytest.mark.parametrize(
    "packet",
    [
        IPv6() / IPv6ExtHdrRouting(addresses=["::3"], segleft=1) / TCP(),
        IPv6() / IPv6ExtHdrFragment() / TCP(),
        IPv6() / IPv6ExtHdrHopByHop() / UDP(),
        IPv6() / UDP(),
        IP() / UDP() / Raw(bytes(20)),
        IP(flags="MF") / TCP(),
        IP(frag=100) / TCP(),
    ],
    ids=[
        "v6-routing-segleft", "v6-fragment", "v6-hbh-udp", "v6-udp", "v4-udp", "v4-mf", "v4-offset"
    ],
)
def test_unsupported_packets_raise_packet_error(packet: Packet) -> None:
    with pytest.raises(PacketError):
        TCPPacket.parse(bytes(packet))


def _v4(patches: dict[int, int]) -> bytes:
    """A valid IPv4 segment with four payload bytes, the given byte offsets overwritten."""
    wire = bytearray(bytes(IP(src="1.1.1.1", dst="2.2.2.2") / TCP() / Raw(b"abcd")))
    for offset, value in patches.items():
        wire[offset] = value
    return bytes(wire)


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x45" * 19, id="short"),
        pytest.param(_v4({0: 0x55}), id="version-5"),
        pytest.param(_v4({0: 0x44}), id="ihl-4"),
        pytest.param(_v4({0: 0x4F}), id="ihl-past-total-length"),
        pytest.param(_v4({2: 0, 3: 39}), id="total-length-below-headers"),
        pytest.param(_v4({2: 0, 3: 45}), id="total-length-past-buffer"),
        pytest.param(_v4({32: 0x40}), id="data-offset-4"),
        pytest.param(_v4({32: 0x70}), id="data-offset-past-segment"),
        pytest.param(bytes(IP() / TCP())[:39], id="v4-tcp-cut"),
        pytest.param(bytes(IPv6() / TCP())[:39], id="v6-header-cut"),
        pytest.param(bytes(IPv6() / TCP())[:59], id="v6-tcp-cut"),
        pytest.param(bytes(IPv6(plen=0) / TCP()), id="v6-jumbogram"),
        pytest.param(bytes(IPv6(plen=12) / TCP()), id="v6-payload-below-tcp-header"),
        pytest.param(bytes(IPv6(plen=6) / IPv6ExtHdrDestOpt() / TCP())[:46], id="v6-extension-cut"),
        pytest.param(
            bytes(IPv6(plen=8) / IPv6ExtHdrDestOpt(len=3) / TCP()), id="v6-extension-past-payload"
        ),
    ],
)
def test_malformed_packets_raise_packet_error(wire: bytes) -> None:
    with pytest.raises(PacketError):
        TCPPacket.parse(wire)


def _roundtrip_holds(pkt: TCPPacket) -> None:
    """Whatever parsed must rebuild, and the rebuild must parse to the same fields."""
    again = TCPPacket.parse(pkt.to_bytes())
    assert again.flow_key() == pkt.flow_key()
    assert (again.seq, again.ack, again.flags) == (pkt.seq, pkt.ack, pkt.flags)
    assert again.options == pkt.options
    assert again.payload == pkt.payload
    assert pkt.to_bytes_incremental()


@FAST_SETTINGS
@given(st.binary(max_size=120))
def test_fuzz_any_bytes_parse_or_packet_error(data: bytes) -> None:
    try:
        pkt = TCPPacket.parse(data)
    except PacketError:
        return
    _roundtrip_holds(pkt)


SEEDS = [
    bytes(IP() / TCP(options=[("MSS", 1460), ("WScale", 2)]) / Raw(b"x" * 9)),
    bytes(IP(options=[IPOption(b"\x07\x07\x04" + bytes(4))]) / TCP() / Raw(b"y")),
    bytes(IPv6() / TCP(options=[("Timestamp", (1, 2))]) / Raw(b"z" * 3)),
    bytes(IPv6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting(segleft=0) / TCP()),
]


@FAST_SETTINGS
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
    st.integers(0, 200),
)
def test_fuzz_mutated_packets_parse_or_packet_error(
    seed: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(seed)
    for position, value in flips:
        if position < len(data):
            data[position] = value
    try:
        pkt = TCPPacket.parse(bytes(data[: len(data) - cut % (len(data) + 1)]))
    except PacketError:
        return
    _roundtrip_holds(pkt)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"version": 5}, "version"),
        ({"src": b"\x01\x02\x03"}, "addresses"),
        ({"options": b"\x01"}, "multiple of 4"),
        ({"options": bytes(44)}, "multiple of 4"),
        ({"flags": 0x1000}, "12 bits"),
        ({"payload": bytes(65535)}, "longer"),
    ],
)
def test_build_rejects_bad_arguments(arguments: dict[str, object], message: str) -> None:
    base: dict[str, object] = {
        "version": 4, "src": bytes(4), "dst": bytes(4), "sport": 1, "dport": 2,
        "seq": 0, "ack": 0, "flags": SYN, "window": 0,
    }
    base.update(arguments)
    with pytest.raises(ValueError, match=message):
        build(**base)  # type: ignore[arg-type]


def test_build_rejects_oversized_ipv6_and_bad_options_in_incremental_path() -> None:
    with pytest.raises(ValueError, match="longer"):
        build(6, bytes(16), bytes(16), 1, 2, 0, 0, ACK, 0, payload=bytes(65516))
    pkt = TCPPacket.parse(build(4, bytes(4), bytes(4), 1, 2, 0, 0, ACK, 0))
    pkt.options = b"\x01\x01"
    with pytest.raises(ValueError, match="multiple of 4"):
        pkt.to_bytes_incremental()
    pkt.options = b""
    pkt.flags = 0x1000
    with pytest.raises(ValueError, match="12 bits"):
        pkt.to_bytes_incremental()


def test_incremental_length_growth_past_65535_is_refused() -> None:
    pkt = TCPPacket.parse(build(4, bytes(4), bytes(4), 1, 2, 0, 0, ACK, 0, payload=bytes(65495)))
    pkt.options = bytes(4)
    with pytest.raises(ValueError, match="longer"):
        pkt.to_bytes_incremental()
    pkt6 = TCPPacket.parse(build(6, bytes(16), bytes(16), 1, 2, 0, 0, ACK, 0, payload=bytes(65515)))
    pkt6.options = bytes(4)
    with pytest.raises(ValueError, match="longer"):
        pkt6.to_bytes_incremental()


def test_tcp_checksum_of_built_packet_verifies() -> None:
    src, dst = bytes(15) + b"\x01", bytes(15) + b"\x02"
    wire = build(6, src, dst, 1, 2, 3, 4, ACK | PSH, 5, payload=b"odd")
    assert checksum.tcp_checksum(wire[8:24], wire[24:40], wire[40:]) == 0


@pytest.mark.parametrize("version", (4, 6))
def test_complete_checksum_finishes_what_the_stack_left_to_the_nic(version):
    src, dst = (bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) if version == 4 else \
        (bytes(15) + b"\x01", bytes(15) + b"\x02")
    full = build(version, src, dst, 1000, 443, 1, 2, ACK, 100, b"", b"payload!")
    start = 20 if version == 4 else 40
    # what CHECKSUM_PARTIAL leaves in the field: the folded pseudo-header sum
    tcp_length = len(full) - start
    pseudo = checksum.tcp_checksum(src, dst, bytes(tcp_length))   # complement of the sum
    partial = full[:start + 16] + (~pseudo & 0xFFFF).to_bytes(2, "big") + full[start + 18:]
    assert partial != full
    assert complete_checksum(partial) == full
    assert complete_checksum(b"\x45garbage") == b"\x45garbage"
