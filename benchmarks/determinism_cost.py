"""What ``run.deterministic: true`` costs: the default recipe with and without it, in one process, in turn.

    python benchmarks/determinism_cost.py [--steps 20] [--repeats 2]

Both arms train the same steps from the same (cached) warm start. Deterministic mode samples each prompt's
group on its own (batch-invariant sampling), which is where its cost is; torch's deterministic
algorithms change nothing on CPU. Printed: generation seconds per step, whole step seconds, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rlvr.config import load_config  # noqa: E402
from rlvr.train.loop import train  # noqa: E402


def one(steps: int, deterministic: bool, out: str) -> tuple[float, float]:
    cfg = load_config(ROOT / "configs/grpo_arithmetic_tiny.yaml", [
        f"trainer.steps={steps}", f"run.deterministic={str(deterministic).lower()}", f"run.output_dir={out}",
        f"run.name={'det' if deterministic else 'plain'}", "logging.plots=false", "logging.progress=false",
        "logging.checkpoint_every=1000", "eval.num_problems=20", "eval.samples_per_problem=1"])
    result = train(cfg, log=lambda *_: None)
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines() if '"reward_mean"' in x]
    rows = rows[2:]  # leave out the first steps (warm-up)
    return (sum(r["time_generate"] for r in rows) / len(rows), sum(r["time_step"] for r in rows) / len(rows))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs per arm")
    args = ap.parse_args(argv)
    res = {False: [], True: []}
    with tempfile.TemporaryDirectory() as d:
        for r in range(args.repeats):
            for det in (False, True):
                res[det].append(one(args.steps, det, f"{d}/{r}"))
    gen = {k: min(v[0] for v in vs) for k, vs in res.items()}
    step = {k: min(v[1] for v in vs) for k, vs in res.items()}
    print(f"run.deterministic cost, default recipe (32 prompts x 8, lean engine), best of {args.repeats}:")
    print(f"  generation s/step: plain {gen[False]:.3f}  deterministic {gen[True]:.3f}  -> {gen[True] / gen[False]:.2f}x")
    print(f"  whole step s/step: plain {step[False]:.3f}  deterministic {step[True]:.3f}  -> {step[True] / step[False]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
