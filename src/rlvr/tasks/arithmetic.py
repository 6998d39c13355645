"""Integer arithmetic problems for tiny character-level models, with an exact verifier.

A problem is a prompt such as ``"12+7="`` (no spaces, no instruction) whose answer is the
canonical decimal string of the result, ``"19"``. Expressions with several operands follow
the usual precedence (``*`` before ``+`` and ``-``, left to right otherwise).

Train/eval split. Each distinct prompt belongs to one side for good, decided by a BLAKE2b
hash of the prompt string (:func:`rlvr.tasks.base.hash_fraction`): a fraction
``eval_fraction`` of all possible prompts is eval, the rest is train. The split depends
neither on the seed nor on sampling order, so train and eval never share a prompt. The
seed only decides which problems are drawn from each side:

* train problems are drawn with replacement (a training stream may repeat a problem);
* eval problems are distinct. When the eval side holds fewer than ``num_eval`` problems
  (small spaces, e.g. 1-digit operands), the eval split is the whole eval side, shuffled:
  fewer than ``num_eval`` problems and no duplicates.
"""

from __future__ import annotations

import itertools
import random
import re
from typing import Iterable, Iterator, Sequence

from rlvr.tasks.base import (
    MAX_ANSWER_CHARS,
    Problem,
    check_split,
    compact_aggregation_prompt,
    guarded,
    hash_fraction,
    register_task,
    zero_rewards,
)

__all__ = ["ArithmeticTask", "evaluate"]

ALLOWED_OPS = "+-*"
_INTEGER = re.compile(r"-?[0-9]+")  # ASCII digits only: int() would accept "٣" and "+5"
_ENUMERATION_LIMIT = 200_000  # spaces up to this size are listed in full for the eval split
_MAX_DRAWS_PER_PROBLEM = 100  # rejection-sampling budget, per problem asked for
#: Characters kept in aggregation candidates (others become "?"), see ``compact_aggregation_prompt``.
AGGREGATION_ALPHABET = "0123456789+-*=;"
#: Offsets that turn the right answer into a plausible wrong candidate for the warm start.
_SLIPS = (-10, -2, -1, 1, 2, 10)


def evaluate(operands: Sequence[int], ops: Sequence[str]) -> int:
    """The value of ``operands[0] ops[0] operands[1] ...`` with ``*`` binding tighter.

    No ``eval``: products are folded into terms, then the terms are summed.
    """
    if len(operands) != len(ops) + 1:
        raise ValueError("need exactly one more operand than operators")
    terms = [operands[0]]
    for op, value in zip(ops, operands[1:]):
        if op == "*":
            terms[-1] *= value
        elif op == "+":
            terms.append(value)
        elif op == "-":
            terms.append(-value)
        else:
            raise ValueError(f"unknown operator {op!r}")
    return sum(terms)


def _digit_range(digits: int) -> range:
    """Non-negative integers written with exactly ``digits`` digits (0 counts as 1 digit)."""
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return range(low, 10**digits)


