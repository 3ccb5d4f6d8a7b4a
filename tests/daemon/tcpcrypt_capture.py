"""A tcpcrypt connection built from real sessions of the protocol core, as capture packets.

The sessions come from Init1/Init2 (RFC 8548 §3.3), the frames from ``Session.seal`` (with
a rekey, §3.8, an URGp and a FINp frame, §3.7); segments are cut small, one retransmitted and
one out of order, and A's ISN wraps 2^32. Used by the decode and Wireshark dissector tests.
"""

from __future__ import annotations

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from tcpcryptd.core.session import InitiatorHandshake, ResponderHandshake
from tcpcryptd.engine.events import Rekeyed, SessionEstablished

ISN_A, ISN_B = 0xFFFFFFF0, 0x1000
ENO_A, ENO_B = (69, b"\x23\x24"), (69, b"\x01\x23")   # RFC 8547 §4.1: TEP lists; B: b bit


class Capture:
    """One connection A -> B with a tcpcrypt session, as packets and key log events."""

    def __init__(self, v6: bool = False, port: int = 80) -> None:
        initiator = InitiatorHandshake(0x23, b"transcript")
        responder = ResponderHandshake(0x23, b"transcript")
        init2, self.sb = responder.receive_init1(initiator.init1)
        self.sa = initiator.receive_init2(init2)
        self.a_ip, self.b_ip = ("fd00::1", "fd00::2") if v6 else ("10.0.0.1", "10.0.0.2")
        self.a_port, self.b_port = 40000, port
        self.v6 = v6
        self.a_stream = bytearray(initiator.init1)
        self.b_stream = bytearray(init2)
        self.a_plain = b""

    def endpoint(self, ip: str, port: int) -> str:
        return f"[{ip}]:{port}" if self.v6 else f"{ip}:{port}"

    def seal_a(self, data: bytes, **kw: object) -> None:
        self.a_stream += self.sa.seal(len(self.a_stream), data, **kw)
        self.a_plain += data

    def seal_b(self, data: bytes, **kw: object) -> None:
        self.b_stream += self.sb.seal(len(self.b_stream), data, **kw)

    def events(self, generations: int = 2) -> list:
        local, remote = self.endpoint(self.a_ip, self.a_port), self.endpoint(self.b_ip, self.b_port)
        k_ab, k_ba = self.sa.traffic_keys(0)
        out: list = [SessionEstablished(local, remote, "A", 0x23, self.sa.aead.name,
                                        self.sa.session_id, False, k_ab, k_ba)]
        for generation in range(1, generations):
            out.append(Rekeyed(local, remote, self.sa.session_id, generation,
                               *self.sa.traffic_keys(generation)))
        return out

    def packet(self, from_a: bool, seq: int, ack: int, flags: str, payload: bytes = b"",
               options: list | None = None) -> Ether:
        ip = IPv6 if self.v6 else IP
        src, dst = (self.a_ip, self.b_ip) if from_a else (self.b_ip, self.a_ip)
        sport, dport = (self.a_port, self.b_port) if from_a else (self.b_port, self.a_port)
        return (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip(src=src, dst=dst)
                / TCP(sport=sport, dport=dport, seq=seq & 0xFFFFFFFF, ack=ack & 0xFFFFFFFF,
                      flags=flags, options=options or []) / payload)

    def packets(self, chunk: int = 50) -> list:
        a, b = bytes(self.a_stream), bytes(self.b_stream)
        out = [self.packet(True, ISN_A, 0, "S", options=[ENO_A]),
               self.packet(False, ISN_B, ISN_A + 1, "SA", options=[ENO_B]),
               self.packet(True, ISN_A + 1, ISN_B + 1, "A", options=[(69, b"")])]
        pieces = [(i, a[i:i + chunk]) for i in range(0, len(a), chunk)]
        pieces[1], pieces[2] = pieces[2], pieces[1]         # out of order
        pieces.insert(4, pieces[3])                          # a retransmission
        for offset, piece in pieces:
            out.append(self.packet(True, ISN_A + 1 + offset, ISN_B + 1, "PA", piece))
        out.append(self.packet(False, ISN_B + 1, ISN_A + 1 + len(a), "PA", b))
        out.append(self.packet(True, ISN_A + 1 + len(a), ISN_B + 1 + len(b), "FA"))
        out.append(self.packet(False, ISN_B + 1 + len(b), ISN_A + 2 + len(a), "FA"))
        out.append(self.packet(True, ISN_A + 2 + len(a), ISN_B + 2 + len(b), "A"))
        return out


def standard_capture(v6: bool = False) -> Capture:
    """A sends a request, rekeys, sends urgent data and FINp; B answers with FINp."""
    cap = Capture(v6)
    cap.seal_a(b"GET / HTTP/1.0\r\n\r\n" + bytes(range(256)) * 4)
    cap.sa.initiate_rekey()
    cap.seal_a(b"after the rekey", urgent=3)
    cap.seal_a(b"", fin=True)
    cap.seal_b(b"HTTP/1.0 200 OK\r\n\r\nhello", fin=True)
    return cap


