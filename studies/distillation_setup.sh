#!/usr/bin/env bash
# The teacher of configs/distill_arithmetic_tiny.yaml: the student's own warm start (the built-in tiny model
# after supervised training to a 35% chance of sampling the reference answer) trained on further, to 50%
# (at most 1200 more steps). Same architecture and tokenizer as the student, a better policy.
# Writes runs/teacher/arithmetic_long/ (a plain HF folder; several minutes on 2 cores).
set -euo pipefail
RLVR=${RLVR:-rlvr}
CFG=configs/grpo_arithmetic_tiny.yaml
mkdir -p runs/teacher
start=$($RLVR sft --config $CFG)     # the cached warm start (built on first use)
rm -rf runs/teacher/arithmetic_long
$RLVR sft --config $CFG model.path="$start" sft.target_accuracy=0.5 sft.steps=1200 sft.eval_every=25 \
  sft.max_minutes=60 --to runs/teacher/arithmetic_long
