"""Fixtures of the end-to-end tests: a fresh namespace bed per test, torn down whatever happens.

Tests marked ``e2e`` are skipped with a reason when the machine cannot run them (not root, no
NFQUEUE) or, unless also marked ``no_daemon``, when the ``tcpcryptd`` CLI is not installed.
"""

from __future__ import annotations

import functools
import re
import subprocess

import pytest
from e2e_support import E2E

from testbed import TestBed, environment_problem, tcpcryptd_command


@functools.cache
def _environment_problem() -> str | None:
    return environment_problem()


@functools.cache
def _daemon_problem() -> str | None:
    try:
        helptext = subprocess.run([*tcpcryptd_command(), "--help"], capture_output=True,
                                  text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"tcpcryptd CLI not runnable: {exc}"
    missing = [cmd for cmd in ("run", "status", "disable")
               if not re.search(rf"^\s+{cmd}\b", helptext, re.M)]
    if missing:
        return f"tcpcryptd CLI lacks {', '.join(missing)} (daemon not installed yet)"
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "no_daemon: e2e test that does not run tcpcryptd")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("e2e") is None:
            continue
        reason = _environment_problem()
        if reason is None and item.get_closest_marker("no_daemon") is None:
            reason = _daemon_problem()
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"e2e: {reason}"))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    return report


_CALL_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def bed(request: pytest.FixtureRequest) -> TestBed:
    """A fresh A - R - B bed; torn down (processes, namespaces) even if the test fails.

    After a failure the daemons' status, socket states and logs are printed (pytest shows
    them with the failure) and the work directory with the pcaps is kept.
    """
    test_bed = TestBed(router=True)
    request.addfinalizer(test_bed.close)
    test_bed.setup()
    yield test_bed
    if request.node.stash.get(_CALL_FAILED, False):
        test_bed.keep_workdir = True
        print(test_bed.diagnostics())


@pytest.fixture
def e2e(bed: TestBed) -> E2E:
    return E2E(bed)
