#!/usr/bin/env bash
# The proxy reward models of studies/overoptimization.yaml, built from the warm start's own samples:
# preference pairs labelled by each gold component of arithmetic_concise, then Bradley-Terry training.
# Writes runs/rm/{pairs_correct,pairs_short}.jsonl and runs/rm/{rm_correct,rm_short}/ (about 2 minutes).
# --pilot also runs the plain arm once with seed 100 (runs/rm/pilot/), whose gold peak gives the proxy points.
set -euo pipefail
RLVR=${RLVR:-rlvr}
CFG=configs/grpo_arithmetic_concise_tiny.yaml
mkdir -p runs/rm
$RLVR rm pairs --config $CFG --component correct --out runs/rm/pairs_correct.jsonl --prompts 2000 --pairs-per-prompt 2
$RLVR rm pairs --config $CFG --component short --out runs/rm/pairs_short.jsonl --prompts 4000 --pairs-per-prompt 2
for c in correct short; do
  $RLVR rm train --config $CFG --data runs/rm/pairs_$c.jsonl --out runs/rm/rm_$c --epochs 3 --lr 1e-4 \
    --batch-size 16 --eval-fraction 0.2
done
if [[ "${1:-}" == "--pilot" ]]; then
  $RLVR train --config configs/rm_proxy_arithmetic_concise_tiny.yaml run.seed=100 run.name=pilot \
    run.output_dir=runs/rm/pilot trainer.steps=100 rollout.prompts_per_step=16 eval.every=20 logging.plots=false
fi
