"""The importance ratio a top-p / top-k sampler leaves behind, with and without the sampling-mask replay.

    python benchmarks/support_ratio.py [--top-p 0.8] [--top-k 0]

The default recipe's warm-started model (built or taken from the warm-start cache) samples one batch (32
prompts x 8, the lean engine) with truncation; the learner then computes its old log-probs over the full
vocabulary (``trainer.logprob_support=full``) and over the sampler's kept sets (``sampled``). Printed: the
mean and extremes of the per-token ratio ``pi_learner / pi_sampler`` on the generated tokens. On-policy it
should be 1; over the full vocabulary it is ``p / p_K = Z_K <= 1`` (the probability mass the sampler kept).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rlvr.config import load_config  # noqa: E402
from rlvr.experience.batch import PromptSampler  # noqa: E402
from rlvr.experience.producer import PromptDraws, build_producer  # noqa: E402
from rlvr.models.load import load_model_and_tokenizer  # noqa: E402
from rlvr.rollout.factory import make_engine  # noqa: E402
from rlvr.tasks import make_task  # noqa: E402
from rlvr.train.learner import Learner  # noqa: E402
from rlvr.warmstart.sft import resolve_model_path  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top-p", type=float, default=0.8)
    ap.add_argument("--top-k", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    over = [f"rollout.top_p={args.top_p}", f"rollout.top_k={args.top_k}", "trainer.logprob_support=sampled",
            "logging.progress=false"]
    config = load_config(ROOT / "configs/grpo_arithmetic_tiny.yaml", over)
    task = make_task(config.task.name, **config.task.options)
    path = resolve_model_path(config, task, False, lambda *_: None)
    model, tok = load_model_and_tokenizer(path)
    producer = build_producer(config, make_engine(config, model, tok, path), task)
    sampler = PromptSampler(task.problems("train"), 0)
    exp = producer.produce(PromptDraws(sampler.problems, sampler.next_indices), seed=1)
    m = exp.rollout.completion_mask.bool()
    print(f"importance ratio pi_learner / pi_sampler on {int(m.sum())} sampled tokens, top_p={args.top_p}, "
          f"top_k={args.top_k} (default recipe's warm start, lean engine, one batch of 32 x 8):")
    for support in ("full", "sampled"):
        cfg = load_config(ROOT / "configs/grpo_arithmetic_tiny.yaml",
                          over[:-2] + [f"trainer.logprob_support={support}", "trainer.old_logp=recompute"])
        learner = Learner(model, cfg)
        ratio = torch.exp(learner._logprobs(model, exp) - exp.rollout.rollout_logp)[m]
        print(f"  logprob_support={support:8s} mean {float(ratio.mean()):.4f}  min {float(ratio.min()):.4f}  "
              f"max {float(ratio.max()):.6f}")
    kept = (exp.rollout.support_ids >= 0).sum(-1)[m].float()
    print(f"  kept-set size: mean {float(kept.mean()):.1f}, max {int(kept.max())} of {model.config.vocab_size} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