@register_task("arithmetic")
class ArithmeticTask:
    """Integer arithmetic with prompts like ``"12+7="`` and answers like ``"19"``.

    Args:
        min_digits, max_digits: digit counts of each operand, drawn uniformly in this
            range; the value is then uniform among numbers with that many digits.
            Operands are never negative.
        ops: the operators to use, a non-empty subset of ``"+-*"``.
        num_operands: operands per problem (at least 2).
        seed: which problems are drawn (not which side of the split a prompt is on).
        num_train, num_eval: problems in each split (eval may hold fewer, see module doc).
        allow_negative: if False, problems with a negative result are never produced.
        eval_fraction: share of all possible prompts that is reserved for eval.
        first_line: if True, only the first line of a completion is judged (text after
            the first newline is ignored). Off by default: the trainer cuts completions
            at EOS, so anything after the number is a mistake.
        same_digits: if True, all operands of a problem have the same number of digits, drawn
            once per problem (with 1-2 digits: half the problems one-digit, half two-digit).

    Verifier rule (strict): surrounding whitespace is stripped and the remaining text
    must be exactly the canonical integer: ASCII digits, an optional leading ``-``, no
    ``+``, no leading zeros, no ``-0``. So ``"19"``, ``" 19\\n"`` are right and
    ``"19 extra words"``, ``"+19"``, ``"019"``, ``"19.0"``, ``"1.9e1"`` are wrong.
    Rewards: ``reward`` = ``correct`` (binary); ``format`` is 1.0 when the completion is
    an integer literal at all (right or wrong), a diagnostic only.
    """

    name = "arithmetic"
    reward_names = ("reward", "correct", "format")

    def __init__(
        self,
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
        same_digits: bool = False,
    ) -> None:
        self.ops = _normalise_ops(ops)
        _check_int("min_digits", min_digits, low=1)
        _check_int("max_digits", max_digits, low=min_digits)
        _check_int("num_operands", num_operands, low=2)
        _check_int("num_train", num_train, low=0)
        _check_int("num_eval", num_eval, low=0)
        _check_int("seed", seed, low=None)
        if not 0.0 < eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must lie in (0, 1), got {eval_fraction!r}")
        self.min_digits = min_digits
        self.max_digits = max_digits
        self.num_operands = num_operands
        self.seed = seed
        self.num_train = num_train
        self.num_eval = num_eval
        self.allow_negative = bool(allow_negative)
        self.eval_fraction = float(eval_fraction)
        self.first_line = bool(first_line)
        self.same_digits = bool(same_digits)
        self._cache: dict[str, list[Problem]] = {}

    # ------------------------------------------------------------------ problems

    def problems(self, split: str, n: int | None = None) -> list[Problem]:
        """The first ``n`` problems of ``split`` (all of them when ``n`` is None).

        Deterministic for a given seed and options; ``n`` larger than the split gives
        the whole split.
        """
        check_split(split)
        if split not in self._cache:
            build = self._build_train if split == "train" else self._build_eval
            self._cache[split] = build()
        problems = self._cache[split]
        return list(problems if n is None else problems[: max(0, n)])

    def is_eval_prompt(self, prompt: str) -> bool:
        """Whether ``prompt`` is on the eval side of the split (seed-independent)."""
        return hash_fraction(prompt) < self.eval_fraction

    def space_size(self) -> int:
        """How many operand/operator combinations the options allow (before filtering)."""
        values = sum(len(_digit_range(d)) for d in range(self.min_digits, self.max_digits + 1))
        return values**self.num_operands * len(self.ops) ** (self.num_operands - 1)

    def _build_train(self) -> list[Problem]:
        rng = random.Random(f"rlvr.arithmetic:{self.seed}:train")
        draws = self._draws(rng, self.num_train, want_eval=False)
        problems = list(itertools.islice(draws, self.num_train))
        if len(problems) < self.num_train:
            raise ValueError(
                "the train side of the split is (nearly) empty for these options; "
                "allow more digits/operators or lower eval_fraction"
            )
        return problems

    def _build_eval(self) -> list[Problem]:
        rng = random.Random(f"rlvr.arithmetic:{self.seed}:eval")
        if self.space_size() <= _ENUMERATION_LIMIT:
            side = [p for p in self._enumerate() if self.is_eval_prompt(p.prompt)]
            if len(side) <= self.num_eval:
                rng.shuffle(side)
                return side
        seen: set[str] = set()
        problems: list[Problem] = []
        for problem in self._draws(rng, self.num_eval, want_eval=True):
            if problem.prompt not in seen:
                seen.add(problem.prompt)
                problems.append(problem)
                if len(problems) == self.num_eval:
                    break
        return problems

    def _draws(self, rng: random.Random, wanted: int, want_eval: bool) -> Iterator[Problem]:
        """Random problems from one side of the split, within a finite budget of draws."""
        for _ in range(_MAX_DRAWS_PER_PROBLEM * wanted + 1_000):
            problem = self._sample(rng)
            if problem is not None and self.is_eval_prompt(problem.prompt) == want_eval:
                yield problem

    def _sample(self, rng: random.Random) -> Problem | None:
        """One random problem, or None when it breaks ``allow_negative``."""
        operands = []
        shared = rng.randint(self.min_digits, self.max_digits) if self.same_digits else None
        for _ in range(self.num_operands):
            digits = shared if shared is not None else rng.randint(self.min_digits, self.max_digits)
            values = _digit_range(digits)
            operands.append(rng.randint(values.start, values.stop - 1))
        ops = [rng.choice(self.ops) for _ in range(self.num_operands - 1)]
        return self._make(operands, ops)

    def _enumerate(self) -> Iterator[Problem]:
        """Every allowed problem, in a fixed order."""
        values = [v for d in range(self.min_digits, self.max_digits + 1) for v in _digit_range(d)]
        for operands in itertools.product(values, repeat=self.num_operands):
            if self.same_digits and len({len(str(abs(v))) for v in operands}) > 1:
                continue
            for ops in itertools.product(self.ops, repeat=self.num_operands - 1):
                problem = self._make(list(operands), list(ops))
                if problem is not None:
                    yield problem

    def _make(self, operands: list[int], ops: list[str]) -> Problem | None:
        result = evaluate(operands, ops)
        if result < 0 and not self.allow_negative:
            return None
        prompt = "".join(f"{a}{op}" for a, op in zip(operands, ops)) + f"{operands[-1]}="
        meta = {"operands": operands, "ops": ops, "result": result}
        return Problem(prompt=prompt, answer=str(result), meta=meta)

    # ------------------------------------------------------------------ verifier

    def extract_answer(self, completion: str) -> str | None:
        """The completion's integer literal (stripped), or None if it is not exactly one."""
        if not isinstance(completion, str):
            return None
        text = completion.strip()
        if self.first_line:
            text = text.partition("\n")[0].strip()
        if len(text) > MAX_ANSWER_CHARS or not _INTEGER.fullmatch(text):
            return None
        return text

    def score(self, problem: Problem, completion: str) -> dict[str, float]:
        """``reward`` = ``correct`` = 1.0 iff the completion is exactly the canonical answer."""
        scores = guarded(self._score, problem, completion)
        return scores if scores is not None else zero_rewards(self.reward_names)

    def _score(self, problem: Problem, completion: str) -> dict[str, float]:
        answer = self.extract_answer(completion)
        correct = float(answer is not None and answer == problem.answer)
        return {"reward": correct, "correct": correct, "format": float(answer is not None)}

    def format_sft_target(self, problem: Problem) -> str:
        """The reference completion for supervised warm start: the answer itself."""
        return problem.answer

    # ------------------------------------------------------------------ aggregation (RSA)

    def aggregation_prompt(self, problem: Problem, candidates: list[str]) -> str:
        """RSA aggregation prompt (arXiv 2509.26626) in the compact format ``12+7=|19|18|19|=>``.

        The completion after ``=>`` is judged exactly like a completion of ``problem.prompt``.
        """
        return compact_aggregation_prompt(problem.prompt, candidates, AGGREGATION_ALPHABET)

    def sft_candidates(self, problem: Problem, k: int, rng: random.Random) -> list[str]:
        """``k`` noisy candidates for warm-start aggregation examples.

        Each is right with probability ``q ~ U(0.5, 1)`` (drawn per example), else the right answer
        shifted by a small slip (+-1, +-2, +-10): like a decent policy's own samples, the
        candidates are right more often than not, so reading them pays off. (With ``q ~ U(0, 1)``
        the tiny model learned to ignore the candidates and solve from scratch: its accuracy on
        aggregation prompts was the same whether the candidates were right or wrong.)
        """
        q = 0.5 + 0.5 * rng.random()
        result = int(problem.answer)
        return [problem.answer if rng.random() < q else str(result + rng.choice(_SLIPS)) for _ in range(k)]

    def __repr__(self) -> str:
        return (
            f"ArithmeticTask(min_digits={self.min_digits}, max_digits={self.max_digits}, "
            f"ops={self.ops!r}, num_operands={self.num_operands}, seed={self.seed}, "
            f"num_train={self.num_train}, num_eval={self.num_eval}, "
            f"allow_negative={self.allow_negative}, eval_fraction={self.eval_fraction})"
        )


def _normalise_ops(ops: str | Iterable[str]) -> str:
    """``ops`` as a string of distinct operators from ``"+-*"``, first-seen order kept."""
    try:
        chars = list(ops)
    except TypeError:
        chars = []
    bad = [c for c in chars if c not in ALLOWED_OPS]
    if not chars or bad:
        raise ValueError(f"ops must be a non-empty subset of {ALLOWED_OPS!r}, got {ops!r}")
    return "".join(dict.fromkeys(chars))


def _check_int(name: str, value: object, low: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
