"""tools/handshake_steps.py: per-step figures, and the --time clock counts calls per
connection exactly (here: the HMAC-SHA256 computations RFC 8548 §3.3-3.5 require)."""

from tcpcryptd.core import keys
from tools.handshake_steps import main

PRF_MAC = "tcpcryptd.core.keys:PRF.mac"
KEYING = "tcpcryptd.core.keys:PRF.__init__"


def test_resumed_connection_computes_six_hmacs_per_host(capsys):
    """Each host: session ID, mk[0], k_ab[0], k_ba[0] (§3.3, §3.4), ss[i+1] and resume[i+1]
    for the cache (§3.5); ss[i], mk[0], ss[i+1] keyed, ss[i] once more for ss[i+1]."""
    calls = main(["resumed", "-n", "4", "--batch", "2", "--time", PRF_MAC, KEYING])
    assert calls == {PRF_MAC: 12.0, KEYING: 8.0}
    out = capsys.readouterr().out
    assert "(5, 'B', 'in', 'A', 0)" in out and "total (sum of the steps)" in out
    assert "12.0 calls" in out
    assert not hasattr(vars(keys.PRF)["mac"], "__wrapped__")   # the clock is gone afterwards


def test_fresh_connection_without_resumption_extracts_the_prk_instead(capsys):
    """Resumption off: PRK = Extract(N_A, ...) instead of the cache's two derivations."""
    extract = "tcpcryptd.core.keys.extract"
    calls = main(["fresh", "-n", "2", "--batch", "2", "--time", PRF_MAC, extract])
    assert calls == {PRF_MAC: 10.0, extract: 2.0}
    assert not hasattr(keys.extract, "__wrapped__")
    assert "(6, 'A', 'in', 'AP', 74)" in capsys.readouterr().out
