#!/usr/bin/env bash
# The teacher of configs/distill_arithmetic_tiny.yaml: the built-in tiny model (same architecture and character
# tokenizer as the student) after its warm start and 400 steps of GRPO on the arithmetic task (seed 100), so it
# is a clearly better policy than the student's starting point (the warm start alone).
# Writes runs/teacher/arithmetic_rl/ (a plain HF folder; about 5 minutes on 2 cores).
set -euo pipefail
RLVR=${RLVR:-rlvr}
mkdir -p runs/teacher
rm -rf runs/teacher/rl400 runs/teacher/arithmetic_rl
$RLVR train --config configs/grpo_arithmetic_tiny.yaml run.seed=100 run.name=rl400 run.output_dir=runs/teacher \
  trainer.steps=400 eval.every=0 logging.checkpoint_every=400 logging.plots=false
$RLVR export runs/teacher/rl400 --to runs/teacher/arithmetic_rl
