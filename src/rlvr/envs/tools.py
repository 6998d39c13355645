"""Tools an environment can offer the policy, and ``tools``, the environment that calls them
(``../shared/design/agentic.md``, section 3 A).

A tool is a function of one text argument returning text:

* ``calculator``: ``a<op>b`` on integers (``+``, ``-``, ``*``), parsed, never evaluated as code; anything
  else is ``?``;
* ``python``: the argument is a Python program, run in rlvr's sandbox (:mod:`rlvr.sandbox`: its own namespaces,
  no network, CPU, memory and output limits); the tool's text is the program's standard output, or its status
  (``timeout``, ``runtime_error: <last line of stderr>``, ...). Model-written code never runs in the trainer's
  process.

The ``tools`` environment reads a call as the policy's turn ending in ``]``: the text after the last ``[`` is the
call (``name:argument``, or the argument alone when the environment has one tool); the observation is the tool's
text in braces, ``{282}``. A turn that is not a call is the answer: the task's verifier scores it, minus
``call_cost`` per call made, and the episode ends. More than ``max_calls`` calls end the episode with no reward.
``calc`` is ``tools`` with the calculator and a call cost of 0.3 (the policy must learn when a call pays)::

    47*6=  |  policy: [47*6]  |  environment: {282}  |  policy: 282<eos>
"""

from __future__ import annotations

import re

from rlvr.envs.base import EnvStep, register_env
from rlvr.tasks.arithmetic_chain import evaluate_left_to_right

_EXPRESSION = re.compile(r"^\s*(-?[0-9]{1,12})\s*([+*-])\s*(-?[0-9]{1,12})\s*$")


def calculator(expression: str) -> str:
    """``a<op>b`` on integers, as text; ``?`` for anything else."""
    m = _EXPRESSION.match(expression)
    if m is None:
        return "?"
    return str(evaluate_left_to_right([int(m.group(1)), int(m.group(3))], [m.group(2)]))


class PythonTool:
    """A Python program in the sandbox; its standard output (at most ``max_chars``), or how it failed."""

    def __init__(self, cpu_s: float = 2.0, memory_mb: int = 256, max_chars: int = 200, sandbox=None):
        self.cpu_s, self.memory_mb, self.max_chars = cpu_s, memory_mb, max_chars
        self._sandbox = sandbox

    def __call__(self, program: str) -> str:
        from rlvr.sandbox import Sandbox, get_language
        from rlvr.sandbox.core import Limits

        if self._sandbox is None:
            self._sandbox = Sandbox(require_isolation=False, slots=1, quiet=True)
        lang = get_language("python")
        limits = lang.run_limits(Limits(cpu_s=self.cpu_s, memory_mb=self.memory_mb, stdout_bytes=4 * self.max_chars))
        result = self._sandbox.run(list(lang.run), b"", limits, {lang.filename: program})
        if result.status == "ok":
            return result.stdout.strip()[: self.max_chars]
        last = (result.stderr.strip().splitlines() or [""])[-1]
        return f"{result.status}: {last}"[: self.max_chars] if last else result.status


#: tool name -> a factory of the tool (a function of one text argument returning text)
TOOLS = {"calculator": lambda: calculator, "python": PythonTool}


@register_env("tools")
class ToolCalls:
    """The policy calls tools in brackets or answers (see the module docstring)."""

    def __init__(self, task=None, tools: tuple[str, ...] | list[str] = ("calculator",), max_calls: int = 2,
                 call_cost: float = 0.0):
        unknown = [t for t in tools if t not in TOOLS]
        if unknown or not tools:
            raise ValueError(f"env.options.tools: unknown tool(s) {unknown or 'none given'}; known: {', '.join(TOOLS)}")
        self.task, self.max_calls, self.call_cost = task, int(max_calls), float(call_cost)
        self.tools = {name: TOOLS[name]() for name in tools}
        self.stop: tuple[str, ...] = ("]",)
        self.problem, self.calls = None, 0

    def reset(self, problem, seed: int) -> str:
        self.problem, self.calls = problem, 0
        return problem.prompt

    def step(self, action: str) -> EnvStep:
        if action.endswith("]") and "[" in action:  # a call
            self.calls += 1
            if self.calls > self.max_calls:
                return EnvStep(reward=0.0, done=True, info={"calls": self.calls, "over_budget": True})
            return EnvStep(observation="{" + self._call(action[action.rindex("[") + 1:-1]) + "}",
                           info={"calls": self.calls})
        correct = self.task.score(self.problem, action)["correct"] if self.task is not None else 0.0
        return EnvStep(reward=float(correct) - self.call_cost * self.calls, done=True,
                       info={"calls": self.calls, "correct": correct})

    def _call(self, text: str) -> str:
        if len(self.tools) == 1:
            (tool,) = self.tools.values()
            return tool(text)
        name, colon, argument = text.partition(":")
        tool = self.tools.get(name.strip())
        return tool(argument) if colon and tool is not None else f"? (tools: {', '.join(self.tools)})"

    def close(self) -> None:
        pass


@register_env("calc")
class Calc(ToolCalls):
    """``tools`` with the calculator, at most 2 calls, each costing 0.3 of the reward. Its warm start
    (:meth:`sft_transcript`) calls the calculator on a random ``sft_call_share`` of the problems, whatever their
    difficulty: the format is taught, the decision when to call is left to RL."""

    def __init__(self, task=None, max_calls: int = 2, call_cost: float = 0.3, sft_call_share: float = 0.5):
        super().__init__(task, ("calculator",), max_calls, call_cost)
        self.sft_call_share = float(sft_call_share)

    @staticmethod
    def difficulty(problem) -> str:
        """``easy`` when every operand has one digit (the warm-started tiny model mostly answers those directly),
        else ``hard``; evaluation reports accuracy and calls per level (``sampled_calls/hard``, ...)."""
        operands = problem.meta.get("operands") or ()
        return "easy" if operands and all(abs(int(v)) < 10 for v in operands) else "hard"

    def sft_transcript(self, problem, rng) -> list[tuple[str, bool]]:
        """The warm-start target of ``problem``: ``[("[47*6]", True), ("{282}", False), ("282", True)]`` (a call;
        the environment's result is not trained on) or ``[("282", True)]``."""
        answer = problem.answer
        operands, ops = problem.meta.get("operands"), problem.meta.get("ops")
        if not operands or len(operands) != 2 or rng.random() >= self.sft_call_share:
            return [(answer, True)]
        call = f"{operands[0]}{ops[0]}{operands[1]}"
        return [(f"[{call}]", True), ("{" + calculator(call) + "}", False), (answer, True)]
