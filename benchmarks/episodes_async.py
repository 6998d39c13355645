"""Environment-level asynchrony (issue: multi-turn agentic RL; ROLL Flash's first trick): a batch of multi-turn
episodes in which a quarter of the environments have a slow, sleep-paced tool, played in lockstep turns against
interleaved episodes (the policy's next turn sampled for whichever episodes are ready).

    .venv/bin/python benchmarks/episodes_async.py [--episodes 32] [--turns 4] [--slow-s 0.15] [--repeats 3]

The policy is the tiny model (random weights: the episodes' text is noise; only the timing matters) on the lean
engine. Each turn ends at a digit (the environment's stop strings) or 24 tokens; each environment step sleeps
``--slow-s`` (every fourth environment) or ``--fast-s`` and answers ``"ok;"``; an episode is done after
``--turns`` turns. Prints the batch wall-clock of both modes (median of ``--repeats``) and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from rlvr.envs.base import EnvStep  # noqa: E402


class ToolEnv:
    def __init__(self, delay: float, turns: int):
        self.stop, self.delay, self.turns, self.k = tuple("0123456789"), delay, turns, 0

    def reset(self, problem, seed):
        self.k = 0
        return problem

    def step(self, action):
        time.sleep(self.delay)
        self.k += 1
        return EnvStep(observation="ok;", reward=1.0, done=self.k >= self.turns)

    def close(self):
        pass


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=32)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--slow-s", type=float, default=0.15)
    ap.add_argument("--fast-s", type=float, default=0.005)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    from rlvr.models.load import load_model_and_tokenizer
    from rlvr.models.tiny import save_tiny
    from rlvr.rollout.base import SamplingParams
    from rlvr.rollout.episodes import EpisodeLimits, run_episodes
    from rlvr.rollout.lean import LeanRolloutEngine

    torch.set_num_threads(2)
    model, tok = load_model_and_tokenizer(save_tiny(Path(tempfile.mkdtemp()) / "tiny", seed=0))
    engine = LeanRolloutEngine(model, tok)
    params = SamplingParams(temperature=1.0, max_new_tokens=24, seed=0)
    prompts = [f"{i}+{i}=" for i in range(args.episodes)]
    results = {}
    for interleave in (False, True):
        walls, turns, tokens = [], 0, 0
        for rep in range(args.repeats):
            envs = [ToolEnv(args.slow_s if b % 4 == 0 else args.fast_s, args.turns) for b in range(args.episodes)]
            limits = EpisodeLimits(max_turns=args.turns, max_total_tokens=args.turns * 40, env_workers=args.episodes,
                                   step_timeout_s=60, interleave=interleave)
            t0 = time.perf_counter()
            r = run_episodes(engine, tok, envs, prompts, [rep] * args.episodes, params, limits)
            walls.append(time.perf_counter() - t0)
            turns, tokens = sum(r.extras["turns"]), int(r.loss_mask.sum())
        results[interleave] = statistics.median(walls)
        mode = "interleaved episodes" if interleave else "lockstep turns"
        print(f"{mode:<22} {results[interleave]:6.2f} s per batch  ({turns} turns, {tokens} policy tokens, "
              f"runs {', '.join(f'{w:.2f}' for w in walls)})")
    print(f"interleaved / lockstep wall-clock: {results[True] / results[False]:.2f}  "
          f"({args.episodes} episodes, {args.turns} turns, every 4th tool {args.slow_s:g} s, others {args.fast_s:g} s)")


if __name__ == "__main__":
    main()
