"""Tool code written for TRL's GRPOTrainer (``environment_factory=`` and ``tools=``), as TRL's documentation writes
it; tests/envs/test_trl_tools.py runs it in rlvr unchanged."""


class Counter:
    """A counter the model drives with tools; the reward is 1 when it holds the target."""

    def __init__(self):
        self.value, self.target = 0, None

    def reset(self, **kwargs) -> str | None:
        self.value, self.target = 0, int(kwargs["answer"])
        return f" (the counter starts at {self.value})"

    def add(self, amount: int) -> str:
        """Add an amount to the counter.

        Args:
            amount: how much to add

        Returns:
            The counter's new value.
        """
        self.value += amount
        return str(self.value)

    def fail(self) -> str:
        """A tool that always fails."""
        raise RuntimeError("the tool broke")

    def get_reward(self) -> float:
        return 1.0 if self.value == self.target else 0.0


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: the first factor
        b: the second factor
    """
    return a * b


async def subtract(a: int, b: int) -> int:
    """Subtract one integer from another.

    Args:
        a: the minuend
        b: the subtrahend
    """
    return a - b
