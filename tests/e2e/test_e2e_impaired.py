"""Encrypted transfers through loss, reordering, duplication and resegmentation.

Loss is iptables' statistic match in the router's FORWARD chain (no netem here); the rest is
tools/netimpair.py in the router. docs/daemon.md, "What the tests check", property 1: the
application's byte stream is intact whatever the wire does; property 4: no plaintext on the
wire meanwhile.
"""

from __future__ import annotations

import pytest
from e2e_support import E2E

pytestmark = pytest.mark.e2e

#: round trips a loss test runs at most until R's rule has dropped something
LOSS_ROUNDS = 3
IMPAIRMENT_MIX = ("--seed", "11", "--drop", "0.01", "--dup", "0.02", "--reorder", "0.05",
                  "--delay-ms", "5", "--resegment", "0.05")


@pytest.mark.parametrize(("loss", "family"), [(0.01, 4), (0.05, 4), (0.01, 6)])
def test_random_loss(e2e: E2E, loss: float, family: int) -> None:
    """Both transfers intact and encrypted under random loss. R's rule drops whole GSO
    super-packets, so a round trip is only a few hundred packets: at 1% it loses none a few
    times in a hundred. A round that lost nothing proves nothing and is run again."""
    e2e.daemons("A", "B")
    e2e.bed.forward_loss(loss)
    for attempt in range(LOSS_ROUNDS):
        report, _ = e2e.impaired_round_trip(f"loss-{attempt}", family)
        e2e.assert_encrypted(report, connections=2)
        if e2e.bed.loss_drops() > 0:
            break
    assert e2e.bed.loss_drops() > 0


@pytest.mark.parametrize("family", [4, 6])
def test_reorder_duplicate_resegment(e2e: E2E, family: int) -> None:
    e2e.daemons("A", "B")
    report, stats = e2e.impaired_round_trip("impaired", family, IMPAIRMENT_MIX)
    for kind in ("dropped", "duplicated", "reordered", "resegmented"):
        assert stats[kind] > 0, stats
    e2e.assert_encrypted(report, connections=2)
