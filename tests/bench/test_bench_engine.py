"""bench.engine's connection-setup figures: every line is measured on connections that
really took the path the label names (the benchmark checks and exits otherwise)."""

from bench.engine import handshakes


def test_handshake_figures_cover_fresh_resumed_and_plain_connections(capsys):
    us = handshakes(4, 2)
    for label in ("", "fresh: ", "resumed: "):
        for host in ("host A", "host B", "both hosts"):
            assert us[f"{label}{host}"] > 0
    assert us["plain: host A (SYN with ENO, SYN-ACK without)"] > 0
    assert us["plain: host B (SYN without ENO)"] > 0
    assert us["key agreement"] > 0
    printed = capsys.readouterr().out
    assert "us  handshake per connection: resumed: host B" in printed
    assert "us  handshake per connection: plain: host B (SYN without ENO)" in printed
