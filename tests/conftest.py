"""Suite-wide pytest options.

``--slow`` turns on the tests marked ``slow`` (many more simulation seeds, long runs); without
it they are deselected (thousands of them would otherwise fill the output with skips) and the
terminal summary says how many, so ``make test`` stays fast and ``make test-slow``
(``tools/run-tests.sh --slow``) runs everything.  The ``slow`` marker itself is declared in
pyproject.toml.
"""

from __future__ import annotations

import pytest

_SLOW_LEFT_OUT = pytest.StashKey[int]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--slow",
        action="store_true",
        default=False,
        help="also run tests marked slow (many seeds, long runs; make test-slow)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if slow:
        items[:] = [item for item in items if item.get_closest_marker("slow") is None]
        config.hook.pytest_deselected(items=slow)
    config.stash[_SLOW_LEFT_OUT] = len(slow)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    left_out = config.stash.get(_SLOW_LEFT_OUT, 0)
    if left_out:
        terminalreporter.write_line(f"{left_out} slow tests not run (marked slow): run them with --slow")
