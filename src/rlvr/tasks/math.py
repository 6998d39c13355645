"""Math answers checked with Hugging Face's ``math-verify`` (``parse`` + ``verify``).

The task is built from (question, answer) pairs you supply, e.g. loaded from GSM8K or
MATH; nothing is downloaded here. The model is asked for a ``\\boxed{}`` answer, but
``math-verify`` also finds plain-text and LaTeX answers.

Guarding. Only the last ``MAX_ANSWER_CHARS`` characters of a completion are parsed (the
final answer sits at the end of a solution; parsing time grows with length). Every
``math-verify`` call goes through :func:`rlvr.tasks.base.guarded`. ``math-verify`` uses
``signal.alarm`` for its timeouts, which only works in the main thread: elsewhere (e.g. a
rollout worker thread) the calls run without a timeout.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any, Sequence

from rlvr.tasks.base import (
    MAX_ANSWER_CHARS,
    Problem,
    check_split,
    guarded,
    hash_fraction,
    register_task,
    zero_rewards,
)

__all__ = ["DEFAULT_MATH_INSTRUCTION", "MathTask"]

DEFAULT_MATH_INSTRUCTION = "Put your final answer within \\boxed{}."
_TIMEOUT_SECONDS = 5


def _timeout() -> int | None:
    """math-verify's timeout: signal-based, so only available in the main thread."""
    return _TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=4096)
def _parse_gold(answer: str, timeout: int | None) -> tuple[Any, ...]:
    """Parsed reference answer (cached). Bare answers are wrapped in ``$...$`` first."""
    from math_verify import parse

    text = answer if ("$" in answer or "\\boxed" in answer) else f"${answer}$"
    return tuple(parse(text, parsing_timeout=timeout))


def _parse_prediction(completion: str, timeout: int | None) -> list[Any]:
    from math_verify import parse

    return parse(completion[-MAX_ANSWER_CHARS:], parsing_timeout=timeout)


@register_task("math")
class MathTask:
    """Questions with reference answers, verified by ``math_verify.verify``.

    Args:
        pairs: (question, answer) pairs; duplicates of a question are dropped.
        eval_pairs: explicit eval pairs. When None, pairs are split by a stable hash of
            the question (a share ``eval_fraction`` goes to eval). Either way, eval holds
            no question that train holds.
        eval_fraction: share of questions sent to eval when ``eval_pairs`` is None.
        instruction: appended to each question after a blank line.

    Rewards: ``reward`` = ``correct`` (binary); ``format`` is 1.0 when ``math-verify``
    finds any answer in the completion.
    """

    name = "math"
    reward_names = ("reward", "correct", "format")

    def __init__(
        self,
        pairs: Sequence[tuple[str, str]] = (),
        eval_pairs: Sequence[tuple[str, str]] | None = None,
        eval_fraction: float = 0.1,
        instruction: str = DEFAULT_MATH_INSTRUCTION,
    ) -> None:
        if not 0.0 <= eval_fraction <= 1.0:
            raise ValueError(f"eval_fraction must lie in [0, 1], got {eval_fraction!r}")
        self.instruction = instruction
        train = _dedupe(pairs)
        if eval_pairs is None:
            evals = [(q, a) for q, a in train if hash_fraction(q) < eval_fraction]
            train = [(q, a) for q, a in train if hash_fraction(q) >= eval_fraction]
        else:
            train_questions = {q for q, _ in train}
            evals = [(q, a) for q, a in _dedupe(eval_pairs) if q not in train_questions]
        self._splits = {
            "train": [self._problem(q, a) for q, a in train],
            "eval": [self._problem(q, a) for q, a in evals],
        }

    def problems(self, split: str, n: int | None = None) -> list[Problem]:
        """The first ``n`` problems of ``split`` (all when None)."""
        check_split(split)
        problems = self._splits[split]
        return list(problems if n is None else problems[: max(0, n)])

    def _problem(self, question: str, answer: str) -> Problem:
        prompt = f"{question}\n\n{self.instruction}" if self.instruction else question
        return Problem(prompt=prompt, answer=answer, meta={"question": question, "answer": answer})

    def extract_answer(self, completion: str) -> str | None:
        """The answer ``math-verify`` finds in the completion (as text), or None."""
        if not isinstance(completion, str) or not completion.strip():
            return None
        parsed = guarded(_parse_prediction, completion, _timeout(), default=[])
        return str(parsed[-1]) if parsed else None

    def score(self, problem: Problem, completion: str) -> dict[str, float]:
        """``reward`` = ``correct`` = 1.0 iff math-verify finds the answer equivalent."""
        scores = guarded(self._score, problem, completion)
        return scores if scores is not None else zero_rewards(self.reward_names)

    def _score(self, problem: Problem, completion: str) -> dict[str, float]:
        from math_verify import verify

        rewards = zero_rewards(self.reward_names)
        if not isinstance(completion, str) or not completion.strip():
            return rewards
        timeout = _timeout()
        prediction = guarded(_parse_prediction, completion, timeout, default=[])
        if not prediction:
            return rewards
        rewards["format"] = 1.0
        gold = guarded(_parse_gold, problem.answer, timeout, default=())
        if gold and guarded(verify, list(gold), prediction, timeout_seconds=timeout, default=False):
            rewards["reward"] = rewards["correct"] = 1.0
        return rewards

    def format_sft_target(self, problem: Problem) -> str:
        """The reference completion for supervised warm start: the boxed answer."""
        return f"\\boxed{{{problem.answer}}}"


def _dedupe(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Pairs as (str, str), first occurrence of each question kept."""
    seen: dict[str, str] = {}
    for question, answer in pairs:
        seen.setdefault(str(question), str(answer))
    return list(seen.items())
