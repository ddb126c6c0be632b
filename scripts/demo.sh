#!/usr/bin/env bash
# The whole method on the built-in tabletop world, CPU only. Sets up .venv, then:
#   bash scripts/demo.sh [micro|quick|full]     # default quick; output in $DEMO_OUT (default demo_out/<preset>)
#  1 data        tabletop episodes: unlabelled videos, and a few labelled ones (videos, RLDS, LAPA's
#                finetune JSON)
#  2 tokenizer   a small VQGAN trained on the unlabelled frames; every frame row gets its vision codes
#  3 lam         the latent action model, trained on the unlabelled videos; its codebook refit by k-means
#  4 labels      every unlabelled frame labelled with latent codes (LAPA's latent-pretraining JSONL), and
#                for the upper-bound arm with codes of its true actions; split by episode
#  5 pretrain    the debug VLA latent-pretrained on those labels
#  6 preprocess  LAPA's finetune preprocessing of the labelled episodes: actions binned, split by episode
#  7 finetune    the latent-pretrained VLA finetuned on the labelled actions
#  8 policy      a policy bundle of the finetuned VLA, which acts on a held-out frame
#  9 deploy      the bundle served over HTTP: one /act request, then closed-loop evaluation through the
#                server beside the expert, random and no-op policies
# 10 experiment  the paper's three starting points, finetuned alike, $SEEDS seed(s) each: scratch, latent
#                pretraining, and pretraining on the true actions; each evaluated in closed loop
# 11 results     every learned number beside its trivial baseline: results/results.json, results/report.md
# micro: every stage on tiny data, checking artefacts, not quality (the test suite runs it). quick: the
# README's default. full: longer runs (hours). A finished stage records its settings in .stages/; a rerun
# reuses a stage whose record and outputs are there and continues from the first that is not (trainers
# resume from their checkpoints). A failure stops the pipeline and names the stage.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
PRESET=${1:-quick}
case $PRESET in
  micro) UNLABELLED=6 PLAY_NOISE=0.1 EPISODES=6 HELD_OUT=2 IMAGE_STEPS=10 LAM_STEPS=10 PRETRAIN_STEPS=10 FINETUNE_STEPS=10
         BATCH=4 BINS=8 EVAL_EPISODES=1 SEEDS=1 CURVE="" ;;
  quick) UNLABELLED=100 PLAY_NOISE=1.0 EPISODES=30 HELD_OUT=3 IMAGE_STEPS=1000 LAM_STEPS=250 PRETRAIN_STEPS=300 FINETUNE_STEPS=300
         BATCH=16 BINS=32 EVAL_EPISODES=3 SEEDS=1 CURVE="" ;;
  full) UNLABELLED=1000 PLAY_NOISE=1.0 EPISODES=60 HELD_OUT=10 IMAGE_STEPS=3000 LAM_STEPS=6000 PRETRAIN_STEPS=3000 FINETUNE_STEPS=3000
         BATCH=16 BINS=32 EVAL_EPISODES=10 SEEDS=3 CURVE="5 10 25" ;;
  *) echo "usage: bash scripts/demo.sh [micro|quick|full]  (got '$PRESET')" >&2; exit 2 ;;
esac
SETTINGS="$PRESET $(sha256sum scripts/demo.sh | cut -c1-16)"   # a changed script reruns every stage
bash scripts/setup_env.sh
OUT=${DEMO_OUT:-demo_out/$PRESET}
PY=.venv/bin/python
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
mkdir -p "$OUT/.stages"
# every VLA run: each image code knows its row and column, and a rate that learns them in minutes
VLA_ARGS=(--config.model.vision_grid=8 --config.optimizer.learning_rate=3e-3)
save_every() { echo $(( $1 < 500 ? $1 : 500 )); }   # checkpoints a killed full run resumes from

STAGE="" RAN_ONE=0 SERVER="" DEMO_BEGAN=$SECONDS
# once, from the main shell (not again from a failing $(...) or from the EXIT handler)
trap '[ "$BASH_SUBSHELL" = 0 ] && echo "demo ($PRESET): stage \"$STAGE\" failed; fix it and rerun: finished stages are reused" >&2' ERR
trap 'if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; fi' EXIT

