"""Hypothesis profiles of the fuzz targets, and the helper modules they share.

Two profiles, applied per test (never loaded globally, so the rest of the suite keeps its
own settings):

* ``fuzz-bounded`` (``make test``): derandomized, so every run replays the same choices
  from a fixed seed (the engines' keys and nonces stay random), with a budget that keeps
  this directory well under a minute; no shrinking (a failure is reported as found;
  ``make fuzz`` shrinks);
* ``fuzz`` (``make fuzz``, selected by ``TCPCRYPTD_FUZZ=1``): random seeds, many more
  examples (base count ``TCPCRYPTD_FUZZ_EXAMPLES``, default 4,000), failures kept in
  hypothesis' example database so the next run replays them first.

``fuzz-active`` is whichever of the two the environment selects; the tests scale its
``max_examples`` by their own cost.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, Phase, settings

# the engine tests' hand-built packets and addresses (tests/engine/_hand.py)
sys.path.insert(0, str(Path(__file__).parent.parent / "engine"))
sys.path.insert(0, str(Path(__file__).parent))

_COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large,
                              HealthCheck.filter_too_much],
    "print_blob": True,
}

settings.register_profile("fuzz-bounded", max_examples=100, derandomize=True, database=None,
                          phases=[Phase.explicit, Phase.generate], **_COMMON)
settings.register_profile("fuzz", max_examples=int(os.environ.get("TCPCRYPTD_FUZZ_EXAMPLES",
                                                                  "4000")),
                          derandomize=False, **_COMMON)
settings.register_profile(
    "fuzz-active",
    settings.get_profile("fuzz" if os.environ.get("TCPCRYPTD_FUZZ") == "1" else "fuzz-bounded"))
