"""Held-out evaluation: greedy accuracy and the mean sampled reward."""

from __future__ import annotations

import torch

from rlvr.rollout.base import SamplingParams
from rlvr.train.experience import score


def evaluate(engine, task, problems: list, temperature: float, top_p: float, max_new_tokens: int,
             samples_per_problem: int, seed: int = 1234) -> dict[str, float]:
    """Greedy exact-match accuracy and mean reward of sampled completions on ``problems``.

    Sampling uses its own seeded RNG stream (the training RNG is left untouched), so the number
    is reproducible and comparable before and after training.
    """
    prompts = [p.prompt for p in problems]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        greedy = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=max_new_tokens, n=1))
        sampled = engine.generate(prompts, SamplingParams(temperature=temperature, top_p=top_p,
                                                          max_new_tokens=max_new_tokens, n=samples_per_problem))
    g = score(task, problems, greedy.texts)
    rows = [problems[i] for i in sampled.prompt_index.tolist()]
    s = score(task, rows, sampled.texts)
    return {
        "greedy_accuracy": float(g["correct"].mean()),
        "sampled_reward": float(s["reward"].mean()),
        "sampled_accuracy": float(s["correct"].mean()),
        "response_length": float(sampled.completion_mask.sum(-1).float().mean()),
    }
