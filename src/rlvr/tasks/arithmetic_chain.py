"""Multi-step arithmetic with a checkable chain of thought (for CoT-pass@k and RSA).

A prompt such as ``"12+7*3="`` is evaluated **left to right, one operator at a time** (no
precedence), and a complete answer writes every step: ``"12+7=19;19*3=57"``. Steps are
``a<op>b=c`` separated by ``;``; the first step starts from the first operand, each later step
starts from the previous step's result, and ``b`` is the next operand of the prompt.

Two verifiers (both never raise; hostile input scores 0):

* the answer verifier (``score``): the **final answer** is the text after the last ``=`` (the
  whole completion when there is none) and must be exactly the canonical integer result, as in
  :class:`~rlvr.tasks.arithmetic.ArithmeticTask`. A bare ``"57"`` is therefore a right answer;
* the chain verifier (:meth:`ArithmeticChainTask.verify_chain`): the completion must have exactly
  one step per operator, each step well-formed (canonical integers: no ``+``, no leading zeros,
  no ``-0``), using the prompt's operator and next operand, starting from the previous result
  (the first operand for the first step), and arithmetically right. A right final answer
  reached by a wrong step, or with no steps, fails the chain verifier, so it counts for
  pass@k but not for CoT-pass@k (arXiv 2506.14245; spec section 18.2).

Rewards: ``reward`` = ``correct`` (final answer right, binary); ``format`` = 1 when the
completion is a syntactically well-formed chain (any values); ``chain`` = 1 when the chain
verifier accepts it and the answer is right. ``format`` and ``chain`` are diagnostics.

Splits, options and sampling are those of :class:`~rlvr.tasks.arithmetic.ArithmeticTask`
(a prompt's side is fixed by a hash of the prompt, so train and eval never share a prompt);
only the meaning of a prompt (left to right) and the completion format differ. With
``allow_negative=False`` no step result may be negative, not only the final one.
"""

from __future__ import annotations

import random
import re
from typing import Sequence

from rlvr.tasks.arithmetic import _SLIPS, ArithmeticTask
from rlvr.tasks.base import MAX_ANSWER_CHARS, Problem, guarded, register_task

__all__ = ["ArithmeticChainTask", "chain_steps", "evaluate_left_to_right"]

_INTEGER = re.compile(r"-?[0-9]+")  # ASCII digits only
_STEP = re.compile(r"(-?[0-9]+)([+*-])([0-9]+)=(-?[0-9]+)")
_PROMPT = re.compile(r"[0-9]+(?:[+*-][0-9]+)+=")


def _apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"unknown operator {op!r}")


def chain_steps(operands: Sequence[int], ops: Sequence[str]) -> list[tuple[int, str, int, int]]:
    """The steps ``(a, op, b, a op b)`` of a left-to-right evaluation, one per operator."""
    if len(operands) != len(ops) + 1:
        raise ValueError("need exactly one more operand than operators")
    steps, value = [], operands[0]
    for op, b in zip(ops, operands[1:]):
        result = _apply(value, op, b)
        steps.append((value, op, b, result))
        value = result
    return steps


def evaluate_left_to_right(operands: Sequence[int], ops: Sequence[str]) -> int:
    """``((operands[0] ops[0] operands[1]) ops[1] operands[2]) ...`` with no precedence."""
    return chain_steps(operands, ops)[-1][3]


def format_chain(steps: Sequence[tuple[int, str, int, int]]) -> str:
    """``[(12, '+', 7, 19), (19, '*', 3, 57)]`` -> ``"12+7=19;19*3=57"``."""
    return ";".join(f"{a}{op}{b}={c}" for a, op, b, c in steps)


def _canonical(text: str) -> bool:
    """Whether ``text`` is an integer literal written the canonical way (``str(int(text))``)."""
    return bool(_INTEGER.fullmatch(text)) and str(int(text)) == text


def _parse_prompt(prompt: str) -> tuple[list[int], list[str]] | None:
    """Operands and operators of a prompt like ``"12+7*3="``, or None if it is not one."""
    if len(prompt) > MAX_ANSWER_CHARS or not _PROMPT.fullmatch(prompt):
        return None
    parts = re.split(r"([+*-])", prompt[:-1])
    return [int(x) for x in parts[0::2]], parts[1::2]


def _operands(problem: Problem) -> tuple[list[int], list[str]] | None:
    """The problem's operands and operators: from ``meta`` when present (aggregation prompts keep
    the original problem's meta), else parsed from the prompt."""
    meta = problem.meta or {}
    if isinstance(meta.get("operands"), list) and isinstance(meta.get("ops"), list):
        return [int(x) for x in meta["operands"]], [str(o) for o in meta["ops"]]
    return _parse_prompt(problem.prompt)


