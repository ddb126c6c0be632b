#!/usr/bin/env bash
# Stage 3: finetuning on SIMPLER trajectories (LAPA's finetune_simpler.sh): 245 action bins,
# pre-tokenised images.
source "$(dirname "${BASH_SOURCE[0]}")/_lapa_job.sh"
CKPT=${CKPT:-lapa_checkpoints}
MESH_DIM=${MESH_DIM:-"!-1,4,1,1"}
BATCH_SIZE=${BATCH_SIZE:-128}
TOTAL_STEPS=${TOTAL_STEPS:-500}
TOKENIZER=${TOKENIZER:-$CKPT/tokenizer.model}
DATASET=${DATASET:-data/simpler.jsonl}
INIT=${INIT-params::$CKPT/params}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/finetune_simpler}
run_job "${PRESET:-finetune}" --config.model.action_vocab_size=245
