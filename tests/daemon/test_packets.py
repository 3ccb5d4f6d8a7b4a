"""Small packet helpers of the I/O adapters: truncation, direction, injection targets, key log."""

from __future__ import annotations

import os
import stat

import pytest

from tcpcryptd.daemon import keylog as keylog_module
from tcpcryptd.daemon.keylog import KeyLog
from tcpcryptd.engine.events import FellBack, Rekeyed, SessionEstablished
from tcpcryptd.daemon.nfqueue import MAX_COPY, direction, truncated
from tcpcryptd.daemon.rawsock import InjectError, destination
from tcpcryptd.engine.actions import Direction

from .fakes import FakePacket, ipv4_packet


def ipv6_packet(payload_len: int, declared: int | None = None) -> bytes:
    length = payload_len if declared is None else declared
    return bytes([0x60, 0, 0, 0]) + length.to_bytes(2, "big") + bytes([6, 64]) + \
        bytes(15) + b"\x01" + bytes.fromhex("fd000201" + "00" * 11 + "02") + bytes(payload_len)


def test_truncated_only_when_the_header_announces_more_than_the_copy():
    assert not truncated(ipv4_packet(1480))
    assert not truncated(ipv4_packet(MAX_COPY - 20))
    assert truncated(ipv4_packet(MAX_COPY - 20, total_len=MAX_COPY + 4))
    assert truncated(ipv6_packet(MAX_COPY - 40, declared=MAX_COPY - 36))
    assert not truncated(ipv6_packet(MAX_COPY - 40))
    assert not truncated(b"\x00" * MAX_COPY)  # garbage: the engine's parser decides
    assert not truncated(b"")


def test_direction_from_the_hook():
    assert direction(FakePacket(1)) is Direction.OUTBOUND
    assert direction(FakePacket.inbound(1)) is Direction.INBOUND


def test_destination_of_injected_packets():
    assert destination(ipv4_packet(0)) == (4, "10.0.0.2")
    assert destination(ipv6_packet(0)) == (6, "fd00:201::2")
    for garbage in (b"", b"\x45" * 10, b"\x60" * 30, b"\x10" * 60):
        with pytest.raises(InjectError):
            destination(garbage)


SID = bytes([0x23]) + bytes(range(32))


def test_keylog_v2_lines_for_session_and_rekey_and_private_file(tmp_path):
    path = tmp_path / "keys.log"
    keylog = KeyLog(str(path))
    keylog.record(SessionEstablished("10.0.0.1:40000", "10.0.0.2:80", "B", 0x23,
                                     "AES-128-GCM", SID, False, b"\xaa" * 28, b"\xbb" * 28))
    keylog.record(Rekeyed("10.0.0.1:40000", "10.0.0.2:80", SID, 1, b"\xcc" * 28, b"\xdd" * 28))
    keylog.record(FellBack("10.0.0.1:40001", "10.0.0.2:80", "no-eno"))   # no keys: no line
    keylog.record(Rekeyed("[fd00::1]:5", "[fd00::2]:6", b"\x21" * 33, 3, b"\x01" * 28,
                          b"\x02" * 28))                                  # session not seen
    keylog.close()
    assert path.read_text().splitlines() == [
        f"TCPCRYPT_KEYS 10.0.0.1:40000 10.0.0.2:80 B 23 AES-128-GCM {SID.hex()} 0 "
        f"{'aa' * 28} {'bb' * 28} new",
        f"TCPCRYPT_KEYS 10.0.0.1:40000 10.0.0.2:80 B 23 AES-128-GCM {SID.hex()} 1 "
        f"{'cc' * 28} {'dd' * 28} new",
        f"TCPCRYPT_KEYS [fd00::1]:5 [fd00::2]:6 - - - {'21' * 33} 3 {'01' * 28} {'02' * 28} -",
    ]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_keylog_remembers_a_bounded_number_of_sessions(tmp_path, monkeypatch):
    monkeypatch.setattr(keylog_module, "REMEMBERED_SESSIONS", 2)
    keylog = KeyLog(str(tmp_path / "keys.log"))
    for n in range(3):
        keylog.record(SessionEstablished("10.0.0.1:1", "10.0.0.2:2", "A", 0x23, "AES-128-GCM",
                                         bytes([0xa3, n]) * 16 + b"\x00", True, b"k" * 28,
                                         b"l" * 28))
    keylog.record(Rekeyed("10.0.0.1:1", "10.0.0.2:2", bytes([0xa3, 0]) * 16 + b"\x00", 1,
                          b"m" * 28, b"n" * 28))
    keylog.close()
    lines = (tmp_path / "keys.log").read_text().splitlines()
    assert [line.split()[-1] for line in lines] == ["resumed"] * 3 + ["-"]


def test_keylog_unwritable_path_is_a_config_error(tmp_path):
    from tcpcryptd.daemon.errors import ConfigError

    with pytest.raises(ConfigError, match="log.keylog: cannot open"):
        KeyLog(str(tmp_path / "missing-dir" / "keys.log"))


def test_sd_notify_sends_one_datagram(monkeypatch, tmp_path):
    import socket

    from tcpcryptd.daemon.sdnotify import notify

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert notify("READY=1") is True
        assert listener.recv(64) == b"READY=1"
        abstract = f"tcpcryptd-test-{os.getpid()}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as abstract_listener:
            abstract_listener.bind("\0" + abstract)
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + abstract)
            assert notify("STOPPING=1") is True
            assert abstract_listener.recv(64) == b"STOPPING=1"
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "absent"))
    assert notify("READY=1") is False


@pytest.fixture
def restore_logger():
    import logging

    logger = logging.getLogger("tcpcryptd")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_logging_goes_to_stderr_without_timestamps_under_journald(monkeypatch, capsys,
                                                                  restore_logger):
    import logging

    from tcpcryptd.daemon.logsetup import setup_logging

    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    setup_logging("warning")
    logger = logging.getLogger("tcpcryptd.daemon.test")
    logger.info("hidden")
    logger.warning("shown %d", 1)
    assert capsys.readouterr().err == "WARNING tcpcryptd.daemon.test: shown 1\n"
    monkeypatch.delenv("JOURNAL_STREAM")
    setup_logging("debug")
    logger.debug("now visible")
    assert capsys.readouterr().err.endswith("DEBUG tcpcryptd.daemon.test: now visible\n")
