"""Returning freed heap memory to the system after idle connections released their ciphers.

An encrypted connection idle for ``limits.aead_idle_release`` seconds frees its two AEAD
objects (OpenSSL contexts, ~2.4 KB each; :meth:`tcpcryptd.core.session.Session.release_aead`).
glibc keeps freed chunks in its heap: the daemon's RSS would stay at the peak of the last
burst of connections. ``malloc_trim(0)`` hands whole free pages back (``madvise``), so after
a burst has gone idle the RSS follows the connections that still hold contexts. The call
walks the heap (milliseconds for a large one), so :class:`HeapTrimmer` makes it only when
enough contexts were freed since the last time, and at most once per interval. Where libc
has no ``malloc_trim`` (not glibc) nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Freed AEAD contexts (~2.4 KB each) that make a trim worth it: ~0.6 MB.
MIN_RELEASES = 256
#: Seconds between two trims at the most.
MIN_INTERVAL = 2.0


def glibc_malloc_trim() -> Callable[[], object] | None:
    """``malloc_trim(0)`` of the C library, or None where there is none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class HeapTrimmer:
    """Calls ``trim`` once ``released`` (a running count) grew by :data:`MIN_RELEASES`.

    A trim due less than :data:`MIN_INTERVAL` after the previous one is put off, not
    skipped: :attr:`deadline` says when the daemon's loop must call :meth:`after_timers`
    again (the releases of a burst that ends meanwhile would otherwise stay in the heap
    until some later burst).
    """

    def __init__(self, trim: Callable[[], object] | None) -> None:
        self.trim = trim
        self.trims = 0
        #: when a put-off trim may run (None: none is waiting)
        self.deadline: float | None = None
        self._released_at_last = 0
        self._last = float("-inf")

    def after_timers(self, released: int, now: float) -> None:
        if self.trim is None or released - self._released_at_last < MIN_RELEASES:
            return
        if now - self._last < MIN_INTERVAL:
            self.deadline = self._last + MIN_INTERVAL
            return
        self.deadline = None
        self._released_at_last = released
        self._last = now
        self.trims += 1
        self.trim()
        log.debug("heap trimmed after %d AEAD contexts were released", released)
