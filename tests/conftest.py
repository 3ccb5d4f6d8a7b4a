"""Suite-wide pytest options.

``--slow`` turns on the tests marked ``slow`` (many more simulation seeds, long runs); without
it they are skipped, so ``make test`` stays fast and ``make test-slow`` (``tools/run-tests.sh
--slow``) runs everything.  The ``slow`` marker itself is declared in pyproject.toml.
"""

from __future__ import annotations

import pytest


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
    skip_slow = pytest.mark.skip(reason="slow test: run with --slow (make test-slow)")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip_slow)