@register_task("arithmetic_chain")
class ArithmeticChainTask(ArithmeticTask):
    """Left-to-right multi-step arithmetic: prompt ``"12+7*3="``, completion ``"12+7=19;19*3=57"``.

    Options are those of :class:`~rlvr.tasks.arithmetic.ArithmeticTask`, with defaults for a
    three-operand chain of one- or two-digit numbers. See the module docstring for the
    verifiers.
    """

    name = "arithmetic_chain"
    reward_names = ("reward", "correct", "format", "chain")

    def __init__(
        self,
        min_digits: int = 1,
        max_digits: int = 2,
        ops: str = "+-",
        num_operands: int = 3,
        seed: int = 0,
        num_train: int = 20_000,
        num_eval: int = 500,
        allow_negative: bool = True,
        eval_fraction: float = 0.1,
        first_line: bool = False,
    ) -> None:
        super().__init__(min_digits=min_digits, max_digits=max_digits, ops=ops, num_operands=num_operands,
                         seed=seed, num_train=num_train, num_eval=num_eval, allow_negative=allow_negative,
                         eval_fraction=eval_fraction, first_line=first_line)

    def _make(self, operands: list[int], ops: list[str]) -> Problem | None:
        steps = chain_steps(operands, ops)
        if not self.allow_negative and any(c < 0 for *_, c in steps):
            return None
        prompt = "".join(f"{a}{op}" for a, op in zip(operands, ops)) + f"{operands[-1]}="
        meta = {"operands": operands, "ops": ops, "result": steps[-1][3], "chain": format_chain(steps)}
        return Problem(prompt=prompt, answer=str(steps[-1][3]), meta=meta)

    # ------------------------------------------------------------------ verifiers

    def _text(self, completion: str) -> str | None:
        if not isinstance(completion, str):
            return None
        text = completion.strip()
        if self.first_line:
            text = text.partition("\n")[0].strip()
        return text if len(text) <= MAX_ANSWER_CHARS else None

    def extract_answer(self, completion: str) -> str | None:
        """The integer after the last ``=`` (the whole text if there is no ``=``), else None."""
        text = self._text(completion)
        if text is None:
            return None
        answer = text.rpartition("=")[2].strip()
        return answer if _INTEGER.fullmatch(answer) else None

    def verify_chain(self, problem: Problem, completion: str) -> bool:
        """Chain-of-thought verifier: every step well-formed, right, and chained (module docstring)."""
        return bool(guarded(self._verify_chain, problem, completion, default=False))

    def _verify_chain(self, problem: Problem, completion: str) -> bool:
        text = self._text(completion)
        parsed = _operands(problem)
        if text is None or parsed is None:
            return False
        operands, ops = parsed
        written = text.split(";")
        if len(written) != len(ops):
            return False
        value = operands[0]
        for step, op, b in zip(written, ops, operands[1:]):
            m = _STEP.fullmatch(step)
            if m is None or not all(_canonical(g) for g in (m[1], m[3], m[4])):
                return False
            if (int(m[1]), m[2], int(m[3])) != (value, op, b) or int(m[4]) != _apply(value, op, b):
                return False
            value = int(m[4])
        return str(value) == problem.answer

    def _well_formed(self, completion: str) -> bool:
        text = self._text(completion)
        return text is not None and all(_STEP.fullmatch(s) for s in text.split(";"))

    def _score(self, problem: Problem, completion: str) -> dict[str, float]:
        answer = self.extract_answer(completion)
        correct = float(answer is not None and answer == problem.answer)
        chain = float(correct == 1.0 and self.verify_chain(problem, completion))
        return {"reward": correct, "correct": correct, "format": float(self._well_formed(completion)),
                "chain": chain}

    # ------------------------------------------------------------------ warm start and aggregation

    def format_sft_target(self, problem: Problem) -> str:
        """The reference completion: every step, ``"12+7=19;19*3=57"``."""
        parsed = _operands(problem)
        if parsed is None:
            raise ValueError(f"not an arithmetic chain prompt: {problem.prompt!r}")
        return format_chain(chain_steps(*parsed))

    def sft_candidates(self, problem: Problem, k: int, rng: random.Random) -> list[str]:
        """``k`` noisy candidate chains for warm-start aggregation examples.

        Each is the right chain with probability ``q ~ U(0.5, 1)`` (per example; see
        :meth:`ArithmeticTask.sft_candidates` for why not U(0, 1)); a wrong candidate makes one
        slip (+-1, +-2, +-10) in the result of a random step and then continues correctly from
        the wrong value, as a careless solver would.
        """
        operands, ops = _operands(problem)  # type: ignore[misc]
        q = 0.5 + 0.5 * rng.random()
        out = []
        for _ in range(k):
            if rng.random() < q:
                out.append(format_chain(chain_steps(operands, ops)))
                continue
            slip_at, slip = rng.randrange(len(ops)), rng.choice(_SLIPS)
            steps, value = [], operands[0]
            for j, (op, b) in enumerate(zip(ops, operands[1:])):
                result = _apply(value, op, b) + (slip if j == slip_at else 0)
                steps.append((value, op, b, result))
                value = result
            out.append(format_chain(steps))
        return out

    def __repr__(self) -> str:
        return "ArithmeticChainTask" + super().__repr__().removeprefix("ArithmeticTask")
