#!/usr/bin/env bash
# Stage 3: finetuning on real-robot trajectories (LAPA's finetune_real.sh): 256 action bins,
# images encoded on the fly by the VQGAN with the training augmentation.
source "$(dirname "${BASH_SOURCE[0]}")/_lapa_job.sh"
CKPT=${CKPT:-lapa_checkpoints}
MESH_DIM=${MESH_DIM:-"!-1,4,1,1"}
BATCH_SIZE=${BATCH_SIZE:-128}
TOTAL_STEPS=${TOTAL_STEPS:-2000}
TOKENIZER=${TOKENIZER:-$CKPT/tokenizer.model}
DATASET=${DATASET:-data/real_finetune.jsonl}
INIT=${INIT-params::$CKPT/params}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/finetune_real}
IMAGE_ROOT=${IMAGE_ROOT:-data/}
run_job "${PRESET:-finetune}" --config.model.action_vocab_size=256 --config.data.vqgan_checkpoint="$CKPT/vqgan" \
  --config.data.vqgan_config=lwm --config.data.pp_train=augment --config.data.image_root="$IMAGE_ROOT"
