#!/usr/bin/env bash
# Shared launcher of LAPA's three jobs (sourced by the job scripts; not run directly).
# Every host of a multi-host job runs the same command: jax.distributed.initialize() picks up
# SLURM / Cloud TPU / Open MPI, or JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=${PYTHON:-.venv/bin/python}
run_job() {  # run_job PRESET EXTRA_ARGS...
  local preset=$1; shift
  exec "$PY" -u -m latent_pretraining.train --config="latent_pretraining/configs/lapa.py:$preset" \
    --config.mesh="$MESH_DIM" --config.batch_size="$BATCH_SIZE" --config.total_steps="$TOTAL_STEPS" \
    --config.data.tokenizer="$TOKENIZER" --config.data.train="$DATASET" --config.run_dir="$OUTPUT_DIR" \
    --config.init="$INIT" --config.export_params="$OUTPUT_DIR/params" "$@" ${EXTRA_FLAGS:-}
}
