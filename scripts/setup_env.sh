#!/usr/bin/env bash
# Creates .venv (Python 3.11) with the pinned requirements and this package, once.
# Re-running is cheap: it reinstalls only when requirements.txt or pyproject.toml change.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [ -z "${PYTHON:-}" ]; then
  PYTHON=$(command -v python3.11 || command -v python3)
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.installed-$(cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing requirements (first run downloads ~1.5 GB of wheels)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -r requirements.txt
  "$VENV/bin/python" -m pip install --quiet --no-deps -e .
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
