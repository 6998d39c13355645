"""Sync vs async training on the same work, on the same cores: throughput ratio and what it costs.

    python benchmarks/async_vs_sync.py [--steps 30] [--arms sync,async-local,...]

Workload: GRPO on ``arithmetic_chain`` (4 operands, ~20-30-token completions), where generation
and training cost about the same. Every arm trains the same number of samples (steps x 16
prompts x 8) from the same warm start and seed. Cores: the machine's (2 here). Sync uses all of
them in each phase; async gives the rollout worker and the learner their own (1 + 1 here).

Each arm runs as its own ``rlvr train`` process, one at a time (two processes on two cores slow
each other down), sampled for peak memory per process (learner, Ray workers). Printed per arm:
samples/s and the ratio to sync, learner idle %, the staleness histogram, held-out reward after
training, weight-sync seconds and bytes per publication (dense size beside it), peak memory.
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
RLVR = str(Path(sys.executable).with_name("rlvr"))

WORKLOAD = [
    "task.name=arithmetic_chain", "task.options={min_digits: 1, max_digits: 2, ops: '+-', num_operands: 4}",
    "rollout.max_new_tokens=32", "rollout.prompts_per_step=16", "rollout.group_size=8",
    "eval.num_problems=100", "eval.samples_per_problem=2", "logging.checkpoint_every=1000",
    "logging.plots=false", "logging.progress=false", "trainer.warmup_steps=0",
    "sft.steps=400", "sft.target_accuracy=null",  # a fixed, cheap warm start: throughput is what is measured
]

ARMS = {
    "sync": ["runtime.mode=sync"],
    "async-local": ["runtime.mode=async", "runtime.learner_threads=1", "runtime.worker_threads=1"],
    "async-local-sparse-bf16": ["runtime.mode=async", "runtime.learner_threads=1", "runtime.worker_threads=1",
                                "runtime.weight_sync=sparse", "rollout.dtype=bfloat16"],
    "async-ray": ["runtime.mode=async", "runtime.backend=ray", "runtime.learner_threads=1",
                  "runtime.worker_threads=1"],
}


def sparse_arm(lr: str) -> list[str]:
    """The sparse bf16 arm at another learning rate (``async-local-sparse-bf16-lr1e-5``): how much of
    the bf16 copy changes per step, and so what sparse sync saves, depends on the learning rate."""
    return [*ARMS["async-local-sparse-bf16"], f"trainer.lr={lr}"]


def _tree_rss(root_pid: int, peak: dict) -> None:
    """Peak resident memory of the training process and its Ray worker processes (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    todo, tree = [root_pid], []
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    for pid in tree:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        rss = next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        if pid == root_pid:
            key = "learner"
        elif "default_worker" in cmd or "RolloutWorker" in cmd or "WorkerImpl" in cmd:
            key = f"ray worker {pid}"
        else:
            continue
        peak[key] = max(peak.get(key, 0), rss)


def run_arm(name: str, overrides: list[str], steps: int, out: Path, cache: str, cpus: int) -> dict:
    # OpenMP's wait policy is left as rlvr leaves it (rlvr.threads): libgomp's spinning default on a
    # quiet machine is the fastest for the sync arm (PASSIVE cost it 40-90% in oversubscription.py)
    env = {**os.environ, "RLVR_CACHE": cache, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    if name == "sync":
        env["OMP_NUM_THREADS"] = str(cpus)
    else:
        env.pop("OMP_NUM_THREADS", None)
    cmd = [RLVR, "train", "--config", str(ROOT / "configs/grpo_arithmetic_tiny.yaml"), *WORKLOAD, *overrides,
           f"trainer.steps={steps}", f"run.output_dir={out}", f"run.name={name}"]
    peak: dict[str, int] = {}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while proc.poll() is None:
        _tree_rss(proc.pid, peak)
        time.sleep(0.5)
    log = proc.stdout.read()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"arm {name} failed ({proc.returncode}):\n{log[-3000:]}")
    run_dir = out / name
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps_ = [r for r in records if "reward_mean" in r]
    evals = [r for r in records if "eval/sampled_reward" in r]
    rows = 16 * 8
    t_loop = sum(r["time_step"] for r in steps_)
    hist: dict[int, int] = {}
    for r in steps_:
        for k, v in r.items():
            if k.startswith("staleness/"):
                hist[int(k.split("/")[1])] = hist.get(int(k.split("/")[1]), 0) + v
    synced = [r for r in steps_ if "sync/bytes" in r]
    return {
        "arm": name, "wall_s": wall, "loop_s": t_loop, "samples_per_s": len(steps_) * rows / t_loop,
        "learner_idle_pct": 100 * sum(r["learner_wait_s"] for r in steps_) / t_loop,
        "staleness_hist": dict(sorted(hist.items())) if hist else {0: len(steps_) * rows},
        "reward_before": evals[0]["eval/sampled_reward"], "reward_after": evals[-1]["eval/sampled_reward"],
        "greedy_before": evals[0]["eval/greedy_accuracy"], "greedy_after": evals[-1]["eval/greedy_accuracy"],
        "sync_s": sum(r["sync/seconds"] for r in synced) / len(synced) if synced else 0.0,
        "sync_bytes": sum(r["sync/bytes"] for r in synced) / len(synced) if synced else 0.0,
        "dense_bytes": synced[0]["sync/dense_bytes"] if synced else 0.0,
        "changed_frac": sum(r["sync/changed_frac"] for r in synced[1:]) / max(1, len(synced) - 1) if synced else 0.0,
        "peak_mb": {k: v / 2**20 for k, v in sorted(peak.items())},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated; also "
                    "async-local-sparse-bf16-lr<LR>: the sparse bf16 arm at trainer.lr=LR")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    cpus = os.cpu_count() or 1
    cache = os.environ.get("RLVR_CACHE", str(Path.home() / ".cache" / "rlvr"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()  # the shared warm start, built once, outside the timed arms
        subprocess.run([RLVR, "sft", "--config", str(ROOT / "configs/grpo_arithmetic_tiny.yaml"), *WORKLOAD],
                       env={**os.environ, "RLVR_CACHE": cache}, cwd=ROOT, check=True, capture_output=True)
        print(f"warm start ready ({time.perf_counter() - t0:.0f} s); {args.steps} steps x 128 samples per arm, "
              f"{cpus} cores, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
        arms = {a: ARMS[a] if a in ARMS else sparse_arm(a.rsplit("-lr", 1)[1]) for a in args.arms.split(",")}
        results = [run_arm(a, overrides, args.steps, out, cache, cpus) for a, overrides in arms.items()]
    base = next((r for r in results if r["arm"] == "sync"), results[0])  # the ratio's baseline
    print(f"\n{'arm':<32}{'samples/s':>10}{'ratio':>7}{'idle %':>8}  {'held-out reward':<17}"
          f"{'sync s':>8}{'sync MB':>9}{'dense MB':>9}{'changed':>9}  staleness histogram (samples)")
    for r in results:
        print(f"{r['arm']:<32}{r['samples_per_s']:>10.1f}{r['samples_per_s'] / base['samples_per_s']:>6.2f}x"
              f"{r['learner_idle_pct']:>8.1f}  {r['reward_before']:.3f} -> {r['reward_after']:.3f}   "
              f"{r['sync_s']:>8.4f}{r['sync_bytes'] / 2**20:>9.2f}{r['dense_bytes'] / 2**20:>9.2f}"
              f"{100 * r['changed_frac']:>8.1f}%  {r['staleness_hist']}")
    print("\npeak memory (MB): " + "; ".join(
        f"{r['arm']}: " + ", ".join(f"{k} {v:.0f}" for k, v in r["peak_mb"].items()) for r in results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
