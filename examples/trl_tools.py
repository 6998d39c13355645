"""Tool code in TRL's contract (GRPOTrainer's ``environment_factory=`` and ``tools=``), for ``env.name: trl``.

    env:
      name: trl
      options:
        environment_factory: examples/trl_tools.py:CalculatorEnv   # its public methods are the tools
        tools: [examples/trl_tools.py:multiply]                    # and plain functions, beside it

The model sees each tool's signature and docstring (rendered by its chat template) and calls one as
``<tool_call>{"name": "calculate", "arguments": {"expression": "12*7"}}</tool_call>``.
"""

from __future__ import annotations

import re

_EXPRESSION = re.compile(r"^\s*(-?\d{1,9})\s*([+*-])\s*(-?\d{1,9})\s*$")


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: the first factor
        b: the second factor
    """
    return a * b


class CalculatorEnv:
    """One arithmetic question: the model may calculate, and must submit its answer; the reward is 1 for a right
    submission (TRL's ``get_reward``: the environment owns the reward)."""

    def __init__(self):
        self.answer, self.submitted = None, None

    def reset(self, **row) -> str | None:
        """A new episode on a dataset row (its columns as keyword arguments)."""
        self.answer, self.submitted = str(row.get("answer", "")).strip(), None
        return " Use the tools; submit your answer with submit."

    def calculate(self, expression: str) -> str:
        """Evaluate a <a><op><b> expression on integers, op one of + - *.

        Args:
            expression: for example "12*7"
        """
        m = _EXPRESSION.match(expression)
        if m is None:
            raise ValueError("write <integer><op><integer>, op one of + - *")
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        return str(a + b if op == "+" else a - b if op == "-" else a * b)

    def submit(self, answer: str) -> str:
        """Submit the final answer.

        Args:
            answer: the answer, as an integer
        """
        self.submitted = str(answer).strip()
        return "submitted"

    def get_reward(self) -> float:
        return 1.0 if self.submitted is not None and self.submitted == self.answer else 0.0
