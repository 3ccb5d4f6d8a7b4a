"""The nflog binding: the kernel's batches of connections it made plain on the peer's
SYN-ACK, parsed into flow keys for the engine, never raising on bad input."""

from __future__ import annotations

import errno
import secrets
import socket
import struct
import subprocess
import sys

import pytest

from tcpcryptd.daemon.loop import PacketPath
from tcpcryptd.daemon.nflog import NFULA_PAYLOAD, NFULNL_MSG_PACKET, PlainLog, logged_key
from tcpcryptd.daemon.nfqueue import Verdicts

from .fakes import ScriptedEngine, FakeSender

V4 = (bytes([0x45, 0, 0, 40]) + bytes(5) + bytes([6]) + bytes(2) + bytes([10, 0, 0, 1])
      + bytes([10, 0, 0, 2]) + struct.pack(">HH", 40000, 80) + bytes(16))[:64]
V6 = (bytes([0x60, 0, 0, 0, 0, 20, 6, 64]) + socket.inet_pton(socket.AF_INET6, "fd00::1")
      + socket.inet_pton(socket.AF_INET6, "fd00::2") + struct.pack(">HH", 40001, 443)
      + bytes(16))[:64]
KEY4 = (4, bytes([10, 0, 0, 1]), 40000, bytes([10, 0, 0, 2]), 80)
KEY6 = (6, socket.inet_pton(socket.AF_INET6, "fd00::1"), 40001,
        socket.inet_pton(socket.AF_INET6, "fd00::2"), 443)


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(value), kind) + value + bytes(-len(value) % 4)


def _message(*attributes: bytes) -> bytes:
    body = struct.pack("=BBH", socket.AF_INET, 0, 0) + b"".join(attributes)
    return struct.pack("=IHHII", 16 + len(body), NFULNL_MSG_PACKET, 0, 0, 0) + body


class FakeSocket:
    """Hands out scripted datagrams (or raises scripted errors), then would block."""

    def __init__(self, *script: bytes | OSError) -> None:
        self.script = list(script)

    def setblocking(self, flag: bool) -> None:
        pass

    def recv_into(self, buffer: bytearray) -> int:
        if not self.script:
            raise BlockingIOError
        step = self.script.pop(0)
        if isinstance(step, OSError):
            raise step
        buffer[:len(step)] = step
        return len(step)


def test_the_key_is_the_local_stacks_view_of_an_outbound_packet():
    assert logged_key(memoryview(V4)) == KEY4
    assert logged_key(memoryview(V6)) == KEY6


@pytest.mark.parametrize("payload", [
    b"", V4[:23], bytes([0x45]) + V4[1:9] + bytes([17]) + V4[10:],    # short, UDP
    V6[:6] + bytes([0]) + V6[7:],                                     # an extension header
    bytes([0x41]) + V4[1:], bytes([0x50]) + V4[1:]])                  # bad IHL, version 5
def test_anything_else_is_no_key(payload):
    assert logged_key(memoryview(payload)) is None


def test_a_batch_reaches_the_engine_and_bad_input_is_counted():
    engine = ScriptedEngine()
    path = PacketPath(engine, FakeSender(), Verdicts(0x2, 0x1, 0x8), clock=lambda: 7.0)
    batch = (_message(_attr(1, bytes(4)), _attr(NFULA_PAYLOAD, V4))
             + _message(_attr(NFULA_PAYLOAD, V6)) + _message(_attr(1, bytes(4))))
    truncated = _message(_attr(NFULA_PAYLOAD, V4))[:-8]
    log = PlainLog(5, path.on_peer_plain, path.counters,
                   sock=FakeSocket(batch, OSError(errno.ENOBUFS, "lost"), truncated))
    log.process()
    assert engine.plain_calls == [(KEY4, 7.0), (KEY6, 7.0)]
    assert path.counters["daemon_nflog_bad"] == 2       # no payload; cut short
    assert path.counters["daemon_nflog_lost"] == 1


def test_an_engine_failure_is_counted_not_raised():
    engine = ScriptedEngine()
    engine.script.append(RuntimeError("bug"))
    path = PacketPath(engine, FakeSender(), Verdicts(0x2, 0x1, 0x8))
    PlainLog(5, path.on_peer_plain, path.counters,
             sock=FakeSocket(_message(_attr(NFULA_PAYLOAD, V4)))).process()
    assert path.counters["daemon_engine_errors"] == 1


_LISTEN = """
import socket, sys
from tcpcryptd.daemon.nflog import PlainLog
keys = []
log = PlainLog(7, keys.append)
print("ready", flush=True)
sys.stdin.readline()
import select
while not keys:
    select.select([log], [], [], 10)
    log.process()
print(keys[0][0], socket.inet_ntop(socket.AF_INET, keys[0][1]), keys[0][2],
      socket.inet_ntop(socket.AF_INET, keys[0][3]), keys[0][4], flush=True)
log.close()
"""


def test_the_kernel_s_messages_in_a_namespace():
    """A real nflog group: an nft rule logs an outbound SYN with this table's statement."""
    name = f"tcpcryptd-nflog-{secrets.token_hex(3)}"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        pytest.skip("needs root and ip netns")
    try:
        run = ["ip", "netns", "exec", name]
        subprocess.run([*run, "ip", "link", "set", "lo", "up"], check=True)
        listener = subprocess.Popen([*run, sys.executable, "-c", _LISTEN],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert listener.stdout.readline() == "ready\n"
        rules = ("table inet t {\nchain o {\ntype filter hook output priority 0;\n"
                 "tcp dport 9 log group 7 snaplen 64 queue-threshold 16\n}\n}\n")
        subprocess.run([*run, "nft", "-f", "-"], input=rules, text=True, check=True)
        subprocess.run([*run, sys.executable, "-c",
                        "import socket\ntry: socket.create_connection(('127.0.0.1', 9), 1)\n"
                        "except OSError: pass"], check=True)
        out, _ = listener.communicate("go\n", timeout=30)
        version, local, local_port, remote, remote_port = out.split()
        assert (version, local, remote, remote_port) == ("4", "127.0.0.1", "127.0.0.1", "9")
        assert 0 < int(local_port) < 65536
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
