#!/usr/bin/env bash
# Sets up .venv and runs the demo on built-in synthetic data (CPU is enough, about 6 minutes on 2 cores):
#   1. the synthetic tabletop world writes a small dataset in every format the pipeline reads,
#   2. the closed-loop evaluator scores the scripted expert and a random policy,
#   3. a small VQGAN tokenizer trains on the tabletop frames and pre-tokenizes them,
#   4. the latent action model trains on the videos and labels every frame with latent codes
#      (LAPA's latent-pretraining JSONL, with the vision tokens of step 3), and the debug VLA is
#      latent-pretrained on them,
#   5. LAPA's finetune preprocessing bins the expert's actions (with vision tokens from step 3), and the
#      latent-pretrained VLA is finetuned on them and scored on held-out episodes (action accuracy, MAE),
#   6. the finetuned VLA becomes a policy bundle ($OUT/policy), acts on a held-out frame, is served
#      (one REST /act request) and is evaluated closed-loop through the server beside the baselines,
#   7. the VLA core trains on synthetic latent-action rows, exports a LAPA checkpoint, reloads
#      it and generates latent actions with the KV-cache sampler.
# Output goes to $DEMO_OUT (default demo_out/). Extra arguments go to step 7.
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
echo "== 4. latent actions: train the latent action model, label every frame, latent-pretrain the debug VLA"
rm -rf "$OUT/lam" "$OUT/latent.jsonl"
$PY -m lam.train --config=lam/configs/lam.py:small --config.data.source=folder \
    --config.data.path="$OUT/tabletop/videos" --config.total_steps=200 --config.eval_every=0 \
    --config.save_every=200 --config.optimizer.learning_rate=5e-4 --config.run_dir="$OUT/lam"
$PY -m lam.label --lam "$OUT/lam" --source folder --path "$OUT/tabletop/videos" --out "$OUT/latent.jsonl" \
    --vqgan_checkpoint "$OUT/vqgan/vqgan"
head -n 460 "$OUT/latent.jsonl" > "$OUT/latent_train.jsonl"   # rows are in episode order:
tail -n +461 "$OUT/latent.jsonl" > "$OUT/latent_eval.jsonl"   # the last episodes are held out
$PY -m data.train_text_tokenizer --input "$OUT/latent.jsonl" --output "$OUT/tokenizer.model"
rm -rf "$OUT/vla_latent"
$PY -m latent_pretraining.train --config=latent_pretraining/configs/lapa.py:debug_latent \
    --config.data.train="$OUT/latent_train.jsonl" --config.data.eval="$OUT/latent_eval.jsonl" \
    --config.data.tokenizer="$OUT/tokenizer.model" --config.data.tokens_per_frame=64 --config.data.max_length=192 \
    --config.total_steps=200 --config.batch_size=16 --config.eval_every=0 --config.run_dir="$OUT/vla_latent"
echo "== 5. actions: bin the expert's actions, finetune the latent-pretrained VLA on them, score held-out episodes"
$PY -m data.finetune_preprocess --input_path "$OUT/tabletop/finetune.json" --output_filename "$OUT/finetune.jsonl" \
    --csv_filename "$OUT/bins.csv" --discretize_bins 32 --vqgan_checkpoint "$OUT/vqgan/vqgan"
head -n 430 "$OUT/finetune.jsonl" > "$OUT/finetune_train.jsonl"   # rows are in episode order:
tail -n +431 "$OUT/finetune.jsonl" > "$OUT/finetune_eval.jsonl"   # the last episodes are held out
rm -rf "$OUT/vla_finetune"
$PY -m latent_pretraining.train --config=latent_pretraining/configs/lapa.py:debug_finetune \
    --config.data.train="$OUT/finetune_train.jsonl" --config.data.eval="$OUT/finetune_eval.jsonl" \
    --config.data.tokenizer="$OUT/tokenizer.model" --config.data.tokens_per_frame=64 --config.data.max_length=192 \
    --config.data.action_bins="$OUT/bins.csv" --config.total_steps=300 --config.batch_size=16 --config.eval_every=0 \
    --config.init="$OUT/vla_latent" --config.run_dir="$OUT/vla_finetune"
echo "== 6. deploy: bundle the finetuned VLA, act on a held-out frame, serve it, evaluate it closed-loop"
$PY -m latent_pretraining.policy export --run "$OUT/vla_finetune" --out "$OUT/policy" --vqgan "$OUT/vqgan/vqgan"
LAST_FRAME=$(tail -n 1 "$OUT/tabletop/videos/frames.jsonl")   # of a held-out episode
FRAME=$($PY -c 'import json, sys; print(json.loads(sys.argv[1])["image"])' "$LAST_FRAME")
TASK=$($PY -c 'import json, sys; print(json.loads(sys.argv[1])["instruction"])' "$LAST_FRAME")
$PY -m latent_pretraining.inference --policy "$OUT/policy" --image "$FRAME" --instruction "$TASK"
PORT=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
$PY -m latent_pretraining.deploy --policy "$OUT/policy" --port "$PORT" --max_batch 1 > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
$PY -m latent_pretraining.deploy.client --url "http://127.0.0.1:$PORT" --wait_s 300 --image "$FRAME" \
    --instruction "$TASK"
$PY -m latent_pretraining.evaluate --server "http://127.0.0.1:$PORT" --episodes 3 --out "$OUT/eval_policy" \
    --videos 1
kill $SERVER && wait $SERVER 2>/dev/null || true
trap - EXIT
echo "== 7. VLA core: train, export a LAPA checkpoint, reload, generate latent actions"
$PY -m latent_pretraining.demo --out "$OUT/vla" "$@"
