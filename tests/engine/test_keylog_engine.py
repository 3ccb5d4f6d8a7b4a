"""The daemon's key log hooks the engine where sessions come into being (Engine.on_keys).

Pins that hook: a rename in the engine would otherwise silently stop the key log.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _hand import Pair  # noqa: E402

from tcpcryptd.daemon.keylog import KeyLog, KeyLoggingEngine  # noqa: E402
from tcpcryptd.engine import EngineConfig  # noqa: E402


def test_both_ends_log_the_same_session_and_keys(tmp_path: Path) -> None:
    pair = Pair()
    logs = {}
    for host in (pair.a, pair.b):
        path = tmp_path / f"{host.name}.keys"
        host.engine = KeyLoggingEngine(EngineConfig(), KeyLog(str(path)))
        logs[host.name] = path
    pair.handshake()
    (fa,), (fb,) = pair.a.engine.flows(), pair.b.engine.flows()
    line_a = logs["A"].read_text().split()
    line_b = logs["B"].read_text().split()
    assert line_a[0] == line_b[0] == "TCPCRYPT_KEYS"
    assert (line_a[1], line_a[2]) == (fa.local, fa.remote) == ("10.0.0.1:40000", "10.0.0.2:80")
    assert (line_b[1], line_b[2]) == (fb.local, fb.remote) == ("10.0.0.2:80", "10.0.0.1:40000")
    assert (line_a[3], line_b[3]) == ("A", "B")
    assert line_a[4:8] == line_b[4:8] == ["23", "AES-128-GCM", fa.session_id, "0"]
    assert fa.session_id == fb.session_id
    assert line_a[8:] == line_b[8:]                      # k_ab[0], k_ba[0], new
    assert len(bytes.fromhex(line_a[8])) == 16 + 12      # AES-128-GCM: K | NR
    assert line_a[10] == "new"
    assert logs["A"].stat().st_mode & 0o777 == 0o600
