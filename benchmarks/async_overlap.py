"""How well asynchronous training overlaps generation and training when they do not compete for cores.

    python benchmarks/async_overlap.py [--steps 30] [--gen 0.08] [--train 0.05]

On this 2-core machine a real engine and a real learner share the cores, so async cannot show its
speed-up here (benchmarks/async_vs_sync.py measures that, honestly labelled). This benchmark takes the
cores out of the question: the rollout workers are sleep-paced stub engines (``--gen`` seconds per batch)
and the learner is a sleep-paced stub (``--train`` seconds per step), driven through rlvr's real async
machinery (``StalenessBuffer`` admission and in-order consumption, ``AsyncSource``, ``WeightPublisher``
and the weight board, worker threads). ``time.sleep`` releases the GIL, so the only cost left is the
machinery's own.

The ideal step time with N workers and staleness bound S (period p of the steady state): the learner
needs ``train`` per step; N workers deliver at most one batch per ``gen / N``; and slot k may start only
once the weights after step k - S - 1 are published (admission), so it is trained no earlier than
``train + gen`` after step k - S - 1 began, i.e. ``(S + 1) p >= gen + train``. Hence
ideal = ``max(train, gen / N, (gen + train) / (S + 1))``; ``max(gen, train)`` (full overlap of one
generation with one training step) is that with N = 1 and S large enough. Sync mode pays ``gen + train``.
Printed per (N, S): measured s/step, ideal, efficiency = ideal / measured (goal >= 0.95),
the learner's idle fraction (waiting for a batch), the speed-up over sync and the largest staleness.
The ``jitter`` rows draw each batch's generation time uniformly in [0, 2 gen] (mean gen): slow batches
make later ones wait (head-of-line blocking, the price of the staleness bound with several workers).
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rlvr.experience.async_source import AsyncSource  # noqa: E402
from rlvr.experience.batch import Experience, PromptSampler  # noqa: E402
from rlvr.experience.workers import RolloutWorker, _LocalBuffer  # noqa: E402
from rlvr.rollout.base import Rollout  # noqa: E402
from rlvr.weights.sync import WeightPublisher  # noqa: E402


class SleepEngine:
    def __init__(self):
        self.model = torch.nn.Linear(4, 4)
        self.policy_version = 0

    def update_weights(self, state_dict, policy_version):
        self.policy_version = policy_version


class SleepProducer:
    """One batch of 2 prompts x 2 rows after ``gen_s`` seconds (uniform in [0, 2 gen_s] with jitter)."""

    prompts_per_step = 2

    def __init__(self, gen_s: float, jitter: bool):
        self.engine, self.gen_s, self.jitter = SleepEngine(), gen_s, jitter

    def produce(self, draws, seed):
        problems = draws.next(self.prompts_per_step)
        time.sleep(self.gen_s * (2 * random.Random(seed).random() if self.jitter else 1.0))
        b, group = 4, torch.tensor([0, 0, 1, 1])
        rollout = Rollout(prompt_ids=torch.ones(b, 2, dtype=torch.long), prompt_mask=torch.ones(b, 2, dtype=torch.long),
                          completion_ids=torch.ones(b, 3, dtype=torch.long),
                          completion_mask=torch.ones(b, 3, dtype=torch.long), rollout_logp=torch.zeros(b, 3),
                          finish_reason=["stop"] * b, prompt_index=group.clone(), texts=["x"] * b,
                          policy_version=self.engine.policy_version)
        return Experience(rollout=rollout, rewards=torch.zeros(b), reward_components={"correct": torch.zeros(b)},
                          group=group, problems=[problems[g] for g in group.tolist()],
                          timings={"generate": self.gen_s, "score": 0.0})


def run(workers: int, S: int, gen_s: float, train_s: float, steps: int, jitter: bool) -> dict:
    """``steps`` learner steps through the real async machinery; the first 3 are warm-up (not timed)."""
    problems = list(range(100_000))
    buffer = _LocalBuffer(PromptSampler(problems, seed=0), S, run_seed=0)
    stop = threading.Event()
    cfg = SimpleNamespace(runtime=SimpleNamespace(staleness=lambda: S, stale_policy="accept", sync_every=1,
                                                  timeout_s=60.0, num_rollout_workers=workers))

    class Pool:
        def start(self):
            for i in range(workers):
                w = RolloutWorker(i, SleepProducer(gen_s, jitter), problems, buffer)
                threading.Thread(target=w.loop, args=(stop, 0.01), daemon=True).start()

        post_weights = staticmethod(lambda v, b, p, a: buffer.board.post(v, b, p, a))
        publish = staticmethod(buffer.publish)
        get = staticmethod(buffer.get)
        check_alive = staticmethod(lambda: None)
        counts = staticmethod(buffer.counts)

        def close(self):
            stop.set()
            buffer.close()

    source = AsyncSource(cfg, Pool(), WeightPublisher("full", torch.float32))
    model = torch.nn.Linear(4, 4)
    version, waited, staleness, t_start = 0, 0.0, 0, None
    source.publish_weights(model, version, 0)
    warm = 3
    for step in range(steps + warm):
        if step == warm:
            t_start, waited = time.perf_counter(), 0.0
        t0 = time.perf_counter()
        exp = source.next_batch(version)
        waited += time.perf_counter() - t0
        staleness = max(staleness, exp.extras["runtime"]["staleness_max"])
        time.sleep(train_s)  # the learner's step
        with torch.no_grad():
            model.weight.add_(1.0)
        version += 1
        source.publish_weights(model, version, step + 1)
    total = time.perf_counter() - t_start
    source.close()
    per_step = total / steps
    ideal = max(train_s, gen_s / workers, (gen_s + train_s) / (S + 1))
    return {"per_step": per_step, "ideal": ideal, "efficiency": ideal / per_step, "idle": waited / total,
            "speedup_vs_sync": (gen_s + train_s) / per_step, "staleness_max": staleness}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--gen", type=float, default=0.08, help="seconds of generation per batch (per worker)")
    ap.add_argument("--train", type=float, default=0.05, help="seconds of training per step")
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--staleness", default="1,2")
    args = ap.parse_args(argv)
    print(f"async overlap (sleep-paced engine {args.gen:g} s/batch, learner {args.train:g} s/step, "
          f"{args.steps} timed steps; sync would take {args.gen + args.train:.3f} s/step)")
    print(f"{'workers':>7} {'S':>2} {'pacing':>7} {'s/step':>8} {'ideal':>7} {'efficiency':>10} {'idle %':>7} "
          f"{'vs sync':>8} {'stale max':>9}")
    worst = 1.0
    for jitter in (False, True):
        for workers in (int(x) for x in args.workers.split(",")):
            for S in (int(x) for x in args.staleness.split(",")):
                r = run(workers, S, args.gen, args.train, args.steps, jitter)
                if not jitter:
                    worst = min(worst, r["efficiency"])
                print(f"{workers:>7} {S:>2} {'jitter' if jitter else 'fixed':>7} {r['per_step']:>8.4f} "
                      f"{r['ideal']:>7.4f} {r['efficiency']:>10.3f} {100 * r['idle']:>6.1f}% "
                      f"{r['speedup_vs_sync']:>7.2f}x {r['staleness_max']:>9}")
    print(f"lowest efficiency with fixed pacing: {worst:.3f} (goal >= 0.95)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
