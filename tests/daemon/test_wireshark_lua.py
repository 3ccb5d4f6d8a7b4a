"""contrib/wireshark/tcpcrypt.lua in tshark: every ENO field named, Init1/Init2 and frames.

The capture is built from real sessions (tcpcrypt_capture.py): ENO in SYN form with a
global suboption, plain TEP suboptions, a length-byte suboption and a final v=1 suboption
(RFC 8547 §4.2-§4.4), the non-SYN form, Init1/Init2 (RFC 8548 §4.1) and frames cut across
segments, one with the rekey bit (§4.2, §3.8).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from scapy.utils import wrpcap

from tcpcryptd.core.frame import HEADER_LEN

from .tcpcrypt_capture import Capture, standard_capture

SCRIPT = Path(__file__).resolve().parents[2] / "contrib" / "wireshark" / "tcpcrypt.lua"
FIELDS = ("frame.number", "tcpeno.form", "tcpeno.global.b", "tcpeno.global.a", "tcpeno.tep",
          "tcpeno.tep.v", "tcpeno.length_byte", "tcpeno.data_length", "tcpeno.data",
          "tcpcrypt.magic", "tcpcrypt.message_len", "tcpcrypt.nciphers", "tcpcrypt.sym_cipher",
          "tcpcrypt.n_a", "tcpcrypt.n_b", "tcpcrypt.pub", "tcpcrypt.control.rekey",
          "tcpcrypt.clen", "tcpcrypt.tag")

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")


def tshark_fields(pcap: Path, fields: tuple[str, ...] = FIELDS) -> list[dict[str, list[str]]]:
    """One dict per packet: field -> values, from tshark with the dissector loaded.

    Fails with the fix when tshark does not load the script (as root, Wireshark's init.lua
    may refuse user scripts: run_user_scripts_when_superuser).
    """
    args = ["tshark", "-X", f"lua_script:{SCRIPT}", "-r", str(pcap), "-T", "fields",
            "-E", "separator=\t", "-E", "aggregator=|",
            "-o", "tcp.reassemble_out_of_order:TRUE"]
    for name in fields:
        args += ["-e", name]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert "aren't valid" not in done.stderr, (   # tshark knows the fields only with the script
        f"tshark did not load {SCRIPT} (as root, set run_user_scripts_when_superuser = true "
        f"in Wireshark's init.lua, or run as an unprivileged user): {done.stderr}")
    assert done.returncode == 0 and "Lua" not in done.stderr, done.stderr
    rows = []
    for line in done.stdout.splitlines():
        values = line.split("\t")
        rows.append({name: value.split("|") if value else [] for name, value in
                     zip(fields, values)})
    return rows


def test_every_eno_field_and_tcpcrypt_message(tmp_path: Path) -> None:
    cap = standard_capture()
    # SYN: global suboption (a bit), X25519, X448, P-256 with 3 data bytes behind a length
    # byte, and P-521 with v=1 and data to the end of the option (RFC 8547 §4.4)
    syn_eno = (69, b"\x02\x23\x24\x82\xa1abc\xa2zz")
    packets = cap.packets()
    packets[0] = cap.packet(True, packets[0]["TCP"].seq, 0, "S", options=[syn_eno])
    pcap = tmp_path / "eno.pcap"
    wrpcap(str(pcap), packets)
    rows = tshark_fields(pcap)
    syn, synack, third = rows[0], rows[1], rows[2]
    assert syn["tcpeno.form"] == ["SYN form"]
    assert syn["tcpeno.global.a"] == ["1"] and syn["tcpeno.global.b"] == ["0"]
    assert syn["tcpeno.tep"] == ["0x23", "0x24", "0x21", "0x22"]
    assert syn["tcpeno.tep.v"] == ["0", "0", "1", "1"]
    assert syn["tcpeno.length_byte"] == ["0x82"] and syn["tcpeno.data_length"] == ["3"]
    assert syn["tcpeno.data"] == [b"abc".hex(), b"zz".hex()]
    assert synack["tcpeno.form"] == ["SYN form"] and synack["tcpeno.global.b"] == ["1"]
    assert synack["tcpeno.tep"] == ["0x23"]
    assert third["tcpeno.form"] == ["non-SYN form"]
    magics = [v for row in rows for v in row["tcpcrypt.magic"]]
    assert magics == ["0x15101a0e", "0x097105e0"]                # Init1 then Init2
    assert [v for row in rows for v in row["tcpcrypt.nciphers"]] == ["3"]
    assert [v for row in rows for v in row["tcpcrypt.sym_cipher"]] == [
        "0x0001", "0x0002", "0x0010", "0x0001"]
    assert all(len(v) == 64 for row in rows for v in row["tcpcrypt.n_a"] + row["tcpcrypt.n_b"])
    assert [len(v) for row in rows for v in row["tcpcrypt.pub"]] == [64, 64]   # X25519
    clens = [int(v) for row in rows for v in row["tcpcrypt.clen"]]
    assert clens == _frame_clens(cap.a_stream) + _frame_clens(cap.b_stream)
    rekeys = [v for row in rows for v in row["tcpcrypt.control.rekey"]]
    assert rekeys == ["0", "1", "0", "0"]
    assert all(len(v) == 32 for row in rows for v in row["tcpcrypt.tag"])


def _frame_clens(stream: bytearray) -> list[int]:
    """clen of every frame after the Init message (message_len at bytes 4..8)."""
    pos, clens = int.from_bytes(stream[4:8], "big"), []
    while pos < len(stream):
        clen = int.from_bytes(stream[pos + 1:pos + 3], "big")
        clens.append(clen)
        pos += HEADER_LEN + clen
    return clens


def test_plain_connection_has_no_tcpcrypt(tmp_path: Path) -> None:
    cap = Capture()
    pcap = tmp_path / "plain.pcap"
    wrpcap(str(pcap), [cap.packet(True, 1, 0, "S"), cap.packet(False, 9, 2, "SA"),
                       cap.packet(True, 2, 10, "PA", b"\x15\x10\x1a\x0e" + b"x" * 80)])
    rows = tshark_fields(pcap)
    assert all(not row["tcpeno.form"] and not row["tcpcrypt.magic"] for row in rows)


def test_no_lua_error_on_the_whole_tree_and_on_damaged_captures(tmp_path: Path) -> None:
    """Every packet dissected in full (-V), also with flipped bytes anywhere: Wireshark
    shows a script's runtime errors in the tree as "Lua Error"."""
    import random

    pcap = tmp_path / "eno.pcap"
    wrpcap(str(pcap), standard_capture().packets())
    original = pcap.read_bytes()
    rng = random.Random(8547)
    for attempt in range(12):
        if attempt:
            data = bytearray(original)
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(24, len(data))] = rng.randrange(256)
            pcap.write_bytes(bytes(data))
        done = subprocess.run(["tshark", "-X", f"lua_script:{SCRIPT}", "-r", str(pcap), "-V",
                               "-o", "tcp.reassemble_out_of_order:TRUE"],
                              capture_output=True, text=True, timeout=120)
        assert "Lua Error" not in done.stdout and "Lua" not in done.stderr, done.stderr
        if not attempt:
            assert "TCP-ENO option (SYN form)" in done.stdout and "Init1" in done.stdout
