"""Key logs of both daemons decrypt a capture of real connections (``tcpcryptd decode``).

A curl download (HTTP) and an nc upload through two daemons writing key logs (format 2,
docs/daemon.md); the upload resumes the download's session (RFC 8548 §3.5: no Init
messages, frames from offset 0). The capture between them is decoded with each key log to exactly the bytes
the applications sent (sha256), ``--write``'s plain capture shows tshark the HTTP request and
response, and without keys both connections are reported undecryptable (exit 1).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from capture_wait import stop_when_fins
from e2e_support import HTTP_PORT, NC_PORT, E2E

from tcpcryptd import decode as decoder
from testbed import tcpcryptd_command

pytestmark = pytest.mark.e2e

LUA = Path(__file__).resolve().parents[2] / "contrib" / "wireshark" / "tcpcrypt.lua"

SIZE = 2_000_000


def _keylog_daemons(e2e: E2E) -> dict[str, Path]:
    """Both daemons with a key log and one worker each: each worker keeps its own
    resumption cache, so with one the later connections resume for sure."""
    keylogs = {}
    for label in ("A", "B"):
        keylogs[label] = e2e.bed.workdir / f"{label}.keys"
        config = e2e.bed.workdir / f"{label}-keylog.toml"
        config.write_text(f'[log]\nkeylog = "{keylogs[label]}"\n[queue]\nworkers = 1\n')
        e2e.bed.daemon(label, ["--config", str(config)])
    return keylogs


def _decode(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*tcpcryptd_command(), "decode", *args], capture_output=True,
                          text=True, timeout=300)


def test_decode_http_and_nc_with_either_key_log(e2e: E2E) -> None:
    keylogs = _keylog_daemons(e2e)
    capture = e2e.bed.capture("decode")
    download = e2e.curl("A", "B", SIZE)
    upload = e2e.nc_send("A", "B", SIZE)
    stop_when_fins(capture, directions=4)
    assert download.intact, download.describe()
    assert upload.intact, upload.describe()
    e2e.assert_encrypted(capture.analyze(e2e.marker), connections=2)
    payload = e2e.payload(SIZE).read_bytes()
    a_ip, b_ip = e2e.bed.addr("A"), e2e.bed.addr("B")
    for daemon in e2e.bed.daemons:     # the loud warning at start
        assert "WARNING tcpcryptd.daemon: KEY LOG ON" in daemon.log_path.read_text()
    for label, keylog in keylogs.items():
        assert keylog.stat().st_mode & 0o777 == 0o600
        out = e2e.bed.workdir / f"plain-{label}.pcap"
        done = _decode(str(capture.path), "--keylog", str(keylog), "--json", "--write",
                       str(out))
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        report = json.loads(done.stdout)
        conns = {int(c["server"].rsplit(":", 1)[1]): c for c in report["connections"]}
        assert set(conns) == {HTTP_PORT, NC_PORT}
        for port, conn in conns.items():
            assert conn["status"] == "decrypted"
            assert conn["resumed"] == (port == NC_PORT)
            assert conn["tep"] == "X25519" and conn["aead"] == "AES-128-GCM"
            assert conn["host_a"].startswith(a_ip + ":") and conn["client"] == conn["host_a"]
            assert len(bytes.fromhex(conn["session_id"])) == 33
            for d in conn["directions"]:
                assert d["frames_failed"] == 0 and d["frames_verified"] > 0, d
                assert d["fin"] and d["finp"] and not d["problems"], d
                assert (d["init_bytes"] > 0) == (port == HTTP_PORT), d
        upload_dir = next(d for d in conns[NC_PORT]["directions"]
                          if d["from"].startswith(a_ip + ":"))
        assert upload_dir["sha256"] == hashlib.sha256(payload).hexdigest()
        assert upload_dir["plaintext_bytes"] == SIZE
        # the HTTP exchange, byte for byte (the decoder's plaintext streams)
        _, connections, _ = decoder.read_capture(capture.path)
        decoder.decode(connections, decoder.load_keylog(keylog))
        http = next(c for c in connections if c.server.endswith(f":{HTTP_PORT}"))
        request = bytes(http.directions[http.client].plaintext)
        response = bytes(http.directions[http.server].plaintext)
        assert request.startswith(f"GET /payload-{SIZE}.bin HTTP/1.1\r\n".encode())
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200 OK") and f"{SIZE}".encode() in head
        assert hashlib.sha256(body).hexdigest() == hashlib.sha256(payload).hexdigest()
        # Wireshark's own HTTP dissector on the rewritten capture
        fields = subprocess.run(
            ["tshark", "-r", str(out), "-Y", "http", "-T", "fields", "-e", "ip.src",
             "-e", "http.request.method", "-e", "http.request.uri", "-e", "http.response.code"],
            capture_output=True, text=True, timeout=300, check=True).stdout.split("\n")
        rows = [line.split("\t") for line in fields if line.strip()]
        assert [a_ip, "GET", f"/payload-{SIZE}.bin", ""] in rows, rows
        assert [b_ip, "", "", "200"] in rows, rows
        assert e2e.marker not in capture.path.read_bytes()
        assert e2e.marker in out.read_bytes()     # the plaintext is what --write shows
    _check_dissector(capture.path, report)
    # no keys: both connections undecryptable, exit 1, no traceback
    empty = e2e.bed.workdir / "empty.keys"
    empty.write_text("")
    done = _decode(str(capture.path), "--keylog", str(empty))
    assert done.returncode == 1
    assert done.stdout.count(": undecryptable") == 2, done.stdout
    assert "2 of 2 ENO connections not fully decrypted (2 without a key" in done.stderr
    assert "Traceback" not in done.stderr


def _check_dissector(pcap: Path, report: dict) -> None:
    """contrib/wireshark/tcpcrypt.lua names the ENO option of every SYN, SYN-ACK and first
    ACK, both Init messages of the fresh connection (the resumed one has none), and exactly
    the frames decode verified."""
    fields = ("tcp.flags.syn", "tcp.flags.ack", "tcpeno.form", "tcpeno.tep",
              "tcpcrypt.magic", "tcpcrypt.clen", "tcpcrypt.tag")
    args = ["tshark", "-X", f"lua_script:{LUA}", "-r", str(pcap), "-T", "fields",
            "-E", "separator=\t", "-E", "aggregator=|", "-o", "tcp.reassemble_out_of_order:TRUE"]
    for name in fields:
        args += ["-e", name]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Lua" not in done.stderr, done.stderr
    rows = [dict(zip(fields, (v.split("|") if v else [] for v in line.split("\t"))))
            for line in done.stdout.splitlines()]
    syns = [row for row in rows if row["tcp.flags.syn"] == ["1"]]
    assert len(syns) == 4 and all(row["tcpeno.form"] == ["SYN form"] for row in syns)
    assert all("0x23" in row["tcpeno.tep"] for row in syns)        # X25519 offered / chosen
    assert sum(row["tcpeno.form"] == ["non-SYN form"] for row in rows) >= 2
    magics = sorted(v for row in rows for v in row["tcpcrypt.magic"])
    assert magics == ["0x097105e0", "0x15101a0e"]
    frames = sum(len(row["tcpcrypt.clen"]) for row in rows)
    assert frames == sum(d["frames_verified"] for c in report["connections"]
                         for d in c["directions"])
    assert all(len(tag) == 32 for row in rows for tag in row["tcpcrypt.tag"])
