#!/usr/bin/env bash
# Sets up .venv and runs the end-to-end demo on built-in synthetic data (CPU is enough).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m latent_pretraining.demo "$@"
