"""A learner group on the default recipe: 1, 2 and 3 CPU ranks (torchrun, gloo, 1 thread each) against one
process, 10 RL steps of configs/grpo_arithmetic_tiny.yaml from the cached warm start.

    .venv/bin/python benchmarks/learner_group.py [--steps 10] [--ranks 1 2 3] [--engine fsdp2]

Per run: seconds per step (steps 2..N, wall-clock of the whole step: rollout on rank 0, the update on every
rank, the weight gather), the update alone (time_train), rank 0's seconds in explicit collectives, each rank's
peak resident memory, and the largest parameter difference from the single-process run after the last step.
On a 2-core machine, ranks compete with each other and with rank 0's rollouts for the cores: the times say what
the machinery costs here, not what N devices would give.
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


def _run(args: list[str], nproc: int | None) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    head = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
            if nproc else [sys.executable])
    t0 = time.perf_counter()
    done = subprocess.run([*head, "-m", "rlvr", "train", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stdout[-2000:] + done.stderr[-4000:])
    return time.perf_counter() - t0


def _summary(run: Path, reference: dict | None) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "time_step" in r]
    later = steps[1:] or steps
    last = steps[-1]
    ckpt = sorted((run / "checkpoints").iterdir())[-1]
    weights = load_file(ckpt / "model.safetensors")
    out = {"s_per_step": sum(r["time_step"] for r in later) / len(later),
           "train_s": sum(r["time_train"] for r in later) / len(later),
           "collectives_s": sum(r.get("time_collectives", 0.0) for r in later) / len(later),
           "peak_mb": [v for k, v in sorted(last.items()) if k.startswith("dist/peak_memory_mb/")],
           "max_diff": (max(float((weights[k] - reference[k]).abs().max()) for k in weights)
                        if reference is not None else 0.0)}
    return out, weights


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--engine", default="fsdp2", choices=["ddp", "fsdp2"])
    args = ap.parse_args(argv)
    out = Path(tempfile.mkdtemp(prefix="rlvr_group_"))
    common = ["--config", "configs/grpo_arithmetic_tiny.yaml", f"trainer.steps={args.steps}", "eval.num_problems=20",
              f"logging.checkpoint_every={args.steps}", "logging.plots=false", "logging.progress=false"]
    wall = _run([*common, f"run.output_dir={out / 'single'}"], None)
    single, reference = _summary(next((out / "single").iterdir()), None)
    import resource

    single["peak_mb"] = [resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]
    print(f"learner group, {args.steps} steps of the default recipe, {args.engine}, gloo, 1 thread per rank")
    print(f"{'learner':<22} {'s/step':>7} {'update s':>9} {'collect. s':>10} {'peak MB per rank':>22} "
          f"{'max |dparam| vs 1 proc':>23} {'wall s':>7}")

    def row(name, r, wall):
        peaks = "/".join(f"{m:.0f}" for m in r["peak_mb"])
        print(f"{name:<22} {r['s_per_step']:>7.2f} {r['train_s']:>9.2f} {r['collectives_s']:>10.3f} {peaks:>22} "
              f"{r['max_diff']:>23.2e} {wall:>7.0f}", flush=True)

    row("one process", single, wall)
    for n in args.ranks:
        wall = _run([*common, f"trainer.dist.engine={args.engine}", f"run.output_dir={out / f'ranks{n}'}"], n)
        result, _ = _summary(next((out / f"ranks{n}").iterdir()), reference)
        row(f"{n} rank(s) ({args.engine})", result, wall)


if __name__ == "__main__":
    main()
