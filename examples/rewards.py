"""Reward functions in TRL's contract, for examples/arithmetic_qa.jsonl (see README, "Your own data").

Each is called once per batch as ``fn(prompts=[...], completions=[...], answer=[...])``, and every other
column of the dataset comes as a keyword argument. Both of TRL's data formats arrive here:

* standard (a prompt is a string): each completion is its text::

      correctness(prompts=["What is 2+2?"], completions=["4"], answer=["4"])  # -> [1.0]

* conversational (a prompt is a list of messages): each completion is a list of messages too::

      correctness(prompts=[[{"role": "user", "content": "What is 2+2?"}]],
                  completions=[[{"role": "assistant", "content": "4"}]], answer=["4"])  # -> [1.0]

:func:`completion_text` takes the text out of either form. The functions return one float per sample,
or None where they do not apply, and work unchanged as ``reward_funcs`` of TRL's GRPOTrainer.
"""

import re

_INTEGER = re.compile(r"-?[0-9]+")


def completion_text(completion):
    """The text of a completion: a string as it is; a list of messages: the last assistant message's."""
    if isinstance(completion, str):
        return completion
    replies = [m["content"] for m in completion if m.get("role") == "assistant"]
    return replies[-1] if replies else ""


def correctness(prompts, completions, answer, **kwargs):
    """1.0 when the completion is exactly the reference answer, else 0.0."""
    return [1.0 if completion_text(c).strip() == a.strip() else 0.0 for c, a in zip(completions, answer)]


def is_integer(completions, **kwargs):
    """1.0 when the completion is an integer at all (a format reward)."""
    return [1.0 if _INTEGER.fullmatch(completion_text(c).strip()) else 0.0 for c in completions]


def sign(prompts, completions, answer, **kwargs):
    """For negative answers only: 1.0 when the completion starts with '-'. None (not applicable)
    for the others."""
    return [None if not a.startswith("-") else float(completion_text(c).strip().startswith("-"))
            for c, a in zip(completions, answer)]
