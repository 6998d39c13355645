"""A refactor moves code, not numbers: the same recipes at a fixed seed, before and after, bit for bit.

    python benchmarks/exactness.py --ref 827a2e6              # a commit's code against the working tree
    python benchmarks/exactness.py --record runs/exact/a      # record with this checkout's code only
    python benchmarks/exactness.py --compare runs/exact/a runs/exact/b

Each recipe trains a few steps from a fresh warm start (a private cache per side, so the warm start is
recomputed by each side's code too) through ``rlvr train`` in its own process, with ``PYTHONPATH``
naming the side's ``src``. Then it compares, for every recipe:

- every tensor of the final checkpoint's weights (``*.safetensors``: the full model, or the LoRA
  adapter) and of its optimizer state, with ``torch.equal`` (bit for bit, NaN-aware);
- every row of ``metrics.jsonl``, value for value, except wall-clock timings (keys in ``TIMING``).

It prints one line per recipe and exits 1 if any differ. ``--ref REV`` checks REV out in a temporary
``git worktree`` (removed afterwards); nothing is installed, the same virtual environment runs both.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Few steps, small batches: every recipe's machinery runs (warm start, critic, replay, threads) in seconds.
FAST = [
    "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=4",
    "trainer.micro_batch_size=8", "trainer.num_minibatches=2", "trainer.steps=4",
    "sft.steps=20", "sft.batch_size=16", "sft.warmup_steps=2", "sft.target_accuracy=null",
    "eval.num_problems=8", "eval.samples_per_problem=2", "eval.every=2",
    "logging.progress=false", "logging.plots=false", "logging.checkpoint_every=2", "plasticity.every=2",
]
#: A task the warm start gets partly right, so groups have reward variance and every step trains.
ARITH = ["task.options={max_digits: 1, ops: '+', num_eval: 20}", "sft.steps=150", "sft.batch_size=32",
         "sft.lr=3.0e-3"]

#: name -> (recipe, extra overrides). The issue's six, plus the learner's other branches.
RECIPES: dict[str, tuple[str, list[str]]] = {
    "default": ("configs/grpo_arithmetic_tiny.yaml", ARITH),
    "ppo_critic": ("configs/ppo_arithmetic_tiny.yaml", ARITH + ["critic.warmup_steps=1"]),
    "asyppo": ("configs/asyppo_arithmetic_tiny.yaml", ARITH + ["critic.warmup_steps=1"]),
    "tba": ("configs/tba_arithmetic_tiny.yaml", ARITH + ["replay.initial_buffer_samples=16"]),
    "async_local_s1": ("configs/grpo_arithmetic_tiny.yaml",
                       ARITH + ["runtime.mode=async", "runtime.max_staleness=1"]),
    "lora_dataset": ("configs/grpo_dataset_lora_tiny.yaml", []),
    "dapo": ("configs/dapo_arithmetic_tiny.yaml", ARITH),
    "kl_loss_tis": ("configs/grpo_arithmetic_tiny.yaml",
                    ARITH + ["kl.placement=loss", "kl.estimator=k3", "kl.coef=0.01",
                             "algorithm.mismatch.method=tis", "trainer.entropy_coef=0.001"]),
    "kl_reward_rloo": ("configs/rloo_arithmetic_tiny.yaml",
                       ARITH + ["kl.placement=reward", "kl.estimator=k1", "kl.coef=0.01"]),
    "gdpo_lagrangian": ("configs/lagrangian_arithmetic_concise_tiny.yaml", []),
    "prorl": ("configs/prorl_arithmetic_tiny.yaml", ARITH),
    "token_weights_entropy": ("configs/grpo_arithmetic_tiny.yaml",
                              ARITH + ["algorithm.token_weights={top_entropy: {quantile: 0.5}}",
                                       "trainer.entropy_coef=0.01"]),
    "arm_imentor": ("configs/grpo_arithmetic_tiny.yaml",
                    ARITH + ["algorithm.arm.enabled=true", "algorithm.imentor.enabled=true"]),
    "rover": ("configs/rover_arithmetic_tiny.yaml", ARITH),
}

#: metrics that measure wall-clock time or speed, not the computation (matched on the last path part)
TIMING_PREFIXES = ("time_",)
TIMING_SUFFIXES = ("_s", "seconds", "_per_second", "_idle_frac")


def _is_timing(key: str) -> bool:
    k = key.lower().split("/")[-1]
    return k.startswith(TIMING_PREFIXES) or k.endswith(TIMING_SUFFIXES)


def record(src: Path, out: Path, names: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(src), "RLVR_CACHE": str(out / "cache"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    where = subprocess.run([sys.executable, "-c", "import rlvr; print(rlvr.__file__)"], env=env, cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not Path(where).resolve().is_relative_to(src.resolve()):
        raise SystemExit(f"PYTHONPATH={src} imports rlvr from {where}: the comparison would be void")
    for name in names:
        recipe, extra = RECIPES[name]
        cmd = [sys.executable, "-c", "import sys; from rlvr.cli import main; sys.exit(main())", "train",
               "--config", str(ROOT / recipe), *FAST, *extra, f"run.output_dir={out}", f"run.name={name}"]
        print(f"[{src}] {name} ...", flush=True)
        done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{name} failed under {src}:\n{done.stderr[-3000:]}")


def _final_checkpoint(run: Path) -> Path:
    steps = sorted((run / "checkpoints").glob("step_*"))
    if not steps:
        raise SystemExit(f"no checkpoint in {run}")
    return steps[-1]


def _tensors(ckpt: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    out = {}
    for f in sorted(ckpt.rglob("*.safetensors")):
        for k, v in load_file(f).items():
            out[f"{f.relative_to(ckpt)}:{k}"] = v
    state = torch.load(ckpt / "trainer_state.pt", weights_only=False, map_location="cpu")

    def walk(prefix, obj):
        if isinstance(obj, torch.Tensor):
            out[prefix] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(f"{prefix}[{i}]", v)
    for key in ("optimizer", "critics", "controllers", "reference"):
        if key in state:
            walk(f"trainer_state.{key}", state[key])
    return out


def _same_value(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    return a == b


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if not _is_timing(k)} for r in rows]


def compare(a: Path, b: Path, names: list[str]) -> bool:
    import torch

    ok = True
    for name in names:
        ra, rb = a / name, b / name
        ca, cb = _final_checkpoint(ra), _final_checkpoint(rb)
        ta, tb = _tensors(ca), _tensors(cb)
        problems = []
        if ca.name != cb.name:
            problems.append(f"final checkpoints {ca.name} vs {cb.name}")
        if ta.keys() != tb.keys():
            problems.append(f"tensor names differ: {sorted(set(ta) ^ set(tb))[:5]}")
        diff = [k for k in ta.keys() & tb.keys()
                if ta[k].shape != tb[k].shape or ta[k].dtype != tb[k].dtype or not torch.equal(ta[k], tb[k])]
        if diff:
            problems.append(f"{len(diff)} tensors differ, e.g. {sorted(diff)[:3]}")
        ma, mb = _metrics(ra), _metrics(rb)
        if len(ma) != len(mb):
            problems.append(f"metrics rows {len(ma)} vs {len(mb)}")
        for i, (x, y) in enumerate(zip(ma, mb)):
            if x.keys() != y.keys():
                problems.append(f"row {i}: keys differ {sorted(set(x) ^ set(y))[:5]}")
                break
            bad = [k for k in x if not _same_value(x[k], y[k])]
            if bad:
                problems.append(f"row {i}: {len(bad)} values differ, e.g. {bad[0]}: {x[bad[0]]} vs {y[bad[0]]}")
                break
        n_values = sum(len(r) for r in ma)
        trained = sum(1 for r in ma if (r.get("grad_norm") or 0) > 0)
        if not trained:
            problems.append("no step had a non-zero gradient: the comparison is vacuous (pick an easier task)")
        if problems:
            ok = False
            print(f"DIFFERENT  {name}: " + "; ".join(problems))
        else:
            print(f"identical  {name}: {len(ta)} tensors bit for bit ({ca.name}), "
                  f"{len(ma)} metric rows / {n_values} values equal, {trained} steps with a gradient")
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", help="a git revision to compare the working tree against")
    p.add_argument("--record", type=Path, help="record this checkout's runs into a folder")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"))
    p.add_argument("--only", default=",".join(RECIPES), help="comma-separated recipe names")
    p.add_argument("--keep", type=Path, help="with --ref: keep both sides' runs in this folder")
    args = p.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(RECIPES)
    if unknown:
        p.error(f"unknown recipes {sorted(unknown)}; known: {', '.join(RECIPES)}")
    if args.record:
        record(ROOT / "src", args.record, names)
        return 0
    if args.compare:
        return 0 if compare(*args.compare, names) else 1
    if not args.ref:
        p.error("give --ref REV, --record DIR or --compare A B")
    work = args.keep or Path(tempfile.mkdtemp(prefix="rlvr_exact_"))
    tree = Path(tempfile.mkdtemp(prefix="rlvr_ref_")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.ref], cwd=ROOT, check=True,
                   capture_output=True)
    try:
        record(tree / "src", work / "ref", names)
        record(ROOT / "src", work / "now", names)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    ok = compare(work / "ref", work / "now", names)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print("every recipe identical" if ok else "some recipes differ")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
