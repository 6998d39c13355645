"""Arithmetic with a length budget: two verifier components that pull against each other.

The multi-objective demonstration task of issue 13 (item 8). Problems, prompts, the train/eval split
and the warm start are those of :class:`~rlvr.tasks.arithmetic.ArithmeticTask`; the verifier returns

* ``correct``: 1.0 iff the completion is exactly the canonical answer (the arithmetic verifier);
* ``short``: 1.0 iff the completion is an integer literal (the arithmetic ``format`` rule) of at most
  ``max_chars`` characters after stripping surrounding whitespace -- a concise-answer objective, as the
  accuracy + length (<= budget) pair of DVAO (arXiv 2605.25604, spec 11.1), shrunk to the tiny model;
* ``format``: 1.0 iff the completion is an integer literal at all (a diagnostic);
* ``reward`` = ``correct`` (what a run without ``reward.weights`` trains on).

On a problem whose answer is longer than ``max_chars`` (``"57+68="`` -> ``"125"``, ``"3-45="`` ->
``"-42"`` with the default budget of 2) no completion scores 1 on both ``correct`` and ``short``: the
right answer is too long, and a short integer is wrong. There the policy must trade one objective
for the other; on the other problems the two agree. :meth:`ArithmeticConciseTask.conflicts` says
which case a problem is, and :meth:`conflict_fraction` how common the conflict is in a split (about a
quarter of the problems with the default 1-2 digit ``+-`` options).
"""

from __future__ import annotations

from rlvr.tasks.arithmetic import ArithmeticTask
from rlvr.tasks.base import Problem, guarded, register_task, zero_rewards

__all__ = ["ArithmeticConciseTask"]


@register_task("arithmetic_concise")
class ArithmeticConciseTask(ArithmeticTask):
    """Integer arithmetic scored on correctness AND on a length budget (see the module doc).

    Args:
        max_chars: the length budget of ``short`` (characters of the stripped completion, >= 1).
        **options: the options of :class:`~rlvr.tasks.arithmetic.ArithmeticTask`.
    """

    name = "arithmetic_concise"
    reward_names = ("reward", "correct", "format", "short")

    def __init__(
        self,
        max_chars: int = 2,
        min_digits: int = 1,
        max_digits: int = 2,
        ops: str = "+-",
        num_operands: int = 2,
        seed: int = 0,
        num_train: int = 20_000,
        num_eval: int = 500,
        allow_negative: bool = True,
        eval_fraction: float = 0.1,
        first_line: bool = False,
    ) -> None:
        if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
            raise ValueError(f"max_chars must be an integer >= 1, got {max_chars!r}")
        super().__init__(min_digits=min_digits, max_digits=max_digits, ops=ops, num_operands=num_operands,
                         seed=seed, num_train=num_train, num_eval=num_eval, allow_negative=allow_negative,
                         eval_fraction=eval_fraction, first_line=first_line)
        self.max_chars = max_chars

    def score(self, problem: Problem, completion: str) -> dict[str, float]:
        """``correct``, ``short``, ``format`` and ``reward`` (= ``correct``) of one completion."""
        scores = guarded(self._score, problem, completion)
        return scores if scores is not None else zero_rewards(self.reward_names)

    def _score(self, problem: Problem, completion: str) -> dict[str, float]:
        answer = self.extract_answer(completion)
        correct = float(answer is not None and answer == problem.answer)
        short = float(answer is not None and len(answer) <= self.max_chars)
        return {"reward": correct, "correct": correct, "format": float(answer is not None), "short": short}

    def conflicts(self, problem: Problem) -> bool:
        """True when no completion can be both correct and short (the answer exceeds the budget)."""
        return len(problem.answer) > self.max_chars

    def conflict_fraction(self, split: str = "eval") -> float:
        """Share of the split's problems on which ``correct`` and ``short`` cannot both be 1."""
        problems = self.problems(split)
        return sum(self.conflicts(p) for p in problems) / len(problems) if problems else 0.0

    def __repr__(self) -> str:
        return super().__repr__().replace("ArithmeticTask(", f"ArithmeticConciseTask(max_chars={self.max_chars}, ", 1)
