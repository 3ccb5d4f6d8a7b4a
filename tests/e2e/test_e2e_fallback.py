"""A peer without tcpcryptd: plain TCP both ways, nothing encrypted, counted as fallback.

RFC 8547 §4.6: a SYN-ACK without ENO disables TCP-ENO; the connection goes on as plain TCP
(docs/daemon.md, "What the tests check", property 5: as if the daemon were absent).
"""

from __future__ import annotations

import pytest
from e2e_support import HTTP_PORT, IMPAIRED_SIZE, E2E, session_ids

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("family", [4, 6])
def test_peer_without_daemon(e2e: E2E, family: int) -> None:
    daemon = e2e.bed.daemon("A")
    capture = e2e.bed.capture("fallback")
    outgoing = e2e.curl("A", "B", IMPAIRED_SIZE, family)   # A offers ENO, B ignores it
    incoming = e2e.curl("B", "A", IMPAIRED_SIZE, family)   # B never offers ENO
    capture.stop()
    assert outgoing.intact, outgoing.describe()
    assert incoming.intact, incoming.describe()

    report = capture.analyze(e2e.marker)
    assert (report.syn, report.synack) == (2, 2), report.summary()
    assert report.syn_with_eno == 1, report.summary()       # only A's own SYN
    e2e.assert_plaintext(report)
    e2e.assert_no_invalid()

    assert session_ids(daemon, HTTP_PORT) == []
    counters = daemon.counters()
    assert counters.get("fallback", 0) >= 1, counters
    assert counters.get("encrypted", 0) == 0, counters
