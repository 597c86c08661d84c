#!/usr/bin/env bash
# README command #2: install everything, then run the checks and the whole test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k parity).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/install-prometheus.sh
scripts/install-postgres.sh
venv=${LRCTL_VENV:-.venv}
case $venv in /*) ;; *) venv=$PWD/$venv ;; esac
export PATH="$venv/bin:$PATH"

echo "== generated code is current"
python scripts/gen_protos.py --check
echo "== Grafana dashboard is current (scripts/gen_dashboard.py)"
if python -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    python scripts/gen_dashboard.py --check
else  # grafana-foundation-sdk needs Python 3.11+ (pyproject [dev]); the JSON is checked in
    echo "skipped: Python < 3.11 has no grafana-foundation-sdk"
fi
echo "== promtool: Prometheus config, rules and their unit tests"
(cd deploy/prometheus && promtool check config prometheus.yml && promtool check rules rules/*.yml \
    && promtool test rules tests/*.yml)
echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy"
mypy
echo "== import contracts (lrctl imports neither controller nor worker; those two never each other)"
lint-imports --no-cache
echo "== pytest"
python -m pytest -q "$@"
