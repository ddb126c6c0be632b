#!/usr/bin/env bash
# Can the debug VLA learn the labelled task at all? A tiny VQGAN on a tabletop dataset's frames, LAPA's
# finetune preprocessing (32 bins, episodes held out), finetuning from scratch, then the held-out action
# MAE of every moving dimension beside the training mean's (latent_pretraining.report.action_part).
#   python -m data.make_tabletop --out /tmp/d120 --episodes 120 --noise 0.1 --formats videos,finetune
#   bash benchmarks/bench_finetune_quality.sh OUT DATA [VQGAN_STEPS [FINETUNE_STEPS [VQGAN --config.* ...]]]
# HELD_OUT (default 12) episodes are held out; FINETUNE_ARGS adds trainer overrides, e.g.
# FINETUNE_ARGS="--config.model.rope_theta=10000". A VQGAN or split already in OUT is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$1 DATA=$2 VQGAN_STEPS=${3:-1000} FINETUNE_STEPS=${4:-1000}
shift $(( $# < 4 ? $# : 4 ))
PY=${PY:-.venv/bin/python}
export TF_CPP_MIN_LOG_LEVEL=2
mkdir -p "$OUT"
start=$(date +%s)
if [ ! -e "$OUT/vqgan/vqgan" ]; then
  $PY -m latent_pretraining.vqgan train --config=latent_pretraining/configs/vqgan.py:tiny \
      --config.data.source=folder --config.data.path="$DATA/videos" --config.data.limit=0 \
      --config.total_steps="$VQGAN_STEPS" --config.eval_every=0 --config.save_every="$VQGAN_STEPS" \
      --config.run_dir="$OUT/vqgan" "$@" > "$OUT/vqgan.log" 2>&1
fi
if [ ! -e "$OUT/finetune_train.jsonl" ]; then
  $PY -m data.finetune_preprocess --input_path "$DATA/finetune.json" --output_filename "$OUT/finetune.jsonl" \
      --csv_filename "$OUT/bins.csv" --discretize_bins 32 --vqgan_checkpoint "$OUT/vqgan/vqgan" > "$OUT/preprocess.log" 2>&1
  $PY -m data.split_episodes --input "$OUT/finetune.jsonl" --train "$OUT/finetune_train.jsonl" \
      --eval "$OUT/finetune_eval.jsonl" --held_out "${HELD_OUT:-12}"
  $PY -m data.train_text_tokenizer --input "$DATA/finetune.json" --output "$OUT/tokenizer.model" > /dev/null
fi
tokens=$($PY -c 'import json, sys; print(len(json.loads(open(sys.argv[1]).readline())["vision"]))' "$OUT/finetune_train.jsonl")
prepared=$(date +%s)
rm -rf "$OUT/finetune"
# shellcheck disable=SC2086  # FINETUNE_ARGS is a list of overrides
$PY -m latent_pretraining.train --config=latent_pretraining/configs/lapa.py:debug_finetune \
    --config.data.train="$OUT/finetune_train.jsonl" --config.data.eval="$OUT/finetune_eval.jsonl" \
    --config.data.tokenizer="$OUT/tokenizer.model" --config.data.tokens_per_frame="$tokens" \
    --config.data.max_length=$((tokens + 128)) --config.data.action_bins="$OUT/bins.csv" \
    --config.total_steps="$FINETUNE_STEPS" --config.save_every="$FINETUNE_STEPS" --config.batch_size=16 \
    --config.eval_every=0 --config.run_dir="$OUT/finetune" ${FINETUNE_ARGS:-} > "$OUT/finetune.log" 2>&1
done_at=$(date +%s)
$PY - "$OUT" $((prepared - start)) $((done_at - prepared)) <<'EOF'
import json
import sys
from pathlib import Path

from latent_pretraining.report import action_part, training_curve

out = Path(sys.argv[1])
part = action_part(out / "finetune", out / "finetune_train.jsonl", out / "finetune_eval.jsonl")
steps, losses = training_curve(out / "finetune")
print(f"{out}: tokenizer and preprocessing {sys.argv[2]} s, finetuning {sys.argv[3]} s")
print("| dimension | held-out MAE | training mean's MAE |\n|---|---|---|")
for name, v in part["mae_per_moving_dimension"].items():
    mae = "none (no action decoded)" if v["mae"] is None else f"{v['mae']:.4f}"
    print(f"| {name} | {mae} | {v['mean_baseline']:.4f} |")
print(f"token accuracy {part['token_accuracy']:.3f} (majority {part['token_majority_baseline']:.3f}); "
      f"training loss at steps {steps[len(steps) // 2]} and {steps[-1]}: {losses[len(steps) // 2]:.3f}, {losses[-1]:.3f}")
print(json.dumps({"out": str(out), **{k: part[k] for k in ("mae_per_moving_dimension", "token_accuracy")},
                  "token_majority_baseline": part["token_majority_baseline"], "final_train_loss": losses[-1]}))
EOF
