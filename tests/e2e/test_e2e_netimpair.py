"""The impairment middlebox (tools/netimpair.py) and the bed on plain TCP, without the daemon.

Positive controls for the encrypted tests: drop/dup/reorder/resegment happen (counters > 0)
and plain TCP still delivers intact data through strict conntrack; --tamper really changes a
byte (plain TCP delivers it corrupted, which the encrypted tamper test must never do).
"""

from __future__ import annotations

import pytest
from e2e_support import IMPAIRED_SIZE, E2E

pytestmark = [pytest.mark.e2e, pytest.mark.no_daemon]

IMPAIRMENT_MIX = ("--seed", "7", "--drop", "0.01", "--dup", "0.02", "--reorder", "0.05",
                  "--delay-ms", "5", "--resegment", "0.05")


@pytest.mark.parametrize("family", [4, 6])
def test_plain_tcp_survives_impairment(e2e: E2E, family: int) -> None:
    report, stats = e2e.impaired_round_trip("impaired-plain", family, IMPAIRMENT_MIX)
    for kind in ("dropped", "duplicated", "reordered", "resegmented"):
        assert stats[kind] > 0, stats
    e2e.assert_plaintext(report)
    e2e.assert_no_invalid()


def test_plain_tcp_survives_loss(e2e: E2E) -> None:
    e2e.bed.forward_loss(0.05)
    transfer = e2e.curl("A", "B", IMPAIRED_SIZE)
    assert transfer.intact, transfer.describe()
    assert e2e.bed.loss_drops() > 0


def test_tamper_corrupts_plain_tcp(e2e: E2E) -> None:
    e2e.bed.start_impairment("--tamper", "20")
    transfer = e2e.curl("A", "B", IMPAIRED_SIZE)
    stats = e2e.bed.stop_impairment()
    assert stats["tampered"] == 1, stats
    assert transfer.exit_code == 0, transfer.describe()
    assert transfer.sent_sha != transfer.received_sha
    assert not transfer.received_is_prefix()
