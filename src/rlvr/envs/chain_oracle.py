"""``chain_oracle``: a two-turn arithmetic chain whose environment writes the first intermediate result
(``../shared/design/agentic.md``, section 3 B).

The prompts are :class:`~rlvr.tasks.arithmetic_chain.ArithmeticChainTask`'s (``"12+7*3="``, left to right). The
policy writes the first step up to its ``=`` (the turn's stop string), the environment answers with that step's
result and the step separator, and the policy writes the rest of the chain and its answer, ending with EOS::

    12+7*3=  |  policy: 12+7=  |  environment: 19;  |  policy: 19*3=57<eos>

The whole completion is then byte-identical to the single-turn chain (``"12+7=19;19*3=57"``); only ``19;`` came
from the environment. The environment answers the step the policy wrote: a first step that is not
``<first operand><first operator><second operand>=`` gets the observation ``?;`` (a wrong step is not
corrected). The reward, on the last turn, is the task's ``correct`` on the whole completion (1 when the final
answer is right).
"""

from __future__ import annotations

import re

from rlvr.envs.base import EnvStep, register_env
from rlvr.tasks.arithmetic_chain import evaluate_left_to_right

_FIRST_STEP = re.compile(r"^([0-9]+)([+*-])([0-9]+)=$")


@register_env("chain_oracle")
class ChainOracle:
    """The environment of one ``arithmetic_chain`` problem (see the module docstring)."""

    def __init__(self, task=None):
        from rlvr.tasks import make_task

        self.task = task if task is not None else make_task("arithmetic_chain")  # a run passes its own task
        self.stop: tuple[str, ...] = ("=",)
        self.problem = None
        self.transcript = ""

    def reset(self, problem, seed: int) -> str:
        self.problem, self.transcript, self.stop = problem, "", ("=",)
        return problem.prompt

    def step(self, action: str) -> EnvStep:
        self.transcript += action
        if self.stop:  # the first turn: the first step, up to its "="
            self.stop = ()  # later turns end at the model's own stop token (EOS)
            observation = self._first_result(action)
            self.transcript += observation
            return EnvStep(observation=observation, info={"oracle": observation != "?;"})
        correct = self.task.score(self.problem, self.transcript)["correct"]
        return EnvStep(reward=float(correct), done=True, info={"correct": float(correct)})

    def _first_result(self, action: str) -> str:
        meta = self.problem.meta
        a, op, b = meta["operands"][0], meta["ops"][0], meta["operands"][1]
        m = _FIRST_STEP.match(action)
        if m is None or (int(m.group(1)), m.group(2), int(m.group(3))) != (a, op, b):
            return "?;"
        return f"{evaluate_left_to_right([a, b], [op])};"

    def close(self) -> None:
        pass
