"""Reward functions in TRL's contract, for examples/arithmetic_qa.jsonl (see README, "Your own data").

Each is called once per batch as ``fn(prompts=[...], completions=[...], answer=[...])``: ``prompts`` and
``completions`` are strings (lists of messages for a conversational dataset), and every other column of
the dataset comes as a keyword argument. They return one float per sample, or None where they do not
apply. The same functions work unchanged as ``reward_funcs`` of TRL's GRPOTrainer.
"""

import re

_INTEGER = re.compile(r"-?[0-9]+")


def correctness(prompts, completions, answer, **kwargs):
    """1.0 when the completion is exactly the reference answer, else 0.0."""
    return [1.0 if c.strip() == a.strip() else 0.0 for c, a in zip(completions, answer)]


def is_integer(completions, **kwargs):
    """1.0 when the completion is an integer at all (a format reward)."""
    return [1.0 if _INTEGER.fullmatch(c.strip()) else 0.0 for c in completions]


def sign(prompts, completions, answer, **kwargs):
    """For negative answers only: 1.0 when the completion starts with '-'. None (not applicable)
    for the others."""
    return [None if not a.startswith("-") else float(c.strip().startswith("-"))
            for c, a in zip(completions, answer)]
