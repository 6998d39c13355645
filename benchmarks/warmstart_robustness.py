"""Does the warm start land in the same place when floating point is perturbed?

    python benchmarks/warmstart_robustness.py [--conditions base,threads1,...] [--rules target,fixed]

Builds the default recipe's warm start (configs/grpo_arithmetic_tiny.yaml) from scratch, each in its
own empty cache, under conditions that perturb floating point: 1 vs 2 torch threads (a different
reduction order), ``torch.set_float32_matmul_precision('medium')`` (bf16 matmuls where the CPU has
them), and other SFT seeds (another initialisation and data order). Each is built with two stopping
rules: ``target`` (the default: stop at the first check with >= 50% greedy accuracy on a validation
split) and ``fixed`` (the old rule: exactly 650 steps). Then it measures what README reports as
"before": greedy and sampled accuracy on the held-out eval set, with ``rlvr eval``: README's 200
problems x 4 samples (a standard error of ~3.5 points at 50%, so five builds of the *same* model
would already spread over ~8 points), and ``--eval-problems`` (default 1000: ~1.6 points) distinct
held-out problems, which is what tells whether the builds agree. Runs one process at a time (two
would slow each other down). ``--overrides`` tries another rule's settings (e.g.
``sft.val_problems=1500 sft.eval_every=5``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/grpo_arithmetic_tiny.yaml")
PY = sys.executable

# condition -> (environment, extra overrides, python prelude run before the CLI)
CONDITIONS = {
    "base": ({"OMP_NUM_THREADS": "2"}, [], ""),
    "threads1": ({"OMP_NUM_THREADS": "1"}, [], ""),
    "bf16-matmul": ({"OMP_NUM_THREADS": "2"}, [], "torch.set_float32_matmul_precision('medium')"),
    "seed1": ({"OMP_NUM_THREADS": "2"}, ["sft.seed=1"], ""),
    "seed2": ({"OMP_NUM_THREADS": "2"}, ["sft.seed=2"], ""),
}
RULES = {
    "target": [],  # the config's own rule
    "fixed": ["sft.target_accuracy=null", "sft.steps=650"],
}


def _rlvr(args: list[str], env: dict, prelude: str) -> str:
    code = "; ".join(["import sys, torch", *([prelude] if prelude else []),
                      "from rlvr.cli import main", "sys.exit(main(sys.argv[1:]))"])
    proc = subprocess.run([PY, "-c", code, *args], env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"rlvr {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


def run(condition: str, rule: str, extra: list[str] = (), eval_problems: int = 1000) -> dict:
    env_extra, overrides, prelude = CONDITIONS[condition]
    overrides = overrides + RULES[rule] + list(extra)
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, **env_extra, "RLVR_CACHE": cache, "HF_HUB_OFFLINE": "1",
               "HF_DATASETS_OFFLINE": "1"}
        t0 = time.perf_counter()
        _rlvr(["sft", "--config", CONFIG, *overrides], env, prelude)
        built = time.perf_counter() - t0
        (ckpt,) = (Path(cache) / "warmstart").iterdir()
        record = json.loads((ckpt / "warm_start.json").read_text())
        out = _rlvr(["eval", "--checkpoint", str(ckpt), "--config", CONFIG, "--json"],
                    {**env, "OMP_NUM_THREADS": "2"}, "")
        big = _rlvr(["eval", "--checkpoint", str(ckpt), "--config", CONFIG, "--json",
                     f"task.options.num_eval={eval_problems}", f"eval.num_problems={eval_problems}"],
                    {**env, "OMP_NUM_THREADS": "2"}, "")
    ev, ev_big = json.loads(out), json.loads(big)
    return {"condition": condition, "rule": rule, "overrides": list(extra), "steps": record["steps"],
            "val_accuracy": record.get("val_accuracy"), "val_problems": record.get("val_problems"),
            "build_s": built, "greedy": ev["greedy_accuracy"], "sampled": ev["sampled_reward"],
            "eval_problems": eval_problems, "greedy_big": ev_big["greedy_accuracy"],
            "sampled_big": ev_big["sampled_reward"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--eval-problems", type=int, default=1000, help="held-out problems of the larger eval")
    ap.add_argument("--overrides", nargs="*", default=[], help="extra sft.* overrides for every build")
    args = ap.parse_args(argv)
    results = []
    n = args.eval_problems
    print(f"{'rule':<8}{'condition':<13}{'steps':>6}{'val acc':>9}{'greedy':>8}{'sampled':>9}"
          f"{'greedy@' + str(n):>12}{'sampled@' + str(n):>13}{'build s':>9}", flush=True)
    for rule in args.rules.split(","):
        for cond in args.conditions.split(","):
            r = run(cond, rule, args.overrides, n)
            results.append(r)
            val = f"{r['val_accuracy']:.3f}" if r["val_accuracy"] is not None else "-"
            print(f"{rule:<8}{cond:<13}{r['steps']:>6}{val:>9}{100 * r['greedy']:>7.1f}%"
                  f"{100 * r['sampled']:>8.1f}%{100 * r['greedy_big']:>11.1f}%{100 * r['sampled_big']:>12.1f}%"
                  f"{r['build_s']:>9.0f}", flush=True)
        rows = [r for r in results if r["rule"] == rule]
        for key in ("greedy", "sampled", "greedy_big", "sampled_big"):
            vals = [100 * r[key] for r in rows]
            print(f"{rule:<8}{key} range {min(vals):.1f}-{max(vals):.1f}% (spread {max(vals) - min(vals):.1f} "
                  f"points)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
