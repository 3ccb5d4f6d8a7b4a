#!/usr/bin/env bash
# The test command behind `make test` (and so behind .ci/run).
#   tools/run-tests.sh [--slow] [pytest args...]
# Runs the whole suite with coverage, then enforces >= 95% line coverage on the
# protocol core (tcpcryptd/core). pytest's "no tests collected" (exit 5) is an error
# here: a suite that collects nothing proves nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
$PY -m pytest --cov=tcpcryptd --cov-report= "$@" tests
rc=$?
if [ "$rc" = 5 ]; then
    echo "run-tests: pytest collected no tests" >&2
fi
echo "== coverage: protocol core (gate: 95%) =="
$PY -m coverage report --include='tcpcryptd/core/*' --fail-under=95 || rc=${rc/#0/1}
echo "== coverage: whole package =="
$PY -m coverage report --skip-covered | tail -n 25
exit "$rc"
