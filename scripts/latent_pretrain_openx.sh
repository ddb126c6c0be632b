#!/usr/bin/env bash
# Stage 2: latent pretraining on Open X-Embodiment latent-action JSONL (LAPA's latent_pretrain_openx.sh).
# Override any default through the environment, e.g. MESH_DIM=1,-1,1,1 BATCH_SIZE=64 bash scripts/latent_pretrain_openx.sh
source "$(dirname "${BASH_SOURCE[0]}")/_lapa_job.sh"
CKPT=${CKPT:-lapa_checkpoints}
MESH_DIM=${MESH_DIM:-"!-1,8,1,1"}
BATCH_SIZE=${BATCH_SIZE:-256}
TOTAL_STEPS=${TOTAL_STEPS:-70000}
TOKENIZER=${TOKENIZER:-$CKPT/tokenizer.model}
DATASET=${DATASET:-data/latent_action_pretraining_openx.jsonl}
INIT=${INIT-params::lwm_checkpoints/params}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/latent_pretrain_openx}
run_job "${PRESET:-latent_pretrain}"
