"""``tcpcryptd decode`` on captures built from real sessions (tcpcrypt_capture.py; no root
needed); the key log is written by :class:`KeyLog` from the engine's events."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from scapy.layers.inet import TCP
from scapy.utils import rdpcap, wrpcap

from tcpcryptd import decode as decoder
from tcpcryptd.cli import main
from tcpcryptd.daemon.keylog import KeyLog

from .tcpcrypt_capture import ISN_A, Capture, standard_capture

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
    cap = standard_capture(v6)
    pcap, keys = _files(tmp_path, cap)
    code, out, err = _run(str(pcap), "--keylog", str(keys), "--json")
    assert code == 0, err
    (conn,) = json.loads(out)["connections"]
    assert conn["status"] == "decrypted" and conn["tep"] == "X25519"
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
    assert "decrypted, TEP X25519, AES-128-GCM" in text
    assert "3 frames verified, 0 failed" in text and "FINp, FIN, URG at" in text


def test_write_gives_the_plain_connection(tmp_path: Path) -> None:
    cap = standard_capture()
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
    cap = standard_capture()
    pcap, keys = _files(tmp_path, cap, events=cap.events(generations=1))
    code, out, err = _run(str(pcap), "--keylog", str(keys))
    assert code == 1
    assert "1 frames verified, 2 failed" in out and "no key for generation 1" in out
    assert "1 of 1 ENO connections not fully decrypted (0 without a key" in err


def test_tampered_frame_fails_verification(tmp_path: Path) -> None:
    cap = standard_capture()
    cap.a_stream[len(cap.a_stream) - 5] ^= 1          # inside the FINp frame's tag
    pcap, keys = _files(tmp_path, cap)
    code, out, _ = _run(str(pcap), "--keylog", str(keys))
    assert code == 1 and "2 frames verified, 1 failed" in out and "AEAD FAIL" in out


def test_no_keys_undecryptable(tmp_path: Path) -> None:
    cap = standard_capture()
    pcap, keys = _files(tmp_path, cap, events=[])
    code, out, err = _run(str(pcap), "--keylog", str(keys))
    assert code == 1 and "10.0.0.1:40000 -> 10.0.0.2:80: undecryptable" in out
    assert "ENO chose X25519" in out
    assert "(1 without a key" in err


@pytest.mark.parametrize("synack_options", [[], [(69, b"\x01")]])   # no ENO, vacuous ENO
def test_plain_connections_are_not_reported(tmp_path: Path, synack_options: list) -> None:
    cap = Capture()
    packets = [cap.packet(True, 1, 0, "S", options=[(69, b"\x23")]),
               cap.packet(False, 9, 2, "SA", options=synack_options),
               cap.packet(True, 2, 10, "PA", b"plain")]
    pcap, keys = _files(tmp_path, cap, packets=packets)
    code, _, err = _run(str(pcap), "--keylog", str(keys))
    assert code == 1 and "no TCP-ENO connection" in err


@pytest.mark.parametrize("content", [b"", b"hello, not a capture", b"\xd4\xc3\xb2\xa1" + b"\0" * 30])
def test_corrupted_capture_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    pcap, keys = _files(tmp_path, standard_capture())
    if content:
        pcap.write_bytes(content)
    else:
        pcap.write_bytes(pcap.read_bytes()[:300])      # cut in the middle of a record
    code, _, err = _run(str(pcap), "--keylog", str(keys))
    assert code == 1 and "Traceback" not in err
    if content:
        assert "capture" in err


def test_bad_key_log_line_names_the_line(tmp_path: Path) -> None:
    pcap, keys = _files(tmp_path, standard_capture())
    keys.write_text("# comment\nTCPCRYPT_KEYS 10.0.0.1:1 10.0.0.2:2 A 23 AES-128-GCM zz 0 aa bb new\n")
    code, _, err = _run(str(pcap), "--keylog", str(keys))
    assert code == 1 and "keys.log:2: not a valid TCPCRYPT_KEYS line" in err
    code, _, err = _run(str(pcap), "--keylog", str(tmp_path / "missing"))
    assert code == 1 and "cannot read the key log" in err


def test_without_scapy_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "scapy.all", None)
    with pytest.raises(decoder.DecodeError, match=r"needs scapy: pip install 'tcpcryptd\[decode\]'"):
        decoder.read_capture(Path("x.pcap"))


def test_a_hole_in_the_capture_is_reported(tmp_path: Path) -> None:
    cap = standard_capture()
    packets = cap.packets()
    del packets[9]                                       # one of A's data segments
    pcap, keys = _files(tmp_path, cap, packets=packets)
    code, out, _ = _run(str(pcap), "--keylog", str(keys), "--json")
    assert code == 1
    a_dir = json.loads(out)["connections"][0]["directions"][0]
    assert a_dir["problems"][0].startswith("capture misses wire bytes at offset ")
    assert a_dir["frames_failed"] == 0 and a_dir["plaintext_bytes"] < len(cap.a_plain)


@pytest.mark.parametrize("v6", [False, True])
def test_pcapng_and_ipv6_write(tmp_path: Path, v6: bool) -> None:
    from scapy.utils import PcapNgWriter

    cap = standard_capture(v6)
    pcap, keys = _files(tmp_path, cap)
    pcapng = tmp_path / "cap.pcapng"
    with PcapNgWriter(str(pcapng)) as writer:
        for packet in rdpcap(str(pcap)):
            writer.write(packet)
    out = tmp_path / "plain.pcap"
    code, text, err = _run(str(pcapng), "--keylog", str(keys), "--write", str(out))
    assert code == 0, err
    assert ": decrypted," in text
    data = b"".join(bytes(p[TCP].payload) for p in rdpcap(str(out)) if p[TCP].sport == 40000)
    assert data == cap.a_plain


def test_mutated_captures_never_raise(tmp_path: Path) -> None:
    """Flipped bytes anywhere in a capture: a report or a clear error, never a traceback."""
    import random

    pcap, keys = _files(tmp_path, standard_capture())
    original = pcap.read_bytes()
    rng = random.Random(8548)
    for _ in range(40):
        data = bytearray(original)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        pcap.write_bytes(bytes(data))
        result = CliRunner().invoke(main, ["decode", str(pcap), "--keylog", str(keys),
                                           "--write", str(tmp_path / "out.pcap")])
        assert result.exit_code in (0, 1), result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), \
            repr(result.exception)


def test_offsets_unwrap_across_many_wraps_of_the_sequence_numbers() -> None:
    direction = decoder.Direction("a:1", "b:2", isn=0xFFFFFF00)
    step = 1 << 30
    offsets = [direction.offset((0xFFFFFF01 + k * step) & 0xFFFFFFFF) for k in range(10)]
    assert offsets == [k * step for k in range(10)]                 # 2.5 wraps of 2^32
    assert direction.offset((0xFFFFFF01 + 9 * step - 100) & 0xFFFFFFFF) == 9 * step - 100
