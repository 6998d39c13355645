"""Kill -9 at random moments, resume, and compare with an uninterrupted run (CPU, fixed seed, sync).

    python benchmarks/kill_resume.py [--kills 20] [--runs 5] [--steps 10] [--seed 0]

One uninterrupted ``rlvr train`` run is the reference. Then ``--runs`` runs of the same config
are each killed with SIGKILL ``kills / runs`` times and continued with ``rlvr train --resume
RUN_DIR`` after every kill, until they finish. Kill points are drawn from a seeded RNG; each is
one of

* ``generation`` / ``update``: when step k's line lands in metrics.jsonl, wait a random fraction
  of step k's ``time_generate`` (or ``time_generate`` plus a fraction of ``time_train``), so the
  kill falls in step k+1's sampling (or update); k is a step after which no eval or checkpoint
  follows;
* ``checkpoint``: when checkpoint s's temporary folder ``.tmp_step_<s>`` appears in the run's
  ``checkpoints/`` (or a chosen file in it: the safetensors, the tokenizer, trainer_state.pt),
  kill at once or a few milliseconds later: mid-write;
* ``anytime`` (resumed processes only): a random wall-clock offset after the process starts
  (start-up, the resume itself, evaluation, log truncation...).

Nothing in the product is hooked: the harness only watches the run folder. After the last
resume every killed run must end with weights *and* optimizer state bit-identical to the
reference, training records of steps 1..N exactly once each in metrics.jsonl, evaluation records
and samples.jsonl steps as in the reference, the same deterministic metric values, and no
temporary folder left among the checkpoints. Prints one line per kill and a summary; exits 1 if
any run disagrees. ``tests/train/test_kill_resume.py`` uses the same harness with 3 kills.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).with_name("rlvr")
RLVR = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "rlvr.cli"]  # the `rlvr` command
CONFIG = str(ROOT / "configs" / "grpo_arithmetic_tiny.yaml")

#: A run that takes seconds (as the tests' FAST overrides): tiny batches, a 10-step warm start.
FAST = [
    "task.options={min_digits: 1, max_digits: 2, ops: '+-', num_train: 2000, num_eval: 50}",
    "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=4",
    "trainer.micro_batch_size=8", "trainer.num_minibatches=2",
    "sft.steps=10", "sft.batch_size=16", "sft.warmup_steps=2",
    "eval.num_problems=8", "eval.samples_per_problem=2",
    "logging.progress=false", "logging.plots=false",
]
#: What the kill test adds: checkpoints every 2 steps (kills land in writes), an eval every 4.
KILL = ["logging.checkpoint_every=2", "eval.every=4", "logging.samples_every=3", "logging.num_samples=2"]

#: Metrics that measure time, not the computation: not compared between runs.
_TIMING = ("time", "second", "wait", "idle", "sync/")
CHECKPOINT_FILES = (None, "model.safetensors", "tokenizer.json", "trainer_state.pt")
#: Seconds between seeing that file and the kill (a checkpoint of the tiny model takes ~30 ms).
CHECKPOINT_DELAYS = (0.0, 0.0, 0.002, 0.005)


def subprocess_env(cache: str | None = None) -> dict:
    """One thread per process (the same reductions in every process), offline, unbuffered."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if cache is not None:
        env["RLVR_CACHE"] = cache
    return env


def train_cmd(output_dir: Path, name: str, steps: int, overrides: list[str]) -> list[str]:
    return [*RLVR, "train", "--config", CONFIG, *overrides, f"run.output_dir={output_dir}", f"run.name={name}",
            f"trainer.steps={steps}"]


def run_to_end(cmd: list[str], env: dict, timeout: float = 600) -> None:
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[-3:])} failed ({out.returncode}):\n{out.stderr[-3000:]}")


# ---------------------------------------------------------------------------------- the run folder
def _records(run_dir: Path, name: str = "metrics.jsonl") -> list[dict]:
    path = run_dir / name
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:  # a torn line being written
            continue
        if isinstance(r, dict):
            out.append(r)
    return out


