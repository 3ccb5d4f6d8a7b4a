"""``tcpcryptd decode`` on captures built here from real sessions (no root needed).

The sessions come from the protocol core (Init1/Init2 key exchange, RFC 8548 §3.3), the
frames from ``Session.seal`` (with a rekey, §3.8, an URGp and a FINp frame, §3.7), the
segments are cut small, one retransmitted and one out of order, the ISN wraps 2^32; the key
log is written by :class:`KeyLog` from the engine's events.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap, wrpcap

from tcpcryptd import decode as decoder
from tcpcryptd.cli import main
from tcpcryptd.core.session import InitiatorHandshake, ResponderHandshake
from tcpcryptd.daemon.keylog import KeyLog
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


def _standard(v6: bool = False) -> Capture:
    cap = Capture(v6)
    cap.seal_a(b"GET / HTTP/1.0\r\n\r\n" + bytes(range(256)) * 4)
    cap.sa.initiate_rekey()
    cap.seal_a(b"after the rekey", urgent=3)
    cap.seal_a(b"", fin=True)
    cap.seal_b(b"HTTP/1.0 200 OK\r\n\r\nhello", fin=True)
    return cap


def _files(tmp_path: Path, cap: Capture, events: list | None = None,
           packets: list | None = None) -> tuple[Path, Path]:
    pcap, keys = tmp_path / "cap.pcap", tmp_path / "keys.log"
    wrpcap(str(pcap), packets if packets is not None else cap.packets())
    keylog = KeyLog(str(keys))
    for event in cap.events() if events is None else events:
        keylog.record(event)
    keylog.close()
    return pcap, keys


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["decode", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("v6", [False, True])
def test_decodes_every_frame_across_a_rekey(tmp_path: Path, v6: bool) -> None:
    cap = _standard(v6)
    pcap, keys = _files(tmp_path, cap)
    code, out, err = _run(str(pcap), "--keylog", str(keys), "--json")
    assert code == 0, err
    (conn,) = json.loads(out)["connections"]
    assert conn["status"] == "decrypted" and conn["tep"] == "ECDHE_CURVE25519"
    assert conn["session_id"] == cap.sa.session_id.hex() and conn["aead"] == "AES-128-GCM"
    a_dir, b_dir = conn["directions"]
    assert a_dir["role"] == "A" and b_dir["role"] == "B"
    assert (a_dir["frames_verified"], a_dir["frames_failed"], a_dir["rekeys"]) == (3, 0, 1)
    assert a_dir["sha256"] == hashlib.sha256(cap.a_plain).hexdigest()
    assert a_dir["urgent"] == [len(cap.a_plain) - len(b"after the rekey") + 3]
    assert a_dir["finp"] and a_dir["fin"]
    assert a_dir["init_bytes"] == int.from_bytes(cap.a_stream[4:8], "big")   # message_len
    assert b_dir["plaintext_bytes"] == len(b"HTTP/1.0 200 OK\r\n\r\nhello")
    code, text, _ = _run(str(pcap), "--keylog", str(keys))
    assert "decrypted, TEP ECDHE_CURVE25519, AES-128-GCM" in text
    assert "3 frames verified, 0 failed" in text and "FINp, FIN, URG at" in text


def test_write_gives_the_plain_connection(tmp_path: Path) -> None:
    cap = _standard()
    pcap, keys = _files(tmp_path, cap)
    out = tmp_path / "plain.pcap"
    code, _, err = _run(str(pcap), "--keylog", str(keys), "--write", str(out))
    assert code == 0 and "wrote" in err
    stream_a, stream_b, fins = {}, {}, []
    for packet in rdpcap(str(out)):
        tcp = packet[TCP]
        assert all(opt[0] != 69 for opt in tcp.options)     # no ENO in what apps saw
        data = bytes(tcp.payload)
        from_a = tcp.sport == 40000
        if data:
            (stream_a if from_a else stream_b)[tcp.seq] = data
        if tcp.flags.F:
            fins.append((from_a, tcp.seq))
    seqs = sorted(stream_a, key=lambda seq: (seq - ISN_A) & 0xFFFFFFFF)   # the ISN wraps
    assert b"".join(stream_a[seq] for seq in seqs) == cap.a_plain
    assert seqs[0] == (ISN_A + 1) & 0xFFFFFFFF
    assert b"".join(stream_b.values()) == b"HTTP/1.0 200 OK\r\n\r\nhello"
    assert (True, (ISN_A + 1 + len(cap.a_plain)) & 0xFFFFFFFF) in fins


def test_missing_generation_fails_those_frames(tmp_path: Path) -> None:
    cap = _standard()
    pcap, keys = _files(tmp_path, cap, events=cap.events(generations=1))
    code, out, err = _run(str(pcap), "--keylog", str(keys))
    assert code == 1
    assert "1 frames verified, 2 failed" in out and "no key for generation 1" in out
    assert "1 of 1 ENO connections not fully decrypted (0 without a key" in err


def test_tampered_frame_fails_verification(tmp_path: Path) -> None:
    cap = _standard()
    cap.a_stream[len(cap.a_stream) - 5] ^= 1          # inside the FINp frame's tag
    pcap, keys = _files(tmp_path, cap)
    code, out, _ = _run(str(pcap), "--keylog", str(keys))
    assert code == 1 and "2 frames verified, 1 failed" in out and "AEAD FAIL" in out


def test_no_keys_undecryptable(tmp_path: Path) -> None:
    cap = _standard()
    pcap, keys = _files(tmp_path, cap, events=[])
    code, out, err = _run(str(pcap), "--keylog", str(keys))
    assert code == 1 and "10.0.0.1:40000 -> 10.0.0.2:80: undecryptable" in out
    assert "ENO chose ECDHE_CURVE25519" in out
    assert "(1 without a key" in err


def test_plain_connections_are_not_reported(tmp_path: Path) -> None:
    cap = Capture()
    packets = [cap.packet(True, 1, 0, "S"), cap.packet(False, 9, 2, "SA"),
               cap.packet(True, 2, 10, "PA", b"plain")]
    pcap, keys = _files(tmp_path, cap, packets=packets)
    code, _, err = _run(str(pcap), "--keylog", str(keys))
    assert code == 1 and "no TCP-ENO connection" in err


@pytest.mark.parametrize("content", [b"", b"hello, not a capture", b"\xd4\xc3\xb2\xa1" + b"\0" * 30])
def test_corrupted_capture_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    pcap, keys = _files(tmp_path, _standard())
    if content:
        pcap.write_bytes(content)
    else:
        pcap.write_bytes(pcap.read_bytes()[:300])      # cut in the middle of a record
    code, _, err = _run(str(pcap), "--keylog", str(keys))
    assert code == 1 and "Traceback" not in err
    if content:
        assert "capture" in err


def test_bad_key_log_line_names_the_line(tmp_path: Path) -> None:
    pcap, keys = _files(tmp_path, _standard())
    keys.write_text("# comment\nTCPCRYPT_KEYS 10.0.0.1:1 10.0.0.2:2 A 23 AES-128-GCM zz 0 aa bb new\n")
    code, _, err = _run(str(pcap), "--keylog", str(keys))
    assert code == 1 and "keys.log:2: not a valid TCPCRYPT_KEYS line" in err
    code, _, err = _run(str(pcap), "--keylog", str(tmp_path / "missing"))
    assert code == 1 and "cannot read the key log" in err


def test_without_scapy_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "scapy.all", None)
    with pytest.raises(decoder.DecodeError, match=r"needs scapy: pip install 'tcpcryptd\[decode\]'"):
        decoder.read_capture(Path("x.pcap"))