# stage NAME OUTPUT... -- FUNCTION: runs FUNCTION unless NAME finished before with these settings, its
# outputs exist and no earlier stage ran again; FRESH=1 tells FUNCTION to start over rather than resume
stage() {
  STAGE=$1; shift
  local outputs=() record="$OUT/.stages/$STAGE" missing=0
  while [ "$1" != "--" ]; do outputs+=("$1"); shift; done; shift
  for o in "${outputs[@]}"; do [ -e "$o" ] || missing=1; done
  if [ "$RAN_ONE" = 0 ] && [ "$missing" = 0 ] && [ -f "$record" ] && [ "$(cat "$record")" = "$SETTINGS" ]; then
    echo "== $STAGE: finished before, reusing ${outputs[*]}"
    return
  fi
  echo "== $STAGE"
  FRESH=$RAN_ONE
  rm -f "$record"
  local began=$SECONDS
  "$@"
  for o in "${outputs[@]}"; do
    [ -e "$o" ] || { echo "demo ($PRESET): stage \"$STAGE\" finished without writing $o" >&2; exit 1; }
  done
  printf '%s' "$SETTINGS" > "$record"
  RAN_ONE=1
  echo "== $STAGE: done in $((SECONDS - began)) s (the demo so far: $((SECONDS - DEMO_BEGAN)) s)"
}
fresh() { if [ "$FRESH" = 1 ]; then rm -rf "$@"; fi; }   # a trainer's run dir: resumed unless upstream changed

