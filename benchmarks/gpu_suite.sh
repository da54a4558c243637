#!/usr/bin/env bash
# Every GPU figure in one run, into one results file, within about 8 minutes on one H100/H200. GPU time is
# short and a GPU machine takes minutes to start, so everything is prepared here and each step has a time
# limit: a step that overruns is cut and reported, the others still run.
#
#   bash benchmarks/gpu_suite.sh                      # on the GPU machine, after the README's install
#   bash benchmarks/gpu_suite.sh --dry-run            # each step at toy size on CPU: the script is known to work
#   bash benchmarks/gpu_suite.sh [--dry-run] FILE     # results into FILE (default $OUT/gpu_suite.md, else ./)
#
# Steps: MFU of bclm's training step (~100M model, bf16) against the bare loop; fused AdamW; decode env-steps/s at 64 envs
# (KV-batched against one-at-a-time; compiled decoding is not built yet); MT10 evaluation env-steps/s against
# env-only stepping; one bf16 DeepSpeed ZeRO-2 training run; one MT10 DAgger round at small budgets.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
RESULTS=${1:-${OUT:-.}/gpu_suite.md}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export OMP_WAIT_POLICY=PASSIVE HF_HUB_DISABLE_PROGRESS_BARS=1
SUITE_START=$(date +%s)

MT10="reach-v3,push-v3,pick-place-v3,door-open-v3,drawer-open-v3,drawer-close-v3,button-press-topdown-v3"
MT10="$MT10,peg-insert-side-v3,window-open-v3,window-close-v3"
MT10_TASKS="[$(for t in ${MT10//,/ }; do printf '{env: MetaWorld-%s, episodes: %s},' "$t" "$([ $DRY = 1 ] && echo 1 || echo 5)"; done)]"

# step NAME LIMIT_S COMMAND...: runs COMMAND with a time limit, its output and exit status into the results.
step() {
  local name=$1 limit=$2; shift 2
  local start=$(date +%s)
  { echo; echo "## $name"; echo; echo '```'; echo "\$ $*"; } >> "$RESULTS"
  timeout "$limit" "$@" >> "$RESULTS" 2>&1
  local rc=$?
  local took=$(( $(date +%s) - start ))
  { echo '```'; echo; echo "exit $rc in ${took} s$([ $rc = 124 ] && echo " (cut at its ${limit} s limit)")"; } >> "$RESULTS"
  echo "$name: exit $rc, ${took} s"
}

{
  echo "# bclm GPU suite $([ $DRY = 1 ] && echo '(dry run: toy sizes on CPU)')"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no GPU (nvidia-smi absent)"
  python -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'| transformers', transformers.__version__, '| accelerate', accelerate.__version__)"
  echo '```'
} > "$RESULTS"

if [ $DRY = 1 ]; then
  step "MFU: bclm train_step vs the bare loop" 120 python benchmarks/mfu.py --quick
  step "AdamW step: fused vs foreach" 60 python benchmarks/optimizer.py --quick
  step "Decode: env-steps/s, KV-batched vs one at a time" 120 \
    python benchmarks/rollout.py --quick --modes kv-batched one-at-a-time
  step "MT10 evaluation: env-steps/s" 180 python benchmarks/eval_speed.py --quick
  ZERO_ARGS=(--model.size tiny --train.max_steps 3 --train.batch_size 8)
  DAGGER_ARGS=(--model.size tiny --train.max_steps 5 --dagger.episodes_per_round 10 --dagger.rollout_max_steps 20
               --eval.episodes 1)
else
  step "MFU: bclm train_step vs the bare loop" 120 python benchmarks/mfu.py
  step "AdamW step: fused vs foreach" 40 python benchmarks/optimizer.py --sizes base large
  step "Decode: env-steps/s, KV-batched vs one at a time" 90 \
    python benchmarks/rollout.py --num-envs 64 --size base --modes kv-batched one-at-a-time
  step "MT10 evaluation: env-steps/s" 90 python benchmarks/eval_speed.py --tasks "$MT10" --num-envs 50 --rounds 2
  ZERO_ARGS=(--model.size large --train.max_steps 50 --train.batch_size 64 --train.bf16 true)
  DAGGER_ARGS=(--train.max_steps 300 --dagger.episodes_per_round 20 --dagger.rollout_max_steps 200
               --dagger.num_envs 20 --eval.episodes 5 --eval.num_envs 10)
fi

python -m bclm collect --env CartPole-v1 --episodes 4 --output "$WORK/cartpole" > /dev/null
step "bf16 DeepSpeed ZeRO-2 training run (one process)" 120 \
  python -m accelerate.commands.launch --config_file recipes/accelerate/zero2.yaml --num_processes 1 \
  -m bclm train --dataset "$WORK/cartpole" --output-dir "$WORK/zero2" --loop.progress false --eval.episodes 2 \
  "${ZERO_ARGS[@]}"
step "MT10: one DAgger round" 240 \
  python -m bclm dagger recipes/mt10.yaml --output-dir "$WORK/mt10" --rounds 1 --tasks "$MT10_TASKS" \
  --loop.progress false "${DAGGER_ARGS[@]}"

echo "suite: $(( $(date +%s) - SUITE_START )) s in all" | tee -a "$RESULTS"
