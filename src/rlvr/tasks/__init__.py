"""Tasks: prompts with reference data, and verifiers that map completions to named rewards.

Built-ins (see :func:`make_task`):

* ``"arithmetic"``: :class:`ArithmeticTask`, our integer-arithmetic generator;
* ``"arithmetic_concise"``: :class:`ArithmeticConciseTask`, arithmetic scored on correctness and on a
  length budget (``short``): two components that pull against each other (multi-objective demo);
* ``"arithmetic_chain"``: :class:`ArithmeticChainTask`, left-to-right multi-step arithmetic whose
  completions show every step, with a chain-of-thought verifier (CoT-pass@k);
* ``"reasoning_gym:<dataset>"``: :class:`ReasoningGymTask`, any reasoning-gym dataset;
* ``"math"``: :class:`MathTask`, (question, answer) pairs checked with math-verify;
* ``"dataset"``: :class:`DatasetTask`, problems from your JSONL / JSON / CSV / Parquet file or saved
  ``datasets`` folder, with a chat template, a verifier by name and TRL-contract reward functions.

Importing this package is cheap: reasoning-gym and math-verify load on first use.
"""

from rlvr.tasks.base import TASKS, Problem, SupportsSFT, Task, make_task, register_task
from rlvr.tasks.arithmetic import ArithmeticTask
from rlvr.tasks.arithmetic_chain import ArithmeticChainTask
from rlvr.tasks.arithmetic_concise import ArithmeticConciseTask
from rlvr.tasks.dataset import DatasetTask
from rlvr.tasks.math import MathTask
from rlvr.tasks.reasoning_gym import ReasoningGymTask

__all__ = [
    "TASKS",
    "ArithmeticChainTask",
    "ArithmeticConciseTask",
    "ArithmeticTask",
    "DatasetTask",
    "MathTask",
    "Problem",
    "ReasoningGymTask",
    "SupportsSFT",
    "Task",
    "make_task",
    "register_task",
]