data() {  # the unlabelled videos are "play": a noisier expert (varied motion); no labelled episode is among them
  $PY -m data.make_tabletop --out "$OUT/unlabelled" --episodes "$UNLABELLED" --seed 100000 --noise "$PLAY_NOISE" \
      --formats videos --overwrite
  $PY -m data.make_tabletop --out "$OUT/tabletop" --episodes "$EPISODES" --noise 0.1 --overwrite
}
tokenizer() {
  fresh "$OUT/vqgan"
  $PY -m latent_pretraining.vqgan train --config=latent_pretraining/configs/vqgan.py:tiny \
      --config.data.source=folder --config.data.path="$OUT/unlabelled/videos" --config.data.limit=0 \
      --config.total_steps="$IMAGE_STEPS" --config.eval_every=0 --config.save_every="$(save_every "$IMAGE_STEPS")" \
      --config.run_dir="$OUT/vqgan"
  rm -f "$OUT/frames.vision.jsonl"
  $PY -m latent_pretraining.vqgan encode --checkpoint "$OUT/vqgan/vqgan" \
      --input "$OUT/tabletop/videos/frames.jsonl" --output "$OUT/frames.vision.jsonl"
}
lam() {
  fresh "$OUT/lam"
  $PY -m lam.train --config=lam/configs/lam.py:small --config.data.source=folder \
      --config.data.path="$OUT/unlabelled/videos" --config.total_steps="$LAM_STEPS" --config.eval_every=0 \
      --config.save_every="$(save_every "$LAM_STEPS")" --config.optimizer.learning_rate=2e-3 --config.run_dir="$OUT/lam"
  # NSVQ's codebook can sit far from the action vectors: k-means on them, scored beside the trained one
  rm -rf "$OUT/lam/refit" "$OUT/lam/export_refit"
  $PY -m lam.refit --run "$OUT/lam" --pairs 2048 --restarts 4
}
labels() {
  rm -f "$OUT/latent.jsonl"
  $PY -m lam.label --lam "$OUT/lam/export_refit" --source folder --path "$OUT/unlabelled/videos" --out "$OUT/latent.jsonl" \
      --vqgan_checkpoint "$OUT/vqgan/vqgan"
  $PY -m data.action_codes --latent "$OUT/latent.jsonl" --frames "$OUT/unlabelled/videos/frames.jsonl" \
      --out "$OUT/actions.jsonl"
  for labels in latent actions; do
    $PY -m data.split_episodes --input "$OUT/$labels.jsonl" --train "$OUT/${labels}_train.jsonl" \
        --eval "$OUT/${labels}_eval.jsonl" --held_out "$HELD_OUT"
  done
  $PY -m data.train_text_tokenizer --input "$OUT/latent.jsonl" --output "$OUT/tokenizer.model"
}
pretrain_on() {  # pretrain_on LABELS RUN_DIR: the debug VLA pretrained on $OUT/LABELS_{train,eval}.jsonl
  fresh "$2"
  $PY -m latent_pretraining.train --config=latent_pretraining/configs/lapa.py:debug_latent \
      --config.data.train="$OUT/$1_train.jsonl" --config.data.eval="$OUT/$1_eval.jsonl" \
      --config.data.tokenizer="$OUT/tokenizer.model" --config.data.tokens_per_frame=64 --config.data.max_length=192 \
      --config.total_steps="$PRETRAIN_STEPS" --config.save_every="$(save_every "$PRETRAIN_STEPS")" \
      --config.batch_size="$BATCH" --config.eval_every=0 "${VLA_ARGS[@]}" --config.run_dir="$2"
}
pretrain() { pretrain_on latent "$OUT/vla_latent"; }
preprocess() {
  $PY -m data.finetune_preprocess --input_path "$OUT/tabletop/finetune.json" --output_filename "$OUT/finetune.jsonl" \
      --csv_filename "$OUT/bins.csv" --discretize_bins "$BINS" --vqgan_checkpoint "$OUT/vqgan/vqgan"
  $PY -m data.split_episodes --input "$OUT/finetune.jsonl" --train "$OUT/finetune_train.jsonl" \
      --eval "$OUT/finetune_eval.jsonl" --held_out "$HELD_OUT"
}
finetune_from() {  # finetune_from INIT RUN_DIR SEED [ROWS]: INIT a pretrained run dir, or "" (from scratch)
  fresh "$2"
  $PY -m latent_pretraining.train --config=latent_pretraining/configs/lapa.py:debug_finetune \
      --config.data.train="${4:-$OUT/finetune_train.jsonl}" --config.data.eval="$OUT/finetune_eval.jsonl" \
      --config.data.tokenizer="$OUT/tokenizer.model" --config.data.tokens_per_frame=64 --config.data.max_length=192 \
      --config.data.action_bins="$OUT/bins.csv" --config.total_steps="$FINETUNE_STEPS" \
      --config.save_every="$(save_every "$FINETUNE_STEPS")" --config.batch_size="$BATCH" --config.eval_every=0 \
      --config.init="$1" --config.seed="$3" "${VLA_ARGS[@]}" --config.run_dir="$2"
}
finetune() { finetune_from "$OUT/vla_latent" "$OUT/vla_finetune" 0; }
policy() {
  rm -rf "$OUT/policy"
  $PY -m latent_pretraining.policy export --run "$OUT/vla_finetune" --out "$OUT/policy" --vqgan "$OUT/vqgan/vqgan"
  read_last_frame
  $PY -m latent_pretraining.inference --policy "$OUT/policy" --image "$FRAME" --instruction "$TASK"
}
read_last_frame() {  # FRAME and TASK: the last frame of the last (held-out) episode
  local last
  last=$(tail -n 1 "$OUT/tabletop/videos/frames.jsonl")
  FRAME=$($PY -c 'import json, sys; print(json.loads(sys.argv[1])["image"])' "$last")
  TASK=$($PY -c 'import json, sys; print(json.loads(sys.argv[1])["instruction"])' "$last")
}
deploy() {
  read_last_frame
  local port
  port=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  $PY -m latent_pretraining.deploy --policy "$OUT/policy" --port "$port" --max_batch 1 > "$OUT/server.log" 2>&1 &
  SERVER=$!   # the EXIT handler stops it if a later command fails
  $PY -m latent_pretraining.deploy.client --url "http://127.0.0.1:$port" --wait_s 300 --image "$FRAME" \
      --instruction "$TASK"
  rm -rf "$OUT/eval_policy"
  $PY -m latent_pretraining.evaluate --server "http://127.0.0.1:$port" --episodes "$EVAL_EPISODES" \
      --out "$OUT/eval_policy" --videos 1
  kill "$SERVER" && wait "$SERVER" 2>/dev/null || true
  SERVER=""
}
evaluate_run() {  # evaluate_run DIR: DIR/run exported to DIR/policy, then DIR/eval in closed loop
  $PY -m latent_pretraining.policy export --run "$1/run" --out "$1/policy" --vqgan "$OUT/vqgan/vqgan"
  $PY -m latent_pretraining.evaluate --policy "$1/policy" --episodes "$EVAL_EPISODES" --baselines "" \
      --videos 0 --out "$1/eval"
}
experiment() {  # arm scratch | latent | actions, seed s: arms/<arm>_<s>/{run,policy,eval}; latent seed 0 is
  pretrain_on actions "$OUT/vla_actions"   # the pipeline's own finetune (its evaluation went through the server)
  local arm seed dir init
  for seed in $(seq 0 $((SEEDS - 1))); do
    for arm in scratch latent actions; do
      dir="$OUT/arms/${arm}_$seed"
      [ "$FRESH" = 0 ] && [ -f "$dir/eval/results.json" ] && continue   # finished before this rerun
      rm -rf "$dir/policy" "$dir/eval"
      if [ "$arm" = latent ] && [ "$seed" = 0 ]; then
        mkdir -p "$dir" && ln -sfn ../../vla_finetune "$dir/run"
      else
        init="$OUT/vla_$arm"
        if [ "$arm" = scratch ]; then init=""; fi
        finetune_from "$init" "$dir/run" "$seed"
      fi
      evaluate_run "$dir"
    done
  done
}
curve() {  # the labelled-data curve: scratch and latent finetuned on the first N labelled episodes
  local n arm seed dir init
  for n in $CURVE; do
    $PY -m data.split_episodes --input "$OUT/finetune.jsonl" --train "$OUT/finetune_train_$n.jsonl" \
        --eval "$OUT/finetune_eval_$n.jsonl" --held_out "$HELD_OUT" --train_episodes "$n"
    for seed in $(seq 0 $((SEEDS - 1))); do
      for arm in scratch latent; do
        dir="$OUT/curve/${arm}_${n}_$seed"
        [ "$FRESH" = 0 ] && [ -f "$dir/eval/results.json" ] && continue
        rm -rf "$dir/policy" "$dir/eval"
        if [ "$arm" = scratch ]; then init=""; else init="$OUT/vla_latent"; fi
        finetune_from "$init" "$dir/run" "$seed" "$OUT/finetune_train_$n.jsonl"
        evaluate_run "$dir"
      done
    done
  done
}
results() {
  local arms=() arm seed d n
  for arm in scratch latent actions; do   # --arm ARM,RUN,RESULTS for every arm and seed
    for seed in $(seq 0 $((SEEDS - 1))); do
      d="$OUT/arms/${arm}_$seed"
      arms+=(--arm "$arm,$d/run,$d/eval/results.json")
      for n in $CURVE; do
        if [ "$arm" != actions ]; then arms+=(--labelled "$arm,$n,$OUT/curve/${arm}_${n}_$seed/eval/results.json"); fi
      done
    done
  done
  $PY -m latent_pretraining.report --out "$OUT/results" --lam_quality "$OUT/lam/refit/refit/quality.json" \
      --latent_run "$OUT/vla_latent" --latent_train "$OUT/latent_train.jsonl" --latent_eval "$OUT/latent_eval.jsonl" \
      --finetune_run "$OUT/vla_finetune" --finetune_train "$OUT/finetune_train.jsonl" \
      --finetune_eval "$OUT/finetune_eval.jsonl" --closed_loop "$OUT/eval_policy/results.json" \
      --curves tokenizer="$OUT/vqgan" --curves lam="$OUT/lam" --curves pretrain="$OUT/vla_latent" \
      --curves finetune="$OUT/vla_finetune" --curves pretrain_actions="$OUT/vla_actions" \
      --lam_reconstructions "$OUT/lam/refit/refit/reconstructions.npz" "${arms[@]}"
}

