#!/usr/bin/env bash
# Sets up .venv and runs the demo on built-in synthetic data (CPU is enough, about a minute):
#   1. the synthetic tabletop world writes a small dataset in every format the pipeline reads,
#   2. the closed-loop evaluator scores the scripted expert and a random policy,
#   3. a small VQGAN tokenizer trains on the tabletop frames and pre-tokenizes them,
#   4. the VLA core trains on synthetic latent-action rows, exports a LAPA checkpoint, reloads
#      it and generates latent actions with the KV-cache sampler.
# Output goes to $DEMO_OUT (default demo_out/). Extra arguments go to step 4.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
OUT=${DEMO_OUT:-demo_out}
PY=.venv/bin/python
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
echo "== 1. tabletop world -> $OUT/tabletop (videos, RLDS, LAPA finetune JSON)"
$PY -m data.make_tabletop --out "$OUT/tabletop" --episodes 30 --noise 0.1 --overwrite
echo "== 2. closed-loop evaluation: scripted expert vs random policy"
$PY -m sim.evaluate --policy expert --episodes 5 --out "$OUT/eval_expert"
$PY -m sim.evaluate --policy random --episodes 5 --out "$OUT/eval_random" --videos 1
echo "== 3. image tokenizer: train a tiny VQGAN on the frames, then add 'vision' codes to every frame row"
$PY -m latent_pretraining.vqgan train --config=latent_pretraining/configs/vqgan.py:tiny \
    --config.data.source=folder --config.data.path="$OUT/tabletop/videos" --config.data.limit=0 \
    --config.total_steps=150 --config.eval_every=0 --config.save_every=150 --config.run_dir="$OUT/vqgan"
rm -f "$OUT/frames.vision.jsonl"
$PY -m latent_pretraining.vqgan encode --checkpoint "$OUT/vqgan/vqgan" \
    --input "$OUT/tabletop/videos/frames.jsonl" --output "$OUT/frames.vision.jsonl"
echo "== 4. VLA core: train, export a LAPA checkpoint, reload, generate latent actions"
$PY -m latent_pretraining.demo --out "$OUT/vla" "$@"
