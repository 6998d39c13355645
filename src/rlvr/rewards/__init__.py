"""User reward functions in TRL's contract: ``fn(prompts, completions, **columns) -> list[float | None]``.

See :mod:`rlvr.rewards.functions`.
"""

from rlvr.rewards.functions import (
    RewardFunction,
    RewardFunctionError,
    RewardFunctions,
    load_reward_function,
    parse_reward_functions,
)

__all__ = ["RewardFunction", "RewardFunctionError", "RewardFunctions", "load_reward_function",
           "parse_reward_functions"]
