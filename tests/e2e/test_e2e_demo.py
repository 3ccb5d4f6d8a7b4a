"""``make demo`` (python -m testbed.demo) as a user runs it: the output, and the teardown."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

DEMO = [sys.executable, "-m", "testbed.demo"]
#: The checkout: testbed/ is a development package, importable from there (not installed).
ROOT = Path(__file__).resolve().parents[2]


def _bed_namespaces(output: str) -> list[str]:
    found = re.search(r"namespaces (\S+) \(A, .*?\) and (\S+) \(B,", output)
    assert found, output
    return [found.group(1), found.group(2)]


def _existing_namespaces() -> set[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in listing.splitlines() if line.strip()}


def test_demo_shows_an_encrypted_intact_download() -> None:
    done = subprocess.run(DEMO, capture_output=True, text=True, timeout=120, cwd=ROOT)
    output = done.stdout
    assert done.returncode == 0, output + done.stderr
    assert "sha256" in output and "MATCH" in output and "MISMATCH" not in output
    assert re.search(r"ENO in 1/1 SYN and 1/1 SYN-ACK, marker found 0 times", output), output
    # 33-byte IDs in both tables, shortened there to their first 8 and last 4 hex digits
    session_ids = re.findall(r"\b[0-9a-f]{8}\.\.\.[0-9a-f]{4}\b", output)
    assert len(session_ids) == 2 and session_ids[0] == session_ids[1], output
    assert "=> encrypted on the wire and intact" in output
    assert not set(_bed_namespaces(output)) & _existing_namespaces()


def test_interrupted_demo_tears_everything_down() -> None:
    demo = subprocess.Popen(DEMO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    assert demo.stdout is not None
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = demo.stdout.readline()
        seen.append(line)
        if not line or line.startswith("[3/6]"):
            break
    demo.send_signal(signal.SIGINT)
    rest, errors = demo.communicate(timeout=60)
    output = "".join(seen) + rest
    assert demo.returncode == 130, output + errors
    assert "interrupted; everything was torn down" in errors
    assert not set(_bed_namespaces(output)) & _existing_namespaces()
