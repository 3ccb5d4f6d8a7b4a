"""Logging to stderr, where journald picks it up (no timestamps then: journald adds them)."""

from __future__ import annotations

import logging
import os
import sys

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


def setup_logging(level: str) -> None:
    """Send the ``tcpcryptd`` loggers to stderr at ``level`` (debug, info, warning, error)."""
    under_journald = "JOURNAL_STREAM" in os.environ
    fmt = "%(levelname)s %(name)s: %(message)s" if under_journald else \
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger("tcpcryptd")
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    root.propagate = False