stage data "$OUT/unlabelled/videos/frames.jsonl" "$OUT/tabletop/videos/frames.jsonl" "$OUT/tabletop/finetune.json" -- data
stage tokenizer "$OUT/vqgan/vqgan" "$OUT/frames.vision.jsonl" -- tokenizer
stage lam "$OUT/lam/export_refit" "$OUT/lam/refit/refit/quality.json" "$OUT/lam/refit/refit/reconstructions.npz" -- lam
stage labels "$OUT/latent_train.jsonl" "$OUT/latent_eval.jsonl" "$OUT/actions_train.jsonl" "$OUT/actions_eval.jsonl" \
  "$OUT/tokenizer.model" -- labels
stage pretrain "$OUT/vla_latent/summary.json" -- pretrain
stage preprocess "$OUT/finetune_train.jsonl" "$OUT/finetune_eval.jsonl" "$OUT/bins.csv" -- preprocess
stage finetune "$OUT/vla_finetune/summary.json" -- finetune
stage policy "$OUT/policy/policy.json" -- policy
stage deploy "$OUT/eval_policy/results.json" -- deploy
stage experiment "$OUT/arms/scratch_0/eval/results.json" "$OUT/arms/actions_$((SEEDS - 1))/eval/results.json" -- experiment
if [ -n "$CURVE" ]; then stage curve "$OUT/curve/latent_${CURVE##* }_$((SEEDS - 1))/eval/results.json" -- curve; fi
stage results "$OUT/results/results.json" "$OUT/results/report.md" "$OUT/results/figures" -- results
echo "== done ($PRESET): $OUT/results/report.md (open it first), $OUT/results/results.json,"
echo "   figures in $OUT/results/figures/ (the policy beside the expert: side_by_side_*.gif), closed-loop GIFs"
echo "   under $OUT/eval_policy/, the experiment's arms under $OUT/arms/, the policy bundle in $OUT/policy"
