"""bf16's effect on the train-inference mismatch (``mismatch_k3``) over a few steps of the default recipe.

    .venv/bin/python benchmarks/bf16_mismatch.py --model PATH [--steps 3] [--threads 1]

Four arms, each its own short run from the same checkpoint (the default recipe, seed 0, small eval):
fp32 (hf engine), the lean engine in fp32, trainer.autocast=bf16 (learner in bf16, sampler fp32),
rollout.dtype=bfloat16 (lean sampler on a bf16 copy, learner fp32) and both. ``mismatch_k3`` is the
k3 estimate of KL(sampler || learner) per token that the learner logs (rollout_logp vs old_logp);
every arm recomputes old_logp (trainer.old_logp=recompute), else the fp32 arms reuse rollout_logp
and log exactly 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from rlvr.config import load_config  # noqa: E402
from rlvr.train.loop import train  # noqa: E402

ARMS = {
    "fp32 (hf)": [],
    "fp32 (lean)": ["rollout.engine=lean"],
    "autocast bf16": ["trainer.autocast=bf16"],
    "lean bf16 sampler": ["rollout.engine=lean", "rollout.dtype=bfloat16"],
    "both bf16": ["rollout.engine=lean", "rollout.dtype=bfloat16", "trainer.autocast=bf16"],
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a (warm-started) checkpoint folder")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for name, overrides in ARMS.items():
            cfg = load_config("configs/grpo_arithmetic_tiny.yaml", [
                f"model.path={args.model}", "model.warm_start=false", f"trainer.steps={args.steps}",
                "eval.num_problems=8", "eval.samples_per_problem=1", "logging.progress=false",
                "logging.plots=false", f"logging.checkpoint_every={args.steps}", f"run.output_dir={d}",
                "trainer.old_logp=recompute", *overrides])  # recompute: fp32 would reuse rollout_logp (k3 = 0)
            t = time.perf_counter()
            run = train(cfg, log=lambda *_: None).run_dir
            seconds = time.perf_counter() - t
            steps = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "reward_mean" in r]
            out[name] = {"mismatch_k3": [r["mismatch_k3"] for r in steps],
                         "time_generate": [r.get("time_generate") for r in steps],
                         "time_train": [r.get("time_train") for r in steps], "seconds": seconds}
            print(f"{name:<20} mismatch_k3 per step: " + ", ".join(f"{v:.2e}" for v in out[name]["mismatch_k3"])
                  + f"   generate s: " + ", ".join(f"{v:.3f}" for v in out[name]["time_generate"])
                  + f"   train s: " + ", ".join(f"{v:.3f}" for v in out[name]["time_train"]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
