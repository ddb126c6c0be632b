#!/usr/bin/env bash
# Sets up .venv and runs the test suite (8 fake CPU devices; see tests/conftest.py).
# Extra arguments go to pytest. "No tests collected" (pytest exit code 5) is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh || exit 1
.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
