"""Transfer payloads with a plaintext canary, and their digests (sha256 at both ends)."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path


def make_payload(size: int, marker: bytes, seed: int = 0) -> bytes:
    """``size`` pseudo-random bytes with ``marker`` written every 4 KiB (plaintext canary).

    Random filler keeps frames incompressible and makes any marker hit in a capture meaningful.
    """
    rng = random.Random(seed)
    buf = bytearray(rng.randbytes(size))
    for pos in range(0, max(0, size - len(marker)), 4096):
        buf[pos:pos + len(marker)] = marker
    return bytes(buf)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
