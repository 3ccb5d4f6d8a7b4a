"""Policy end to end: ``require`` resets what would stay plain and passes what is encrypted;
``skip`` leaves a connection plain even between two daemons."""

from __future__ import annotations

from pathlib import Path

import pytest
from capture_wait import stop_when_closed, stop_when_reset
from e2e_support import HTTP_PORT, E2E, MB, counter, session_ids

pytestmark = pytest.mark.e2e

SIZE = 2 * MB


def _config(e2e: E2E, name: str, text: str) -> list[str]:
    """``run`` arguments for a configuration file holding ``text``."""
    path: Path = e2e.bed.workdir / f"{name}.toml"
    path.write_text(text)
    return ["--config", str(path)]


def _require_b(e2e: E2E) -> list[str]:
    """A's policy: connections to B's IPv4 prefix must be encrypted."""
    return _config(e2e, "require-b", "[policy]\n[[policy.rules]]\nmode = 'require'\n"
                                     "peer = '10.201.2.0/24'\n")


@pytest.mark.parametrize("family", [4, 6])
def test_require_resets_a_connection_to_a_peer_without_the_daemon(e2e: E2E, family: int) -> None:
    """IPv4 to B is required; IPv6 to B is not (the rule names an IPv4 prefix): the control."""
    bed = e2e.bed
    daemon = bed.daemon("A", _require_b(e2e))
    capture = bed.capture("require-reset")
    transfer = e2e.curl("A", "B", SIZE, family)
    (stop_when_reset if family == 4 else stop_when_closed)(capture, HTTP_PORT)
    report = capture.analyze(e2e.marker)
    if family == 6:
        assert transfer.intact, transfer.describe()
        e2e.assert_plaintext(report)
        assert counter(daemon, "require_resets") == 0
        return
    # curl's exit 7: connect() failed (the RST to A's stack acknowledged its SYN)
    assert transfer.exit_code == 7 and transfer.received_size == 0, transfer.describe()
    assert counter(daemon, "require_resets") >= 1
    # ENO offered, refused by B's plain stack, then nothing but resets: no byte of payload
    assert report.syn >= 1 and report.syn_with_eno == report.syn, report.summary()
    assert report.synack >= 1 and report.synack_with_eno == 0, report.summary()
    assert report.payload_bytes == 0 and report.marker_hits == 0, report.summary()
    assert session_ids(daemon, HTTP_PORT) == []
    e2e.assert_no_invalid()


def test_require_lets_an_encrypted_connection_through(e2e: E2E) -> None:
    bed = e2e.bed
    daemon = bed.daemon("A", _require_b(e2e))
    peer = bed.daemon("B")
    capture = bed.capture("require-encrypted")
    transfer = e2e.curl("A", "B", SIZE, 4)
    stop_when_closed(capture, HTTP_PORT)
    assert transfer.intact, transfer.describe()
    e2e.assert_encrypted(capture.analyze(e2e.marker))
    e2e.assert_no_invalid()
    assert counter(daemon, "require_resets") == 0
    [session_id] = session_ids(daemon, HTTP_PORT)
    assert session_ids(peer, HTTP_PORT) == [session_id]


def test_skip_leaves_a_connection_plain_between_two_daemons(e2e: E2E) -> None:
    bed = e2e.bed
    daemon = bed.daemon("A", _config(e2e, "skip-http", "[policy]\n[[policy.rules]]\n"
                                                      f"mode = 'skip'\nremote_port = {HTTP_PORT}\n"))
    peer = bed.daemon("B")
    capture = bed.capture("skip")
    transfer = e2e.curl("A", "B", SIZE, 4)
    stop_when_closed(capture, HTTP_PORT)
    assert transfer.intact, transfer.describe()
    report = capture.analyze(e2e.marker)
    assert report.syn >= 1 and report.syn_with_eno == 0, report.summary()
    e2e.assert_plaintext(report)
    e2e.assert_no_invalid()
    assert counter(daemon, "plain_policy-skip") >= 1
    assert session_ids(daemon, HTTP_PORT) == session_ids(peer, HTTP_PORT) == []


@pytest.mark.parametrize("family", [4, 6])
def test_require_on_the_passive_side_resets_a_peer_without_the_daemon(e2e: E2E,
                                                                       family: int) -> None:
    """B requires encryption from A's IPv4 prefix on its HTTP port: A's SYN without ENO,
    which the kernel would otherwise leave plain by itself, reaches B's daemon and is
    refused. IPv6 from A is not selected: plain, the control."""
    bed = e2e.bed
    daemon = bed.daemon("B", _config(e2e, "require-a", "[policy]\n[[policy.rules]]\n"
                                     f"mode = 'require'\npeer = '10.201.1.0/24'\n"
                                     f"local_port = {HTTP_PORT}\n"))
    capture = bed.capture("require-passive")
    transfer = e2e.curl("A", "B", SIZE, family)
    (stop_when_reset if family == 4 else stop_when_closed)(capture, HTTP_PORT)
    report = capture.analyze(e2e.marker)
    if family == 6:
        assert transfer.intact, transfer.describe()
        e2e.assert_plaintext(report)
        assert counter(daemon, "require_resets") == 0
        return
    assert transfer.exit_code == 7 and transfer.received_size == 0, transfer.describe()
    assert counter(daemon, "require_resets") >= 1
    assert counter(daemon, "plain_no-eno-syn") == 0
    assert report.syn >= 1 and report.syn_with_eno == 0, report.summary()
    # B's stack answered; its SYN-ACK never left: both ends got a RST instead
    assert report.synack == 0 and report.payload_bytes == 0, report.summary()
    e2e.assert_no_invalid()