def train_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in _records(run_dir) if "reward_mean" in r]


def checkpoint_steps(run_dir: Path) -> list[int]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name[5:]) for p in root.iterdir() if p.name.startswith("step_")
                  and (p / "trainer_state.pt").exists())


def leftovers(run_dir: Path) -> list[str]:
    root = run_dir / "checkpoints"
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".")) if root.is_dir() else []


# ---------------------------------------------------------------------------------- kill points
@dataclass
class KillPoint:
    kind: str            # generation | update | checkpoint | anytime
    step: int = 0        # generation/update: the step whose record triggers; checkpoint: its step
    frac: float = 0.0    # where in the phase (or, for anytime, seconds after the start)
    file: str | None = None  # checkpoint: kill when this file appears in the temporary folder

    def describe(self) -> str:
        if self.kind in ("generation", "update"):
            return f"{self.kind} of step {self.step + 1} ({self.frac:.0%} in)"
        if self.kind == "checkpoint":
            return f"checkpoint {self.step} write ({self.file or 'folder'} appears, +{self.frac * 1e3:.0f} ms)"
        return f"anytime ({self.frac:.2f} s after start)"


def draw_kill(rng: random.Random, kinds: list[str], done: int, steps: int, ckpt_every: int, eval_every: int,
              resumed: bool, earliest: bool = False, span: float = 15.0, left: int = 1) -> KillPoint | None:
    """A kill point after step ``done`` (the last step in metrics.jsonl); None if none fits.

    ``span``: seconds an uninterrupted run takes (``anytime`` kills fall within it); ``left``:
    kills still to come, this one included (it falls in the first ``1/left`` of the steps left,
    where it can, so the later ones find steps too)."""
    horizon = done + max(2, -(-(steps - done) // left))

    def window(found: list[int]) -> list[int]:
        return [k for k in found if k <= horizon] or found
    quiet = window([k for k in range(done + 1, steps) if k % ckpt_every and not (eval_every and k % eval_every == 0)])
    ckpts = window([s for s in range(done + 1, steps + 1) if s % ckpt_every == 0 or s == steps])
    options = [k for k in kinds if (k in ("generation", "update") and quiet) or (k == "checkpoint" and ckpts)
               or (k == "anytime" and resumed)]
    if not options:
        return None
    kind = rng.choice(options)
    if kind in ("generation", "update"):
        return KillPoint(kind, quiet[0] if earliest else rng.choice(quiet), rng.uniform(0.05, 0.6))
    if kind == "checkpoint":
        return KillPoint(kind, ckpts[0] if earliest else rng.choice(ckpts), rng.choice(CHECKPOINT_DELAYS),
                         rng.choice(CHECKPOINT_FILES))
    return KillPoint(kind, 0, rng.uniform(0.15, 0.7) * span)


def _wait(pred, proc: subprocess.Popen, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if proc.poll() is not None:
            return None
        if time.monotonic() > deadline:
            raise TimeoutError("kill point not reached")
        time.sleep(0.001)


def kill_at(proc: subprocess.Popen, run_dir: Path, point: KillPoint, timeout: float = 300) -> dict:
    """Wait for ``point`` in the run folder, SIGKILL ``proc``, say where it landed."""
    t_start, launched = time.monotonic(), time.time()
    if point.kind in ("generation", "update"):
        rec = _wait(lambda: next((r for r in _records(run_dir) if r.get("step") == point.step
                                  and "reward_mean" in r), None), proc, timeout)
        if rec is not None:
            t_gen, t_train = rec.get("time_generate", 0.0), rec.get("time_train", 0.0)
            delay = point.frac * t_gen if point.kind == "generation" else t_gen + point.frac * t_train
            time.sleep(delay)
    elif point.kind == "checkpoint":
        tmp = run_dir / "checkpoints" / f".tmp_step_{point.step:06d}"
        target = tmp / point.file if point.file else tmp
        rec = _wait(lambda: target.exists() or point.step in checkpoint_steps(run_dir), proc, timeout)
        if rec:
            time.sleep(point.frac)
    else:
        time.sleep(max(0.0, point.frac - (time.monotonic() - t_start)))
    finished = proc.poll() is not None
    if not finished:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    steps = train_steps(run_dir)
    landed = "process had finished" if finished else _landed(point, run_dir, steps, launched)
    return {"point": point.describe(), "landed": landed, "finished": finished,
            "last_step": max(steps, default=0), "checkpoints": checkpoint_steps(run_dir),
            "leftovers": leftovers(run_dir)}


def _landed(point: KillPoint, run_dir: Path, steps: list[int], launched: float) -> str:
    tmp = f".tmp_step_{point.step:06d}"
    if point.kind == "checkpoint":
        return "mid-write" if tmp in leftovers(run_dir) else "after the write"
    if point.kind in ("generation", "update"):
        return f"in step {point.step + 1}" if point.step + 1 not in steps else "after the step"
    metrics = run_dir / "metrics.jsonl"
    writing = [n for n in leftovers(run_dir) if n.startswith(".tmp_step_")
               and (run_dir / "checkpoints" / n).stat().st_mtime >= launched]  # made by this process
    if writing:
        return f"mid-write of checkpoint {int(writing[-1].removeprefix('.tmp_step_'))}"
    if not metrics.exists() or metrics.stat().st_mtime < launched:
        return "start-up (before the logs were touched)"
    return f"after step {max(steps, default=0)} was logged"


@dataclass
class KilledRun:
    run_dir: Path
    kills: list[dict] = field(default_factory=list)
    resumes: int = 0
    from_scratch: int = 0  # resumes of a folder with no checkpoint yet


def killed_run(output_dir: Path, name: str, steps: int, overrides: list[str], env: dict, rng: random.Random,
               kills: int, kinds=("generation", "update", "checkpoint", "anytime"), plan: list[str] | None = None,
               first_earliest: bool = False,
               ckpt_every: int = 2, eval_every: int = 4, span: float = 15.0, log=print) -> KilledRun:
    """Start a run, kill it ``kills`` times at drawn points (resuming after each), let it finish.

    ``plan``: the kind of each kill in turn (else each is drawn from ``kinds``); ``first_earliest``:
    the first kill falls at the earliest point of its kind (before the first checkpoint exists)."""
    run = KilledRun(output_dir / name)
    cmd = train_cmd(output_dir, name, steps, overrides)
    resumed = False
    for i in range(kills):
        done = max(train_steps(run.run_dir), default=0)
        point = draw_kill(rng, [plan[i]] if plan else list(kinds), done, steps, ckpt_every, eval_every, resumed,
                          earliest=first_earliest and i == 0, span=span, left=kills - i)
        if point is None:
            break
        if resumed and not checkpoint_steps(run.run_dir):
            run.from_scratch += 1
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
            result = kill_at(proc, run.run_dir, point)
            if result["finished"] and proc.returncode != 0:
                err.seek(0)
                raise RuntimeError(f"run failed ({proc.returncode}): {err.read()[-3000:]}")
        run.kills.append(result)
        log(f"  kill {i + 1}: {result['point']:<58} -> {result['landed']}; metrics to step "
            f"{result['last_step']}, checkpoints {result['checkpoints']}"
            + (f", left {result['leftovers']}" if result["leftovers"] else ""))
        if result["finished"]:
            return run
        cmd, resumed = [*RLVR, "train", "--resume", str(run.run_dir)], True
        run.resumes += 1
    if resumed and not checkpoint_steps(run.run_dir):
        run.from_scratch += 1
    run_to_end(cmd, env)
    return run


# ---------------------------------------------------------------------------------- comparison
def compare(ref: Path, run: Path, steps: int) -> list[str]:
    """What differs between a finished run and the reference (empty: nothing)."""
    import torch
    from safetensors.torch import load_file

    problems = []
    name = f"step_{steps:06d}"
    a, b = load_file(str(ref / "checkpoints" / name / "model.safetensors")), \
        load_file(str(run / "checkpoints" / name / "model.safetensors"))
    if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
        problems.append("final weights differ")
    sa = torch.load(ref / "checkpoints" / name / "trainer_state.pt", weights_only=False)
    sb = torch.load(run / "checkpoints" / name / "trainer_state.pt", weights_only=False)
    oa, ob = sa["learner"]["optimizer"]["state"], sb["learner"]["optimizer"]["state"]
    if oa.keys() != ob.keys() or any(not torch.equal(torch.as_tensor(oa[p][k]), torch.as_tensor(ob[p][k]))
                                     for p in oa for k in oa[p]):
        problems.append("final optimizer state differs")
    if sa["learner"]["scheduler"] != sb["learner"]["scheduler"]:
        problems.append("final scheduler state differs")
    got = train_steps(run)
    if got != list(range(1, steps + 1)):
        problems.append(f"metrics.jsonl training steps are {got}, not 1..{steps} once each")
    ra, rb = _records(ref), _records(run)
    evals = [[r["step"] for r in rs if "eval/greedy_accuracy" in r] for rs in (ra, rb)]
    if evals[0] != evals[1]:
        problems.append(f"eval records at steps {evals[1]}, reference {evals[0]}")
    if [_deterministic(r) for r in ra] != [_deterministic(r) for r in rb]:
        problems.append("metric values differ from the reference")
    sa_, sb_ = _records(ref, "samples.jsonl"), _records(run, "samples.jsonl")
    if sa_ != sb_:
        problems.append(f"samples.jsonl differs: steps {[r['step'] for r in sb_]}, "
                        f"reference {[r['step'] for r in sa_]}")
    if leftovers(run):
        problems.append(f"left in checkpoints/: {leftovers(run)}")
    if not (run / "summary.md").exists() or (run / "summary.md").read_text() != (ref / "summary.md").read_text():
        problems.append("summary.md missing or different")
    return problems


def _deterministic(record: dict) -> dict:
    return {k: v for k, v in record.items() if not any(t in k for t in _TIMING) and k != "tokens_per_second"}


# ---------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=20, help="kills in all, spread over the runs")
    p.add_argument("--runs", type=int, default=5, help="killed runs (each compared with the reference)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    p.add_argument("--out", help="folder for the runs (default: a temporary one)")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="rlvr-kill-") as tmp:
        out = Path(args.out or tmp)
        env = subprocess_env(str((Path(args.out) if args.out else Path(tmp)) / "cache"))
        overrides = FAST + KILL
        t0 = time.perf_counter()
        run_to_end(train_cmd(out, "reference", args.steps, overrides), env)
        span = time.perf_counter() - t0
        print(f"reference: {args.steps} steps uninterrupted in {span:.1f} s")
        rng = random.Random(args.seed)
        per_run = [args.kills // args.runs + (i < args.kills % args.runs) for i in range(args.runs)]
        results, failures, carry = [], 0, 0
        for i, n in enumerate(per_run):
            n += carry  # kills a run could not take (it finished first) go to the next one
            print(f"run {i + 1}: {n} kills")
            run = killed_run(out, f"killed{i + 1}", args.steps, overrides, env, rng, n, first_earliest=(i == 0),
                             span=span)
            carry = n - sum(not k["finished"] for k in run.kills)
            problems = compare(out / "reference", run.run_dir, args.steps)
            failures += bool(problems)
            results.append(run)
            print(f"  -> {run.resumes} resumes ({run.from_scratch} with no checkpoint yet): "
                  + ("bit-identical to the reference (weights, optimizer state, metrics, samples)"
                     if not problems else "DIFFERS: " + "; ".join(problems)))
        kills = [k for r in results for k in r.kills if not k["finished"]]
        landed = {}
        for k in kills:
            key = k["point"].split(" ")[0] + ": " + k["landed"].split(" ")[0]
            landed[key] = landed.get(key, 0) + 1
        total = sum(r.resumes for r in results)
        print(f"\n{len(kills)} kills ({', '.join(f'{v} {k}' for k, v in sorted(landed.items()))}); "
              f"{total} resumes; {len(results) - failures}/{len(results)} runs bit-identical to the reference; "
              f"{time.perf_counter() - t0:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
