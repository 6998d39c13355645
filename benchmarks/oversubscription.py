"""CPU oversubscription: torch threads and OpenMP's wait policy, alone and beside a competing load.

    python benchmarks/oversubscription.py [--steps 6] [--threads 1,2] [--policies default,PASSIVE]

Times default-recipe RL steps (configs/grpo_arithmetic_tiny.yaml, cached warm start, 32 x 8 per
step) under every combination of torch threads, ``OMP_WAIT_POLICY`` (``default``: unset, libgomp
spins a while before sleeping; ``PASSIVE``: sleep at once; ``ACTIVE``: spin always;
``GOMP_SPINCOUNT=N``: spin N times, then sleep), and load: ``alone``, or beside a competing process that multiplies matrices with 2 threads and the default
wait policy (what another user's job does). Printed: median seconds per step (generation and
training apart) and, under load, the competitor's throughput, each beside the ``alone`` baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RLVR = str(Path(sys.executable).with_name("rlvr"))
RUN = ["eval.num_problems=20", "eval.samples_per_problem=1", "logging.plots=false", "logging.progress=false",
       "logging.checkpoint_every=1000", "trainer.warmup_steps=0"]
COMPETITOR = """
import sys, time, torch
a = torch.randn(512, 512)
n, t0 = 0, time.perf_counter()
while True:
    a = torch.tanh(a @ a) ; n += 1
    if n % 20 == 0:
        print(n / (time.perf_counter() - t0), flush=True)
"""


def _env(threads: int, policy: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("GOMP_SPINCOUNT", None)
    if "=" in policy:  # another libgomp variable, e.g. GOMP_SPINCOUNT=10000 (spin that long, then sleep)
        key, value = policy.split("=", 1)
        env[key] = value
    elif policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    return env


def competitor_rate(seconds: float, env: dict) -> float:
    """Matmul iterations/s of the competitor running alone (its baseline)."""
    proc = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=env, stdout=subprocess.PIPE, text=True)
    time.sleep(seconds)
    proc.kill()
    lines = proc.stdout.read().split()
    return float(lines[-1]) if lines else 0.0


def run(threads: int, policy: str, load: bool, steps: int, out: Path) -> dict:
    name = f"t{threads}-{policy}-{'load' if load else 'alone'}"
    comp = None
    if load:
        comp = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=_env(2, "default"),
                                stdout=subprocess.PIPE, text=True)
    try:
        proc = subprocess.run([RLVR, "train", "--config", str(ROOT / "configs/grpo_arithmetic_tiny.yaml"), *RUN,
                               f"trainer.steps={steps}", f"run.output_dir={out}", f"run.name={name}"],
                              env=_env(threads, policy), cwd=ROOT, capture_output=True, text=True)
    finally:
        rate = None
        if comp is not None:
            comp.kill()
            lines = comp.stdout.read().split()
            rate = float(lines[-1]) if lines else 0.0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    recs = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines() if x.strip()]
    recs = [r for r in recs if "time_step" in r][1:]  # the first step warms caches up
    med = lambda k: statistics.median(r[k] for r in recs)  # noqa: E731
    return {"name": name, "threads": threads, "policy": policy, "load": load, "step_s": med("time_step"),
            "gen_s": med("time_generate"), "competitor_rate": rate}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--policies", default="default,PASSIVE,ACTIVE")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    subprocess.run([RLVR, "sft", "--config", str(ROOT / "configs/grpo_arithmetic_tiny.yaml")], check=True,
                   capture_output=True, env=_env(2, "default"))  # the warm start, cached, outside the timing
    base_rate = competitor_rate(20, _env(2, "default"))
    print(f"{os.cpu_count()} cores; competitor alone: {base_rate:.1f} matmul it/s (2 threads, default policy)")
    print(f"{'threads':>7} {'OMP_WAIT_POLICY':<22}{'load':<7}{'s/step':>8}{'gen s':>7}{'x alone':>9}"
          f"{'competitor':>12}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for threads in map(int, args.threads.split(",")):
            for policy in args.policies.split(","):
                alone = run(threads, policy, False, args.steps, Path(tmp))
                loaded = run(threads, policy, True, args.steps, Path(tmp))
                for r in (alone, loaded):
                    comp = f"{r['competitor_rate'] / base_rate:>11.2f}x" if r["load"] else f"{'':>12}"
                    print(f"{threads:>7} {policy:<22}{'load' if r['load'] else 'alone':<7}{r['step_s']:>8.2f}"
                          f"{r['gen_s']:>7.2f}{r['step_s'] / alone['step_s']:>8.1f}x{comp}", flush=True)
                results += [alone, loaded]
    best = min((r for r in results if not r["load"]), key=lambda r: r["step_s"])
    print(f"\nfastest alone: {best['name']} ({best['step_s']:.2f} s/step); under load, per setting: "
          + ", ".join(f"{r['name']} {r['step_s']:.2f}" for r in results if r["load"]))
    if args.json:
        Path(args.json).write_text(json.dumps({"competitor_alone": base_rate, "runs": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
