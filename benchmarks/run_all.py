"""rlvr benchmarks: each prints a measurement beside a baseline measured in the same run.

    make bench            # or: .venv/bin/python benchmarks/run_all.py [--quick]

1. rollout: batched sampling through HFRolloutEngine (one generate call for the whole rollout
   batch, with KV cache) vs the baseline of one generate call per prompt group.
2. learner: one GRPO update (old log-probs + minibatch steps) with micro-batches of 256 vs
   micro-batches of 16 rows (what a memory-starved config would do): same gradients, different speed.
Numbers depend on the machine; the ratios are the result.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from rlvr.config import load_config  # noqa: E402
from rlvr.models.load import load_model_and_tokenizer, quiet_transformers  # noqa: E402
from rlvr.models.tiny import save_tiny  # noqa: E402
from rlvr.rollout.base import SamplingParams  # noqa: E402
from rlvr.rollout.hf import HFRolloutEngine  # noqa: E402
from rlvr.tasks import make_task  # noqa: E402
from rlvr.experience.batch import PromptSampler  # noqa: E402
from rlvr.experience.producer import PromptDraws, RolloutProducer  # noqa: E402
from rlvr.train.learner import Learner  # noqa: E402


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def bench_rollout(model, tok, prompts, G, max_new, repeats):
    engine = HFRolloutEngine(model, tok, batch_size=4096)
    params = SamplingParams(temperature=1.0, max_new_tokens=max_new, n=G)
    batched = _timed(lambda: engine.generate(prompts, params), repeats)
    per_prompt = _timed(lambda: [engine.generate([p], params) for p in prompts], repeats)
    tokens = engine.generate(prompts, params).num_generated_tokens
    print(f"rollout  {len(prompts)} prompts x G={G}: batched {batched:.3f} s ({tokens / batched:,.0f} tok/s) "
          f"vs per-prompt {per_prompt:.3f} s -> {per_prompt / batched:.1f}x")


def bench_learner(model_path, config, repeats):
    task = make_task(config.task.name, **config.task.options)
    times = {}
    for mb in (256, 16):
        cfg = config.model_copy(deep=True)
        cfg.trainer.micro_batch_size = mb
        model, tok = load_model_and_tokenizer(model_path)
        engine = HFRolloutEngine(model, tok)
        r = cfg.rollout
        sampler = PromptSampler(task.problems("train"), 0)
        producer = RolloutProducer(engine, task, SamplingParams(temperature=1.0, max_new_tokens=r.max_new_tokens,
                                                                n=r.group_size), r.prompts_per_step)
        exp = producer.produce(PromptDraws(sampler.problems, sampler.next_indices))
        learner = Learner(model, cfg)
        times[mb] = _timed(lambda: learner.update(exp, 0), repeats)
    print(f"learner  GRPO update of {config.rollout.prompts_per_step * config.rollout.group_size} rows, "
          f"{config.trainer.num_minibatches} minibatches: micro-batch 256 {times[256]:.3f} s vs "
          f"micro-batch 16 {times[16]:.3f} s -> {times[16] / times[256]:.1f}x")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    args = ap.parse_args(argv)
    repeats = 1 if args.quick else 3
    torch.manual_seed(0)
    quiet_transformers()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as d:
        path = save_tiny(d)
        model, tok = load_model_and_tokenizer(path)
        config = load_config("configs/grpo_arithmetic_tiny.yaml")
        task = make_task(config.task.name, **config.task.options)
        prompts = [p.prompt for p in task.problems("train", 32)]
        bench_rollout(model, tok, prompts, G=8, max_new=6, repeats=repeats)
        bench_learner(path, config, repeats)
    # sync vs async training on the same work (each arm its own process, one at a time)
    import async_vs_sync

    async_vs_sync.main(["--steps", "10" if args.quick else "40"])
    # how well the async machinery overlaps generation and training when they do not share cores
    __import__("async_overlap").main(["--steps", "10" if args.quick else "30"])
    # the importance ratio a top-p sampler leaves behind, with and without the sampling-mask replay
    __import__("support_ratio").main([])
    # torch threads x OpenMP wait policy, alone and beside a competing process (README: CPU threads)
    __import__("oversubscription").main(["--steps", "4", "--threads", "2", "--policies", "default,GOMP_SPINCOUNT=1000"]
                                        if args.quick else ["--steps", "12"])
    __import__("vs_trl").main(["--if-available", *(["--steps", "5", "--repeats", "1"] if args.quick else ["--p2"])])
    # how rlvr's step grows with completion length and vocabulary (beside TRL where it is installed)
    __import__("scaling").main(["--lengths", "32,128", "--vocabs", "100,32768", "--steps", "1"] if args.quick else [])
    # the remote reward protocol's own cost: a verifier behind the reference reward server vs in-process
    __import__("reward_server").main(["--quick"] if args.quick else [])
    # a learner group: 1, 2, 3 ranks (torchrun, gloo) against one process on the default recipe
    __import__("learner_group").main(["--steps", "4", "--ranks", "2"] if args.quick else [])
    # multi-turn episodes with a slow tool: lockstep turns vs interleaved episodes (environment-level async)
    __import__("episodes_async").main(["--repeats", "1"] if args.quick else [])
    return 0


if __name__ == "__main__":
    sys.exit(main())
